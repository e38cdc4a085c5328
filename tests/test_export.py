"""`scripts/export.py` / `prismatic.export`: a run exported to one directory that `load` reads alone (the run deleted,
offline) with the same weights and generations; LoRA adapters kept as peft directories or merged (`--merge`); the
authors' released `.pt` layout exported the same way; the folder `--push_to_hub` uploads; user errors."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from prismatic import load
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.export import ExportOptions, export_model
from prismatic.models.backbones.vision.video_encoder import VideoDiTEncoder
from prismatic.models.backbones.vision.video_prompt import PromptEmbedding, save_prompt_embedding
from prismatic.models.vlms.generation import prepare_pixel_values
from prismatic.training.run_setup import encode_config

REPO = Path(__file__).resolve().parents[1]
EXPORT_SCRIPT = REPO / "scripts" / "export.py"


def _prompts_and_images(vlm) -> tuple[list[str], list]:
    g = torch.Generator().manual_seed(3)
    frames = [Image.fromarray(torch.randint(0, 256, (48, 48, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(3)]  # fmt: skip
    prompts = []
    for question in ("What colour is it?", "Where does it go next?"):
        builder = vlm.get_prompt_builder()
        builder.add_turn(role="human", message=question)
        prompts.append(builder.get_prompt())
    return prompts, [frames[0], frames[:2]]  # the tiny run has 2 SVD frame slots


def _same_model(a, b, exact: bool = True) -> None:
    own, other = a.state_dict(), b.state_dict()
    assert own.keys() == other.keys()
    for key, value in own.items():
        if exact:
            assert torch.equal(value, other[key]), key
        else:
            assert torch.allclose(value, other[key], atol=1e-5), key
    prompts, images = _prompts_and_images(a)
    assert a.generate(images, prompts, max_new_tokens=6) == b.generate(images, prompts, max_new_tokens=6)


def test_an_export_loads_alone_with_the_same_weights_and_generations(tiny_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    scores = run / "results" / "tiny-0123456789ab" / "vsr" / "results.json"  # as scripts/evaluate.py writes them
    scores.parent.mkdir(parents=True)
    scores.write_text(json.dumps({"benchmark": "vsr", "metrics": {"accuracy": 0.5625}}))
    reference = load(run)
    out = export_model(run, tmp_path / "export")
    shutil.rmtree(run)  # the tiny model has no other source directory: the export is all there is
    exported = load(out)
    _same_model(reference, exported)
    assert not any(p.requires_grad for p in exported.parameters()) and not exported.training
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["sources"] == {"llm_pretrained_path": "llm", "vision_pretrained_path": "vision",
                                   "svd_model_id": "svd"} and manifest["adapters"] == {}  # fmt: skip
    # Every tensor is a safetensors file; the card names the training command, data and steps.
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    card = (out / "README.md").read_text()
    assert "scripts/pretrain.py --config_path training_config.yaml" in card and "steps: 6" in card
    assert "llava-custom" in card and (out / "training_config.yaml").is_file()
    assert "- vsr (`results/tiny-0123456789ab/vsr/results.json`): accuracy 0.5625" in card
    assert set(load_file(out / "model.safetensors")) == {k for k in reference.state_dict() if k.startswith("projector.")}


def _fake_lora_run(root: Path, model_type: str = "dyva_siglip_qwen+tiny", stage: str = "finetune", lora_rank: int = 4,
                   **fields) -> Path:  # fmt: skip
    """A (LoRA) run directory as scripts/pretrain.py leaves it (config.json + the trainable weights), with random
    trained weights (trained adapters are not zero), without the training."""
    cfg = get_model_config(model_type)
    cfg.lora_rank, cfg.lora_alpha = lora_rank, 8
    for key, value in fields.items():
        setattr(cfg, key, value)
    vlm = build_vlm(cfg, stage=stage)
    g = torch.Generator().manual_seed(1)
    weights = {}
    for name, param in vlm.named_parameters():
        if param.requires_grad:
            weights[name] = param.detach().clone() + 0.05 * torch.randn(param.shape, generator=g)
    root.mkdir(parents=True)
    config = {"model": encode_config(cfg), "stage": stage, "num_frames": 2}
    (root / "config.json").write_text(json.dumps(config))
    save_file(weights, root / "model.safetensors")
    return root


def test_lora_exports_keep_peft_adapters_or_merge_them(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _fake_lora_run(tmp_path / "run")
    reference = load(run)
    kept = export_model(run, tmp_path / "kept")
    merged = export_model(run, tmp_path / "merged", options=ExportOptions(merge=True))
    shutil.rmtree(run)
    _same_model(reference, load(kept))
    assert (kept / "adapters" / "llm" / "adapter_config.json").is_file()
    merged_vlm = load(merged)
    assert not any(".lora_" in name for name in merged_vlm.state_dict())
    assert not (merged / "adapters").exists() and json.loads((merged / "config.json").read_text())["model"][
        "lora_rank"] == 0  # fmt: skip
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.llm_backbone.llm(ids).logits
        assert torch.allclose(merged_vlm.llm_backbone.llm(ids).logits, expected, atol=1e-5, rtol=0)
        # The kept directories are the ecosystem's own formats: transformers + peft read them without prismatic.
        plain = AutoModelForCausalLM.from_pretrained(kept / "llm")
        assert not torch.allclose(plain(ids).logits, expected, atol=1e-3)  # the adapter matters
        adapted = PeftModel.from_pretrained(plain, kept / "adapters" / "llm")
        assert torch.allclose(adapted(ids).logits, expected, atol=1e-5, rtol=0)
    # An export is a source too: merging the kept adapters later gives the merged export.
    remerged = load(export_model(kept, tmp_path / "remerged", options=ExportOptions(merge=True)))
    for key, value in merged_vlm.state_dict().items():
        assert torch.allclose(value, remerged.state_dict()[key], atol=1e-6), key


@pytest.mark.parametrize("merge", [False, True])
def test_vision_and_unet_adapters_export_too(tmp_path: Path, merge: bool) -> None:
    """LoRA on the static encoder and on a U-Net stage's U-Net: kept as adapters/vision and adapters/unet, or merged
    into the exported vision/ and svd/ weights (a U-Net the run changed is written with its trained weights)."""
    run = _fake_lora_run(tmp_path / "run", "dyva_siglip+tiny", "finetune-unet", lora_vision=True, lora_unet=True)
    reference = load(run)
    out = export_model(run, tmp_path / "out", options=ExportOptions(merge=merge))
    shutil.rmtree(run)
    exported = load(out)
    adapters = json.loads((out / "export.json").read_text())["adapters"]
    assert adapters == ({} if merge else {"llm": "adapters/llm", "vision": "adapters/vision", "unet": "adapters/unet"})
    if not merge:
        _same_model(reference, exported)
        return
    assert not any(".lora_" in name for name in exported.state_dict())
    # Merged: the same visual tokens (both encoders carry folded adapters) and LLM logits, to float rounding.
    _, images = _prompts_and_images(reference)
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = [vlm.encode_images(prepare_pixel_values(vlm, [images[1]], torch.device("cpu"))[0])
                  for vlm in (reference, exported)]  # fmt: skip
        logits = [vlm.llm_backbone.llm(ids).logits for vlm in (reference, exported)]
    assert torch.allclose(*tokens, atol=1e-4, rtol=1e-4) and torch.allclose(*logits, atol=1e-5, rtol=0)


def _release_copy(run_dir: Path, root: Path) -> Path:
    """The tiny run's weights in the authors' layout: <id>/config.json + <id>/checkpoints/latest-checkpoint.pt."""
    config = json.loads((run_dir / "config.json").read_text())["model"]
    saved = load_file(run_dir / "model.safetensors")
    projector = {k.removeprefix("projector."): v for k, v in saved.items() if k.startswith("projector.")}
    llm = {k.removeprefix("llm_backbone."): v for k, v in saved.items() if k.startswith("llm_backbone.")}
    folder = root / "dyva_siglip+tiny"
    (folder / "checkpoints").mkdir(parents=True)
    keys = ("model_id", "arch_specifier", "vision_backbone_id", "llm_backbone_id", "image_resize_strategy")
    (folder / "config.json").write_text(json.dumps({"model": {k: config[k] for k in keys}}))
    torch.save({"model": {"projector": projector, "llm_backbone": llm}}, folder / "checkpoints" / "latest-checkpoint.pt")
    return folder


@pytest.mark.parametrize(("model_type", "stage"), [
    ("dyva-cogvideox_siglip+tiny", "finetune-unet"),  # a trained transformer: its weights go into video/
    ("dyva_dit_siglip+tiny", "finetune"),  # release-mode CogVideoX
    ("dyva-wan+tiny", "finetune"),  # video-only, with Wan's CLIP tower and image processor
    ("dyva-ltx_siglip+tiny", "finetune-unet"),
])  # fmt: skip
def test_video_model_streams_export_as_their_pipeline_directory(tmp_path: Path, model_type: str, stage: str) -> None:
    # The empty-prompt embedding from a file of the run's (not the tiny encoder's seeded stand-in), gone with the run.
    stand_in = next(m for m in build_vlm(get_model_config(model_type)).modules() if isinstance(m, VideoDiTEncoder))
    g = torch.Generator().manual_seed(5)
    prompt = PromptEmbedding(torch.randn(stand_in.prompt_embeds.shape, generator=g), stand_in.prompt.attention_mask,
                             stand_in.prompt.provenance)  # fmt: skip
    prompt_file = save_prompt_embedding(tmp_path / "run-inputs" / "prompt.safetensors", prompt)
    run = _fake_lora_run(tmp_path / "run", model_type, stage=stage, lora_rank=0, video_prompt_embeds=str(prompt_file))
    reference = load(run)
    out = export_model(run, tmp_path / "export")
    shutil.rmtree(run)
    shutil.rmtree(prompt_file.parent)
    exported = load(out)
    _same_model(reference, exported)
    sources = json.loads((out / "export.json").read_text())["sources"]
    assert sources["video_model_id"] == "video" and (out / "video" / "empty_prompt_embeds.safetensors").is_file()
    index = json.loads((out / "video" / "model_index.json").read_text())
    assert index["transformer"] and index["vae"] and index.get("text_encoder", [None])[0] is None
    # A complete checkpoint: the blocks after the tap are written (from the source), so the default tap is unchanged.
    encoder = next(m for m in exported.modules() if isinstance(m, VideoDiTEncoder))
    config = json.loads((out / "video" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == encoder.num_blocks > encoder.tap + 1


def test_a_released_checkpoint_exports_the_same_way(tiny_run_dir: Path, tmp_path: Path) -> None:
    release = _release_copy(tiny_run_dir, tmp_path / "DyVA-WorldLM")
    reference = load(release)
    out = export_model(release, tmp_path / "export")
    shutil.rmtree(release)
    _same_model(reference, load(out))
    assert "re-shares their `.pt` checkpoint as safetensors" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["num_frames"] == 8


def test_push_to_hub_uploads_the_exported_folder(tiny_run_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    calls: dict[str, dict] = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.setdefault("create", {
        "repo_id": repo_id, **kw}) and f"https://huggingface.co/{repo_id}")  # fmt: skip
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.setdefault("upload", kw))
    monkeypatch.setenv("MY_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("sys.argv", ["export.py", str(tiny_run_dir), str(tmp_path / "out"),
                                     "--push_to_hub", "me/tiny-dyva", "--hf_token", "MY_TOKEN"])  # fmt: skip
    runpy.run_path(str(EXPORT_SCRIPT), run_name="__main__")
    upload = calls["upload"]
    assert (upload["repo_id"], upload["repo_type"], upload["token"]) == ("me/tiny-dyva", "model", "hf_not_a_real_token")
    folder = Path(upload["folder_path"])
    assert folder == tmp_path / "out" and (folder / "export.json").is_file() and (folder / "llm").is_dir()
    assert calls["create"]["repo_id"] == "me/tiny-dyva" and calls["create"]["exist_ok"] is True
    assert b"hf_not_a_real_token" not in b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "gguf"], "Unknown export format 'gguf'; available formats: hf-auto, llava, native"),
        (["--merge"], None),  # a missing source
    ],
)
def test_export_user_errors_exit_2(tiny_run_dir: Path, tmp_path: Path, extra: list[str], message: str | None,
                                   capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    source = tiny_run_dir if message else tmp_path / "nowhere"
    monkeypatch.setattr("sys.argv", ["export.py", str(source), str(tmp_path / "out"), *extra])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXPORT_SCRIPT), run_name="__main__")
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and (message or "is not a directory") in error
    assert not (tmp_path / "out").exists()
