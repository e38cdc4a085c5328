"""`prismatic.load()`: the README inference snippet on a freshly trained tiny run (the session's shared `tiny_run_dir`,
see conftest.py), the authors' release layout, and every load error a user can hit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN_FRAMES
from PIL import Image
from safetensors.torch import load_file

from prismatic import available_model_ids, get_model_description, load

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


def _release_copy(run_dir: Path, root: Path) -> Path:
    """The same weights in the authors' layout: <id>/config.json + <id>/checkpoints/latest-checkpoint.pt."""
    config = json.loads((run_dir / "config.json").read_text())["model"]
    saved = load_file(run_dir / "model.safetensors")
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
