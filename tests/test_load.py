"""`prismatic.load()`: the README inference snippet on a freshly trained tiny run (the session's shared `tiny_run_dir`,
see conftest.py), the authors' release layout, local weight sources, strict checkpoint coverage, and every load error a
user can hit."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_RUN_FRAMES
from PIL import Image
from safetensors.torch import load_file, save_file

from prismatic import available_model_ids, get_model_description, load, loader
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer
from prismatic.models.backbones.vision.timm_vit import STATIC_ENCODERS, create_timm_model
from prismatic.training.run_setup import encode_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tiny_run_dir: Path) -> Path:
    """The session's shared tiny DyVA run (trained once through scripts/pretrain.py: fp32, one process, 2 frame
    slots; see conftest.py). Tests copy it before changing anything in it."""
    return tiny_run_dir


def _frames(n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(n)
    return [Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(n)]  # fmt: skip


def test_spec_inference_snippet_verbatim_on_a_trained_run(run_dir: Path) -> None:
    hf_token, device, image = None, "cpu", Image.open(REPO / "assets" / "rocket.png").convert("RGB")
    # --- The README snippet, with the run directory standing in for the 7B id ---
    vlm = load(str(run_dir), hf_token=hf_token)
    vlm.to(device, dtype=torch.bfloat16)
    prompt_builder = vlm.get_prompt_builder()
    prompt_builder.add_turn(role="human", message="What is in the image and what is going on?")
    text = vlm.generate(image, prompt_builder.get_prompt(), do_sample=True, temperature=0.4,
                        max_new_tokens=1024, min_length=1)  # fmt: skip
    # ---
    assert isinstance(text, str)
    assert not vlm.training and not any(p.requires_grad for p in vlm.parameters())
    # The run's --num_frames (not the model's default of 8) survives the round trip.
    assert json.loads((run_dir / "config.json").read_text())["num_frames"] == TINY_RUN_FRAMES != 8
    assert vlm.vision_backbone.generative.config.num_frames == TINY_RUN_FRAMES


def test_loaded_run_has_the_trained_weights(run_dir: Path) -> None:
    vlm = load(run_dir)
    saved = load_file(run_dir / "model.safetensors")
    own = vlm.state_dict()
    assert saved and all(torch.equal(own[k], v) for k, v in saved.items())
    assert any(k.startswith("projector.") for k in saved) and any(k.startswith("llm_backbone.") for k in saved)


def _release_copy(run_dir: Path, root: Path, drop: tuple[str, ...] = ()) -> Path:
    """The same weights in the authors' layout: <id>/config.json + <id>/checkpoints/latest-checkpoint.pt."""
    config = json.loads((run_dir / "config.json").read_text())["model"]
    saved = {k: v for k, v in load_file(run_dir / "model.safetensors").items() if k not in drop}
    projector = {f"_orig_mod.{k.removeprefix('projector.')}": v for k, v in saved.items() if k.startswith("projector.")}
    llm = {k.removeprefix("llm_backbone."): v for k, v in saved.items() if k.startswith("llm_backbone.")}
    folder = root / "dyva_siglip+tiny"
    (folder / "checkpoints").mkdir(parents=True)
    keys = (
        "model_id",
        "arch_specifier",
        "vision_backbone_id",
        "llm_backbone_id",
        "image_resize_strategy",
        "llm_max_length",
    )
    (folder / "config.json").write_text(json.dumps({"model": {k: config[k] for k in keys}, "num_frames": 8}))
    torch.save({"model": {"projector": projector, "llm_backbone": llm}}, folder / "checkpoints" / "latest-checkpoint.pt")
    return folder


def test_release_layout_generates_exactly_what_our_run_generates(run_dir: Path, tmp_path: Path) -> None:
    # The release code always ran T = 8 frame slots; give our run the same T for the comparison.
    ours_dir = tmp_path / "ours"
    shutil.copytree(run_dir, ours_dir)
    config = json.loads((ours_dir / "config.json").read_text())
    config["num_frames"], config["model"]["svd_num_frames"] = 8, 8
    (ours_dir / "config.json").write_text(json.dumps(config))
    ours, theirs = load(ours_dir), load(_release_copy(run_dir, tmp_path / "DyVA-WorldLM"))
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    prompts, images = [], [_frames(1)[0], _frames(3), None]
    for question in ("What colour is the top object?", "Which way does it move?", "Hi"):
        builder = ours.get_prompt_builder()
        builder.add_turn(role="human", message=question)
        prompts.append(builder.get_prompt())
    assert ours.generate(images, prompts, max_new_tokens=6) == theirs.generate(images, prompts, max_new_tokens=6)


def test_load_errors_say_what_to_do(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"available ids: .*dyva_siglip_qwen\+7b"):
        load("dyva_siglip+70b")
    with pytest.raises(FileNotFoundError, match="download the repo folder"):  # offline: nothing cached
        load("dyva_siglip_qwen+7b", cache_dir=tmp_path / "empty-cache")
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['model.safetensors'\]"):
        load(partial)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["llm_backbone_id"] = "tiny-qwen25"  # weights from a Llama run, config of a Qwen model
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="saved by a different model"):
        load(other)
    assert "DyVA-Qwen2.5-7B" in get_model_description("dyva_siglip_qwen+7b")
    assert {"dyva_siglip+7b", "dyva_siglip_qwen+7b"} <= set(available_model_ids())


# === Strict coverage: every trained parameter must come from the checkpoint ===
def _export_run(root: Path, model_type: str, stage: str, **fields: object) -> Path:
    """A run directory as scripts/pretrain.py leaves it, without the training: config.json and what `export_weights`
    writes (the trainable weights of the stage; each name of a tied weight with its own copy)."""
    cfg = get_model_config(model_type)
    for key, value in fields.items():
        setattr(cfg, key, value)
    vlm = build_vlm(cfg, stage=stage)
    trainable = {id(p) for p in vlm.parameters() if p.requires_grad}
    weights = {k: v.detach().clone() for k, v in vlm.state_dict(keep_vars=True).items() if id(v) in trainable}
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": encode_config(cfg), "stage": stage}))
    save_file(weights, root / "model.safetensors")
    return root


def _without(run_dir: Path, root: Path, *keys: str) -> Path:
    """A copy of a run directory whose model.safetensors lacks `keys`."""
    shutil.copytree(run_dir, root)
    weights = load_file(run_dir / "model.safetensors")
    assert all(key in weights for key in keys)
    save_file({k: v for k, v in weights.items() if k not in keys}, root / "model.safetensors")
    return root


PROJECTOR_KEY = "projector.projector_base.0.weight"
LLM_LAYER_KEY = "llm_backbone.llm.model.layers.1.mlp.down_proj.weight"
EMBEDDINGS, LM_HEAD = "llm_backbone.llm.model.embed_tokens.weight", "llm_backbone.llm.lm_head.weight"


@pytest.mark.parametrize("model_type", ["dyva_siglip+tiny", "dyva_siglip_qwen+tiny"])
def test_a_checkpoint_missing_a_trained_tensor_fails_naming_it(model_type: str, tmp_path: Path) -> None:
    run = _export_run(tmp_path / "run", model_type, "finetune")
    saved = load_file(run / "model.safetensors")
    vlm = load(run)
    assert all(torch.equal(vlm.state_dict()[k], v) for k, v in saved.items())
    for key in (PROJECTOR_KEY, LLM_LAYER_KEY):
        with pytest.raises(ValueError, match=rf"no tensor for 1 of .*{re.escape(key)}.*incomplete"):
            load(_without(run, tmp_path / key, key))
    llm = vlm.llm_backbone.llm
    if llm.lm_head.weight is llm.model.embed_tokens.weight:  # tiny Qwen2.5 ties them: either name fills both
        head_only = load(_without(run, tmp_path / "head-only", EMBEDDINGS))
        assert torch.equal(head_only.llm_backbone.llm.model.embed_tokens.weight, saved[LM_HEAD])
        with pytest.raises(ValueError, match=re.escape(EMBEDDINGS)):
            load(_without(run, tmp_path / "neither", EMBEDDINGS, LM_HEAD))
    else:  # tiny Llama-2: two parameters, both required
        with pytest.raises(ValueError, match=re.escape(LM_HEAD)):
            load(_without(run, tmp_path / "no-head", LM_HEAD))


def test_the_trained_runs_and_the_release_layout_are_checked_too(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(LLM_LAYER_KEY)):
        load(_without(run_dir, tmp_path / "run", LLM_LAYER_KEY))
    with pytest.raises(ValueError, match=re.escape(LLM_LAYER_KEY)):
        load(_release_copy(run_dir, tmp_path / "DyVA-WorldLM", drop=(LLM_LAYER_KEY,)))


def test_an_align_export_loads_its_llm_from_the_pretrained_weights(tmp_path: Path) -> None:
    """An align run exports the projector only; the LLM then comes from its pretrained source (here a local copy,
    through `llm_pretrained_path`), and a missing projector tensor still fails."""
    run = _export_run(tmp_path / "align", "dyva_siglip+tiny", "align", arch_specifier="align+dual")
    assert all(k.startswith("projector.") for k in load_file(run / "model.safetensors"))
    base, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    with torch.no_grad():
        for param in base.llm.parameters():
            param.add_(0.01)  # a base LLM other than the seeded init, so where it came from shows
    base.llm.save_pretrained(tmp_path / "llm")
    base.tokenizer.save_pretrained(tmp_path / "llm")
    default, local = load(run), load(run, llm_pretrained_path=tmp_path / "llm")
    assert torch.equal(local.llm_backbone.llm.lm_head.weight, base.llm.lm_head.weight)
    assert not torch.equal(default.llm_backbone.llm.lm_head.weight, base.llm.lm_head.weight)
    assert torch.equal(local.state_dict()[PROJECTOR_KEY], default.state_dict()[PROJECTOR_KEY])
    with pytest.raises(ValueError, match=re.escape(PROJECTOR_KEY)):
        load(_without(run, tmp_path / "partial", PROJECTOR_KEY))


# === Weight sources: the released SVD variant and local copies ===
class _Built(Exception):
    """Raised by a stand-in for `build_vlm`: the config it got is all these tests need (nothing real is built)."""


@pytest.fixture
def built_config(monkeypatch: pytest.MonkeyPatch) -> list:
    configs: list = []

    def record(model_cfg, **kwargs):
        configs.append(model_cfg)
        raise _Built

    monkeypatch.setattr(loader, "build_vlm", record)
    return configs


def _released_7b(root: Path) -> Path:
    """A released-layout folder of the real DyVA-7B (its checkpoint is never read: the build is stubbed)."""
    folder = root / "dyva_siglip+7b"
    (folder / "checkpoints").mkdir(parents=True)
    model = {"model_id": "dyva_siglip+7b", "vision_backbone_id": "dyva_siglip", "llm_backbone_id": "llama2-7b-pure"}
    (folder / "config.json").write_text(json.dumps({"model": model}))
    (folder / "checkpoints" / "latest-checkpoint.pt").write_bytes(b"")
    return folder


def _svd_copy(root: Path, *names: str) -> Path:
    (root / "vae").mkdir(parents=True)
    for name in names:
        (root / "vae" / name).write_bytes(b"")
    return root


def test_released_models_read_the_fp16_svd_and_local_copies_override_every_source(
    run_dir: Path, tmp_path: Path, built_config: list
) -> None:
    release = _released_7b(tmp_path / "DyVA-WorldLM")
    fp16 = _svd_copy(tmp_path / "svd-fp16", "diffusion_pytorch_model.fp16.safetensors")
    full = _svd_copy(tmp_path / "svd-full", "diffusion_pytorch_model.safetensors")
    siglip, llm = tmp_path / "siglip", tmp_path / "llama"
    siglip.mkdir(), llm.mkdir()
    for kwargs in ({}, {"svd_model_id": fp16, "vision_pretrained_path": siglip, "llm_pretrained_path": llm},
                   {"svd_model_id": full, "svd_variant": ""}):  # fmt: skip
        with pytest.raises(_Built):
            load(release, **kwargs)
    default, local, full_precision = built_config
    assert default.svd_variant == "fp16" and default.svd_model_id == "stabilityai/stable-video-diffusion-img2vid"
    assert default.vision_pretrained_path is None and default.llm_pretrained_path is None
    assert (local.svd_model_id, local.svd_variant) == (str(fp16), "fp16")
    assert (local.vision_pretrained_path, local.llm_pretrained_path) == (str(siglip), str(llm))
    assert (full_precision.svd_model_id, full_precision.svd_variant) == (str(full), None)
    with pytest.raises(FileNotFoundError, match=r"no 'fp16' weight files.*svd_variant=''"):
        load(release, svd_model_id=full)
    # Our runs keep the variant they recorded (None for the tiny run) and take the same local sources.
    with pytest.raises(_Built):
        load(run_dir, vision_pretrained_path=siglip, llm_pretrained_path=llm)
    ours = built_config[-1]
    assert ours.svd_variant is None
    assert (ours.vision_pretrained_path, ours.llm_pretrained_path) == (str(siglip), str(llm))


def test_weight_sources_a_model_cannot_use_are_refused(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny random SVD"):
        load(run_dir, svd_variant="fp16")
    with pytest.raises(ValueError, match="names nothing"):
        load(run_dir, llm_pretrained_path="")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load(run_dir, vision_pretrained_path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has none"):
        loader.WeightSources(svd_model_id=str(tmp_path)).apply(get_model_config("prism_siglip+tiny"))
    with pytest.raises(ValueError, match=r"static .* has none"):
        loader.WeightSources(vision_pretrained_path=tmp_path).apply(get_model_config("dyva-svd+7b"))


def test_a_local_static_encoder_copy_is_what_the_loaded_model_runs(run_dir: Path, tmp_path: Path) -> None:
    full = create_timm_model(STATIC_ENCODERS["tiny-siglip"])
    with torch.no_grad():
        full.patch_embed.proj.weight.add_(0.05)
    timm.models.save_for_hf(full, tmp_path / "siglip", safe_serialization=True)
    vlm = load(run_dir, vision_pretrained_path=tmp_path / "siglip")
    patch_embed = vlm.vision_backbone.static.featurizer.patch_embed.proj.weight
    assert torch.equal(patch_embed, full.patch_embed.proj.weight)
    assert not torch.equal(patch_embed, load(run_dir).vision_backbone.static.featurizer.patch_embed.proj.weight)
