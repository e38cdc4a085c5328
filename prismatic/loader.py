"""`prismatic.load()`: a trained VLM from one of our run directories, or from the authors' released checkpoints.

Two layouts are read, and nothing is ever unpickled beyond tensors:
- **Our runs** (`scripts/pretrain.py`): `<run_dir>/config.json` (the resolved training config) and
  `<run_dir>/model.safetensors` (the trainable weights).
- **The authors' release** (`dyva/DyVA-WorldLM` on the hub, or a local copy of it): `<model_id>/config.json` and
  `<model_id>/checkpoints/latest-checkpoint.pt`, a torch file `{"model": {"projector": ..., "llm_backbone": ...}}`
  read with `weights_only=True`; projector keys may carry torch.compile's `_orig_mod.` prefix. Their generative
  encoder runs in our deterministic `release` mode, which computes what those weights were trained on.

Frozen encoders come from their own sources (hub ids or the local directories recorded in the config); the LLM is
built from its config and then overwritten by the checkpoint, so its base weights are never downloaded. The model is
built by the one assembly path (`prismatic.assembly.build_vlm`), so it is the model training built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch
from safetensors.torch import load_file

from prismatic.assembly import build_vlm
from prismatic.conf.models import DEFAULT_MODEL_TYPE, MODEL_CONFIGS, ModelConfig, get_model_config
from prismatic.models.projectors import strip_compiled_prefix
from prismatic.models.vlms.prismatic import PrismaticVLM
from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

RELEASE_REPO_ID = "dyva/DyVA-WorldLM"
RELEASE_CHECKPOINT = "checkpoints/latest-checkpoint.pt"
RUN_CONFIG, RUN_WEIGHTS = "config.json", "model.safetensors"


@dataclass(frozen=True)
class ReleasedModel:
    name: str
    description: str


# Models whose weights the authors announced in RELEASE_REPO_ID, under these folder names.
RELEASED_MODELS: dict[str, ReleasedModel] = {
    "dyva_siglip+7b": ReleasedModel("DyVA-7B", "SigLIP + SVD (release mode) -> dual projector -> Llama-2 7B (base)."),
    "dyva_siglip_qwen+7b": ReleasedModel(
        "DyVA-Qwen2.5-7B", "SigLIP + SVD (release mode) -> dual projector -> Qwen2.5-7B-Instruct."
    ),
}
RELEASED_ALIASES: dict[str, str] = {"dyva_siglip": "dyva_siglip+7b"}


def available_model_ids() -> list[str]:
    return sorted([*RELEASED_MODELS, *RELEASED_ALIASES])


def available_model_names() -> list[str]:
    return [m.name for m in RELEASED_MODELS.values()]


def get_model_description(model_id_or_name: str) -> str:
    for model_id, model in RELEASED_MODELS.items():
        if model_id_or_name in (model_id, model.name) or RELEASED_ALIASES.get(model_id_or_name) == model_id:
            return f"{model.name} ({model_id}): {model.description}"
    raise ValueError(
        f"Unknown model {model_id_or_name!r}; available: {available_model_ids()} / {available_model_names()}."
    )


def load(model_id_or_path: str | Path, hf_token: str | None = None, cache_dir: str | Path | None = None) -> PrismaticVLM:
    """Load a VLM for inference (eval mode, no gradients) from a run directory, a released-layout directory, or a
    released model id (fetched from the hub, or from its cache)."""
    path = Path(model_id_or_path)
    if path.is_dir():
        if (path / RUN_WEIGHTS).exists() or not (path / RELEASE_CHECKPOINT).exists():
            return _load_run(path, hf_token)
        return _load_release(path / RUN_CONFIG, path / RELEASE_CHECKPOINT, hf_token)
    model_id = RELEASED_ALIASES.get(str(model_id_or_path), str(model_id_or_path))
    if model_id not in RELEASED_MODELS:
        raise ValueError(
            f"{model_id_or_path!r} is neither a directory nor a released model id; available ids: "
            f"{available_model_ids()}. Pass a run directory (with {RUN_CONFIG} and {RUN_WEIGHTS}) to load your own."
        )
    config_file = _fetch(model_id, RUN_CONFIG, hf_token, cache_dir)
    checkpoint_file = _fetch(model_id, RELEASE_CHECKPOINT, hf_token, cache_dir)
    return _load_release(config_file, checkpoint_file, hf_token)


def _fetch(model_id: str, filename: str, hf_token: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(RELEASE_REPO_ID, f"{model_id}/{filename}", token=hf_token, cache_dir=cache_dir))
    except Exception as error:  # offline, not cached, gated, ...: one actionable message
        raise FileNotFoundError(
            f"Could not get {model_id}/{filename} from the hub repo {RELEASE_REPO_ID} ({type(error).__name__}: "
            f"{error}). Without network access, download the repo folder elsewhere and call "
            f"load('/path/to/DyVA-WorldLM/{model_id}'), which needs {model_id}/{RUN_CONFIG} and "
            f"{model_id}/{RELEASE_CHECKPOINT}."
        ) from error


# === Our run directories ===
def _load_run(run_dir: Path, hf_token: str | None) -> PrismaticVLM:
    missing = [name for name in (RUN_CONFIG, RUN_WEIGHTS) if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Run directory {run_dir} is missing {missing}: load() needs {RUN_CONFIG} and {RUN_WEIGHTS}, which "
            "scripts/pretrain.py writes when training finishes (resume an unfinished run with --resume auto)."
        )
    config = json.loads((run_dir / RUN_CONFIG).read_text())
    model_cfg = draccus.decode(ModelConfig, config["model"])
    if config.get("num_frames"):  # the frame slots the run trained with (pretrain.py writes both; this one wins)
        model_cfg.svd_num_frames = int(config["num_frames"])
    weights = load_file(run_dir / RUN_WEIGHTS)
    # An align-stage export holds the projector only: the LLM then needs its pretrained weights.
    llm_in_checkpoint = any(k.startswith("llm_backbone.") for k in weights)
    vlm = build_vlm(model_cfg, hf_token=hf_token, llm_weights=not llm_in_checkpoint)
    _load_state(vlm, weights, run_dir / RUN_WEIGHTS)
    return vlm


# === The authors' release layout ===
def _load_release(config_file: Path, checkpoint_file: Path, hf_token: str | None) -> PrismaticVLM:
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: the release layout has <model_id>/{RUN_CONFIG}.")
    released = json.loads(config_file.read_text())["model"]
    # Start from our registered config of that id (its defaults: release-mode SVD, T = 8), then apply theirs.
    model_type = str(released.get("model_id", ""))
    model_cfg = get_model_config(model_type if model_type in MODEL_CONFIGS else DEFAULT_MODEL_TYPE)
    for key in ("model_id", "arch_specifier", "vision_backbone_id", "llm_backbone_id", "image_resize_strategy",
                "llm_max_length"):  # fmt: skip
        if key in released:
            setattr(model_cfg, key, released[key])
    model_cfg.svd_num_frames = 8  # the released code always ran T = 8 (it ignored num_frames for dyva_* backbones)
    vlm = build_vlm(model_cfg, hf_token=hf_token, llm_weights=False)
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)["model"]
    state = {f"projector.{k}": v for k, v in strip_compiled_prefix(checkpoint["projector"]).items()}
    state |= {f"llm_backbone.{k}": v for k, v in checkpoint["llm_backbone"].items()}
    _load_state(vlm, state, checkpoint_file)
    return vlm


def _load_state(vlm: PrismaticVLM, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy checkpoint tensors into the model; any unknown key or shape mismatch means another model's checkpoint."""
    own = vlm.state_dict()
    unknown = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if unknown or mismatched:
        details = [
            f"unknown keys {unknown[:5]}" if unknown else "",
            f"shape mismatches {mismatched[:5]}" if mismatched else "",
        ]
        raise ValueError(
            f"{source} was saved by a different model than its config describes ({vlm.model_id}: "
            f"{vlm.vision_backbone.identifier} + {vlm.arch_specifier} + {vlm.llm_backbone.identifier}): "
            f"{'; '.join(d for d in details if d)}. Check that the config and the weights belong together."
        )
    vlm.load_state_dict(state, strict=False)

