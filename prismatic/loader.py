"""`prismatic.load()`: a trained VLM from one of our run directories, or from the authors' released checkpoints.

Three layouts are read, and nothing is ever unpickled beyond tensors:
- **Our runs** (`scripts/pretrain.py`): `<run_dir>/config.json` (the resolved training config) and
  `<run_dir>/model.safetensors` (the trainable weights; a LoRA run's hold the adapters and the projector, on top of
  the base LLM its config names).
- **Exports** (`scripts/export.py`, `prismatic/export/`): a self-contained directory whose `export.json` names the
  subdirectories that hold every source (static encoder, generative encoder, LLM with tokenizer, peft adapters);
  `model.safetensors` holds the projector. Nothing outside the directory is read.
- **The authors' release** (`dyva/DyVA-WorldLM` on the hub, or a local copy of it): `<model_id>/config.json` and
  `<model_id>/checkpoints/latest-checkpoint.pt`, a torch file `{"model": {"projector": ..., "llm_backbone": ...}}`
  read with `weights_only=True`; projector keys may carry torch.compile's `_orig_mod.` prefix. Their generative
  encoder runs in our deterministic `release` mode, which computes what those weights were trained on.

Frozen encoders come from their own sources (hub ids or the local directories recorded in the config, or the
`load()` keywords that override them); the LLM is built from its config and then overwritten by the checkpoint, so its
base weights are never downloaded (an align-stage export holds the projector only: its LLM is the pretrained one). The
released SVD weights are read as the `fp16` variant, as the released code did. The model is built by the one assembly
path (`prismatic.assembly.build_vlm`), so it is the model training built. Every parameter the checkpoint's stage
trained (and the whole LLM when the checkpoint holds it) must get a tensor from it: a partial checkpoint is an error,
never a model with random holes.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import draccus
import torch
from safetensors.torch import load_file

from prismatic.assembly import build_vlm, lora_settings, set_trainable
from prismatic.conf.models import (
    DEFAULT_MODEL_TYPE,
    MODEL_CONFIGS,
    ModelConfig,
    get_model_config,
)
from prismatic.models.lora import LORA_PARTS, attach_adapter, part_modules
from prismatic.models.projectors import strip_compiled_prefix
from prismatic.models.stages import Stage, parse_stage
from prismatic.models.vlms.prismatic import PrismaticVLM
from prismatic.overwatch import initialize_overwatch
from prismatic.weight_sources import WeightSources

overwatch = initialize_overwatch(__name__)

RELEASE_REPO_ID = "dyva/DyVA-WorldLM"
RELEASE_CHECKPOINT = "checkpoints/latest-checkpoint.pt"
RUN_CONFIG, RUN_WEIGHTS = "config.json", "model.safetensors"
RELEASE_SVD_VARIANT = "fp16"  # the released code loaded SVD with variant="fp16"
EXPORT_MANIFEST = "export.json"  # marks an exported directory (prismatic/export/)


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
# The dev branch's backbones: a released-layout run whose model id we do not know gets the release-mode CogVideoX
# encoder settings of the registered model with that backbone.
_RELEASE_TYPE_BY_BACKBONE: dict[str, str] = {
    "dyva_dit_siglip": "dyva_dit_siglip+7b",
    "dyva_dit_dino": "dyva_dit_siglip+7b",
    "dyva_dit_clip": "dyva_dit_siglip+7b",
    "dyva_cogvideox": "dyva_cogvideox+7b",
}


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


def load(
    model_id_or_path: str | Path,
    hf_token: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    vision_pretrained_path: str | Path | None = None,
    svd_model_id: str | Path | None = None,
    svd_variant: str | None = None,
    llm_pretrained_path: str | Path | None = None,
    video_model_id: str | Path | None = None,
    video_prompt_embeds: str | Path | None = None,
) -> PrismaticVLM:
    """Load a VLM for inference (eval mode, no gradients) from a run directory, a released-layout directory, or a
    released model id (fetched from the hub, or from its cache).

    The keywords point what the checkpoint does not hold at other sources, e.g. local copies on a machine without the
    hub; None keeps what the model's config says (our runs: what they trained with; released models: the hub ids).
    - `vision_pretrained_path`: the static encoder, a directory written by `timm.models.save_for_hf(model, dir,
      safe_serialization=True)` (DINO+SigLIP backbones: one with `dino/` and `siglip/` such directories);
    - `svd_model_id`: SVD, a hub id or a local directory in the diffusers layout (`vae/`, `unet/`, `image_encoder/`,
      `feature_extractor/`, `scheduler/`); for tiny backbones, only a local tiny world model directory (what
      `scripts/train_world_model.py --svd_model_id tiny` exports as `<run_dir>/world_model/`);
    - `svd_variant`: its weight-file variant. Released models default to "fp16" (what the released code read), our
      runs to the one they recorded; "" reads the un-suffixed (full-precision) files;
    - `llm_pretrained_path`: a local copy of the base LLM (config and tokenizer; its weights are used only by an
      align-stage export, whose checkpoint holds the projector alone);
    - `video_model_id` / `video_prompt_embeds`: a video-model stream's (CogVideoX, Wan, LTX) diffusers pipeline
      directory or hub id, and its empty-prompt embedding file (scripts/encode_empty_prompt.py).
    A source the model has no use for (an SVD source for a model without an SVD stream, an SVD variant for tiny
    random SVD components, a static-encoder path for a model without one, an empty string) raises a ValueError; a
    tiny backbone's `svd_model_id` that is not a local world model directory, a FileNotFoundError.
    """
    sources = WeightSources(vision_pretrained_path, svd_model_id, svd_variant, llm_pretrained_path, video_model_id,
                            video_prompt_embeds)  # fmt: skip
    path = Path(model_id_or_path)
    if path.is_dir():
        if (path / EXPORT_MANIFEST).is_file():
            return _load_export(path, hf_token, sources)
        if (path / RUN_WEIGHTS).exists() or not (path / RELEASE_CHECKPOINT).exists():
            return _load_run(path, hf_token, sources)
        return _load_release(path / RUN_CONFIG, path / RELEASE_CHECKPOINT, hf_token, sources)
    model_id = RELEASED_ALIASES.get(str(model_id_or_path), str(model_id_or_path))
    if model_id not in RELEASED_MODELS:
        raise ValueError(
            f"{model_id_or_path!r} is neither a directory nor a released model id; available ids: "
            f"{available_model_ids()}. Pass a run directory (with {RUN_CONFIG} and {RUN_WEIGHTS}) to load your own."
        )
    config_file = _fetch(model_id, RUN_CONFIG, hf_token, cache_dir)
    checkpoint_file = _fetch(model_id, RELEASE_CHECKPOINT, hf_token, cache_dir)
    return _load_release(config_file, checkpoint_file, hf_token, sources)


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
def _load_run(run_dir: Path, hf_token: str | None, sources: WeightSources) -> PrismaticVLM:
    missing = [name for name in (RUN_CONFIG, RUN_WEIGHTS) if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Run directory {run_dir} is missing {missing}: load() needs {RUN_CONFIG} and {RUN_WEIGHTS}, which "
            "scripts/pretrain.py writes when training finishes (resume an unfinished run with --resume auto)."
        )
    config, model_cfg = _run_config(run_dir)
    sources.apply(model_cfg)
    weights = load_file(run_dir / RUN_WEIGHTS)
    # An align-stage export holds the projector only: the LLM then needs its pretrained weights. So does a LoRA run's,
    # whose LLM tensors are its adapters: the base LLM comes from the source its config names.
    llm_in_checkpoint = any(k.startswith("llm_backbone.") for k in weights) and not lora_settings(model_cfg).enabled
    # The stage the run trained says which weights its export holds (configs without one: guess from the keys).
    stage = parse_stage(config.get("stage") or (Stage.FINETUNE if llm_in_checkpoint else Stage.ALIGN))
    vlm = build_vlm(model_cfg, hf_token=hf_token, llm_weights=not llm_in_checkpoint)
    _load_state(vlm, weights, run_dir / RUN_WEIGHTS, model_cfg, stage, llm_in_checkpoint)
    return vlm


def _run_config(run_dir: Path) -> tuple[dict, ModelConfig]:
    """A run directory's (or export's) config.json and the model config `load` builds from (sources not applied)."""
    config = json.loads((run_dir / RUN_CONFIG).read_text())
    model_cfg = draccus.decode(ModelConfig, config["model"])
    if config.get("num_frames"):  # the frame slots the run trained with (pretrain.py writes both; this one wins)
        model_cfg.svd_num_frames = int(config["num_frames"])
    return config, model_cfg


def model_config_of(path: str | Path) -> tuple[ModelConfig, dict | None]:
    """The model config `load(path)` builds from (weight sources given to `load` not applied; an export's own
    subdirectories are) and, for a run or an export, its config.json; for the authors' release layout, None."""
    path = Path(path)
    if (path / RELEASE_CHECKPOINT).exists() and not (path / RUN_WEIGHTS).exists():
        return _release_model_config(path / RUN_CONFIG), None
    config, model_cfg = _run_config(path)
    if (path / EXPORT_MANIFEST).is_file():
        for name, source in _export_sources(path).items():
            setattr(model_cfg, name, str(source))
    return model_cfg, config


def _export_sources(out: Path) -> dict[str, Path]:
    """The sources an export's manifest names (WeightSources fields -> its subdirectories)."""
    relative = json.loads((out / EXPORT_MANIFEST).read_text()).get("sources", {})
    unknown = sorted(set(relative) - set(WeightSources.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{out / EXPORT_MANIFEST} names unknown sources {unknown}; re-export the model.")
    return {name: out / folder for name, folder in relative.items()}


# === Exports (prismatic/export/): every source in the directory itself ===
def _load_export(out: Path, hf_token: str | None, sources: WeightSources) -> PrismaticVLM:
    """An exported directory: the model built from the subdirectories its manifest names (sources given to `load`
    still win), the projector from model.safetensors, then each peft adapter directory injected."""
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    _, model_cfg = _run_config(out)
    local = _export_sources(out)
    given = {name: getattr(sources, name) for name in local if getattr(sources, name) is not None}
    replace(sources, **{**local, **given}).apply(model_cfg)
    adapters = {part: out / relative for part, relative in manifest.get("adapters", {}).items()}
    unknown = sorted(set(adapters) - set(LORA_PARTS))
    if unknown:
        raise ValueError(f"{out / EXPORT_MANIFEST} names adapters for unknown parts {unknown}; re-export the model.")
    # Built without adapters (they come from their directories below); the projector is what model.safetensors holds.
    base_cfg = replace(model_cfg, lora_rank=0, lora_vision=False, lora_unet=False)
    vlm = build_vlm(base_cfg, hf_token=hf_token)
    weights = load_file(out / RUN_WEIGHTS)
    _load_state(vlm, weights, out / RUN_WEIGHTS, base_cfg, Stage.ALIGN, llm_in_checkpoint=False)
    modules = part_modules(vlm, adapters)
    for part, adapter_dir in adapters.items():
        attach_adapter(modules[part], adapter_dir)
    vlm.requires_grad_(False)
    return vlm.eval()


# === The authors' release layout ===
def _load_release(
    config_file: Path, checkpoint_file: Path, hf_token: str | None, sources: WeightSources
) -> PrismaticVLM:
    model_cfg = _release_model_config(config_file)
    sources.apply(model_cfg)
    vlm = build_vlm(model_cfg, hf_token=hf_token, llm_weights=False)
    checkpoint = _load_tensor_checkpoint(checkpoint_file)["model"]  # weights_only: refused, never run, if not tensors
    state = {f"projector.{k}": v for k, v in strip_compiled_prefix(checkpoint["projector"]).items()}
    state |= {f"llm_backbone.{k}": v for k, v in checkpoint["llm_backbone"].items()}
    # The released runs finetuned the projector and the LLM (the model's finetune set).
    _load_state(vlm, state, checkpoint_file, model_cfg, Stage.FINETUNE, llm_in_checkpoint=True)
    return vlm


def _release_model_config(config_file: Path) -> ModelConfig:
    """Our model config for a released folder's config.json."""
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: the release layout has <model_id>/{RUN_CONFIG}.")
    released = json.loads(config_file.read_text())["model"]
    # Start from our registered config of that id (its defaults: release-mode SVD, T = 8; or, for the dev branch's
    # CogVideoX backbones, the release-mode CogVideoX encoder they trained with), then apply theirs.
    model_type = str(released.get("model_id", ""))
    if model_type not in MODEL_CONFIGS:
        model_type = _RELEASE_TYPE_BY_BACKBONE.get(str(released.get("vision_backbone_id")), DEFAULT_MODEL_TYPE)
    model_cfg = get_model_config(model_type)
    for key in ("model_id", "arch_specifier", "vision_backbone_id", "llm_backbone_id", "image_resize_strategy",
                "llm_max_length"):  # fmt: skip
        if key in released:
            setattr(model_cfg, key, released[key])
    model_cfg.svd_num_frames = 8  # the released code always ran T = 8 (it ignored num_frames for dyva_* backbones)
    model_cfg.svd_variant = RELEASE_SVD_VARIANT
    return model_cfg


def _load_tensor_checkpoint(checkpoint_file: Path) -> dict:
    """A released `.pt` read with `weights_only=True`: only tensors and plain containers are unpickled, so a file
    from someone else never runs code; anything else (a pickled object, a class whose `__reduce__` calls a function)
    is refused with a ValueError naming the file, before any of it is constructed."""
    try:
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's weights_only unpickler refuses every non-tensor global
        raise ValueError(
            f"Refusing to load {checkpoint_file}: it is not a plain tensor checkpoint (its pickle holds objects that "
            "would run code when loaded, which load() never does). Use the released file from the hub repo "
            f"{RELEASE_REPO_ID}, or re-save the weights as plain tensors ({{'model': {{'projector': ..., "
            f"'llm_backbone': ...}}}}). Details: {str(error).splitlines()[0]}"
        ) from error
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, dict) or not {"projector", "llm_backbone"} <= model.keys():
        raise ValueError(
            f"{checkpoint_file} is not a released DyVA checkpoint: expected {{'model': {{'projector': ..., "
            "'llm_backbone': ...}}}} of tensors. Re-download it, or load your own runs by their run directory."
        )
    return checkpoint


def _required_parameters(
    vlm: PrismaticVLM, model_cfg: ModelConfig, stage: Stage, llm_in_checkpoint: bool
) -> list[tuple[str, ...]]:
    """Each parameter the checkpoint must fill, as all the names it goes by (tied weights have several, and a
    checkpoint may hold any one of them): what `stage` trains (with LoRA: the adapters, not their base weights), and
    the whole LLM when it was built architecture-only for the checkpoint to fill. Frozen encoders come from their own
    sources."""
    try:
        set_trainable(vlm, model_cfg, stage)  # the one definition of what a stage trains
        if llm_in_checkpoint:
            vlm.llm_backbone.requires_grad_(True)
        names: dict[int, list[str]] = {}
        for name, param in vlm.named_parameters(remove_duplicate=False):
            if param.requires_grad:
                names.setdefault(id(param), []).append(name)
    finally:
        vlm.requires_grad_(False)  # back to inference
    return [tuple(group) for group in names.values()]


def _load_state(
    vlm: PrismaticVLM,
    state: dict[str, torch.Tensor],
    source: Path,
    model_cfg: ModelConfig,
    stage: Stage,
    llm_in_checkpoint: bool,
) -> None:
    """Copy checkpoint tensors into the model: any unknown key or shape mismatch means another model's checkpoint, and
    a parameter the checkpoint should fill but does not (see `_required_parameters`) an incomplete one."""
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
    trained = model_cfg.trainable_stage(stage)
    required = _required_parameters(vlm, model_cfg, trained, llm_in_checkpoint)
    missing = [names[0] for names in required if not any(name in state for name in names)]
    if missing:
        raise ValueError(
            f"{source} has no tensor for {len(missing)} of the {len(required)} parameters it should hold (stage "
            f"{trained.value!r}{' and the LLM' if llm_in_checkpoint else ''}), e.g. {missing[:5]}: the checkpoint "
            f"is incomplete. Re-export it ({RUN_WEIGHTS} is written when scripts/pretrain.py finishes a run) or "
            "re-download it, and check that the config and the weights belong together."
        )
    vlm.load_state_dict(state, strict=False)
