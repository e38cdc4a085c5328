"""The hf-auto export (prismatic/hf/auto.py): transformers' auto classes load a tiny DyVA (tiny SigLIP + tiny SVD) with
no remote code once prismatic is imported, and its logits and greedy generations (images, frame lists and text-only
rows in one batch) equal the framework model's and `prismatic.load(OUT)`'s; save_pretrained round-trips; the
registration never imports transformers on `import prismatic`; `scripts/export.py --format hf-auto` exports a run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from prismatic import load
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.hf import export_auto
from prismatic.hf.configuration import DyVAConfig
from prismatic.hf.modeling import DyVAForConditionalGeneration
from prismatic.hf.processing import DyVAProcessor
from prismatic.models.vlms.generation import generate_token_ids, prepare_pixel_values, tokenize_prompts
from prismatic.training.run_setup import encode_config

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ("What is in the image?", "Where does the shape go in these frames?", "Say hi.")
FRAMES = 2  # SVD frame slots of the tiny models here (fast; a list of 2 frames fills them)


def _image(seed: int, size: tuple[int, int] = (80, 50)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


IMAGES = [_image(1), [_image(2), _image(3, (64, 64))], None]  # an image, a frame list, a text-only row


def _tiny_config(model_type: str):
    cfg = get_model_config(model_type)
    cfg.svd_num_frames = FRAMES
    return cfg


def _export(model_type: str, root: Path):
    """(framework VLM, its model config, hf-auto directory, the VLM's weights before the export)."""
    cfg = _tiny_config(model_type)
    vlm = build_vlm(cfg)
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    return vlm, cfg, export_auto(vlm, root / "out", model_config=cfg), before


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory: pytest.TempPathFactory):
    return _export("dyva_siglip+tiny", tmp_path_factory.mktemp("auto-llama"))


@pytest.fixture(scope="module")
def qwen_export(tmp_path_factory: pytest.TempPathFactory):
    """Tiny DyVA-Qwen: Qwen2.5's tied embeddings must survive the export and the load."""
    return _export("dyva_siglip_qwen+tiny", tmp_path_factory.mktemp("auto-qwen"))


def _prompts(vlm) -> list[str]:
    prompts = []
    for question in QUESTIONS:
        builder = vlm.get_prompt_builder()
        builder.add_turn(role="human", message=question)
        prompts.append(builder.get_prompt())
    return prompts


def _new_ids(vlm, generated: torch.Tensor, prompt_length: int) -> list[list[int]]:
    """The generated ids after the prompt, each row cut at its first stop token (as the framework returns them)."""
    stops = set(vlm.llm_backbone.eos_token_ids)
    rows = generated[:, prompt_length:].tolist()
    return [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


@pytest.mark.parametrize("export", ["llama_export", "qwen_export"])
def test_auto_classes_equal_the_framework(export: str, request: pytest.FixtureRequest) -> None:
    vlm, _, out, before = request.getfixturevalue(export)
    # Exporting left the framework model untouched (transformers' generic weight init never ran on it).
    assert all(torch.equal(value, before[name]) for name, value in vlm.state_dict().items())
    assert json.loads((out / "config.json").read_text())["model_type"] == "dyva"
    assert isinstance(AutoConfig.from_pretrained(out), DyVAConfig)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(model, DyVAForConditionalGeneration) and isinstance(processor, DyVAProcessor)
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in QUESTIONS]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    prompts = _prompts(vlm)
    assert texts == prompts
    inputs = processor(images=IMAGES, text=texts)

    with torch.no_grad():
        ours = model(**inputs).logits
        ids, mask = tokenize_prompts(vlm.llm_backbone, prompts)
        pixel_values, has_image = prepare_pixel_values(vlm, IMAGES, torch.device("cpu"))
        theirs = vlm(ids, mask, pixel_values, has_image=has_image, padding_side="left").logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)

    generated = model.generate(**inputs, max_new_tokens=10)
    expected = generate_token_ids(vlm, IMAGES, prompts, max_new_tokens=10)
    assert _new_ids(vlm, generated, inputs["input_ids"].shape[1]) == expected
    answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [a.strip() for a in answers] == vlm.generate(IMAGES, prompts, max_new_tokens=10)


def test_prismatic_load_and_save_pretrained_round_trip(llama_export, tmp_path: Path) -> None:
    vlm, _, out, _ = llama_export
    prompts = _prompts(vlm)
    expected = generate_token_ids(vlm, IMAGES, prompts, max_new_tokens=6)
    assert generate_token_ids(load(out), IMAGES, prompts, max_new_tokens=6) == expected  # the same folder, our loader
    model = AutoModelForImageTextToText.from_pretrained(out)
    model.save_pretrained(tmp_path / "again")
    AutoProcessor.from_pretrained(out).save_pretrained(tmp_path / "again")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "again")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    processor = AutoProcessor.from_pretrained(tmp_path / "again")
    inputs = processor(images=IMAGES, text=prompts)
    assert _new_ids(vlm, again.generate(**inputs, max_new_tokens=6), inputs["input_ids"].shape[1]) == expected
    # `dtype=` casts every part, as transformers models do (the framework builds some of them in fp32 explicitly).
    half = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.generate(**inputs, max_new_tokens=2).shape == (len(prompts), inputs["input_ids"].shape[1] + 2)


def test_a_video_model_export_carries_its_prompt_embedding(tmp_path: Path) -> None:
    """LTX (a prompt embedding with an attention mask) read from a file that is gone when the export is loaded: the
    export's weights hold the values the framework model ran with, not the seeded random stand-in."""
    from prismatic.models.backbones.vision.video_encoder import VideoDiTEncoder
    from prismatic.models.backbones.vision.video_prompt import PromptEmbedding, save_prompt_embedding

    cfg = get_model_config("dyva-ltx_siglip+tiny")
    stand_in = next(m for m in build_vlm(cfg).modules() if isinstance(m, VideoDiTEncoder)).prompt
    mask = torch.ones_like(stand_in.attention_mask)
    mask[-2:] = 0  # padding positions, as a real tokenizer's mask has
    own = PromptEmbedding(torch.randn(stand_in.embeds.shape, generator=torch.Generator().manual_seed(7)), mask,
                          {**stand_in.provenance, "source": "test"})  # fmt: skip
    cfg.video_prompt_embeds = str(save_prompt_embedding(tmp_path / "prompt.safetensors", own))
    vlm = build_vlm(cfg)
    out = export_auto(vlm, tmp_path / "out", model_config=cfg)
    (tmp_path / "prompt.safetensors").unlink()
    images, prompts = IMAGES[:2], _prompts(vlm)[:2]
    expected = generate_token_ids(vlm, images, prompts, max_new_tokens=6)
    for loaded in (AutoModelForImageTextToText.from_pretrained(out).vlm, load(out)):
        encoder = next(m for m in loaded.modules() if isinstance(m, VideoDiTEncoder))
        assert torch.equal(encoder.prompt_embeds, own.embeds) and torch.equal(encoder.prompt_attention_mask, mask)
        assert generate_token_ids(loaded, images, prompts, max_new_tokens=6) == expected


def test_import_prismatic_registers_without_importing_transformers() -> None:
    """The registration waits for transformers, even when the first import of transformers comes from the module that
    defines the registered classes, and survives an availability check that imports nothing (diffusers does one)."""
    probe = (
        "import importlib.util, sys, prismatic\n"
        "assert importlib.util.find_spec('transformers') is not None\n"
        "assert 'transformers' not in sys.modules\n"
        "from prismatic.hf.modeling import DyVAForConditionalGeneration\n"
        "from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as MODELS\n"
        "config = CONFIG_MAPPING['dyva']\n"
        "assert MODELS[config] is DyVAForConditionalGeneration\n"
        "assert PROCESSOR_MAPPING[config].__name__ == 'DyVAProcessor'\n"
        "prismatic.hf.register(); prismatic.hf.register()\n"
        "print('registered')\n"
    )
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", probe], cwd=REPO, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "registered", result.stderr[-3000:]


def test_the_command_line_exports_a_run_directory(llama_export, tmp_path: Path) -> None:
    """`scripts/export.py RUN_DIR OUT --format hf-auto` on a run directory (config.json + model.safetensors, the layout
    scripts/pretrain.py writes: the weights the finetune stage trains; the tiny encoders are seeded)."""
    vlm, cfg, _, _ = llama_export
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": encode_config(cfg), "stage": "finetune", "num_frames": FRAMES}
    (run / "config.json").write_text(json.dumps(config))
    trained = {k: v.clone() for k, v in vlm.state_dict().items() if k.startswith(("projector.", "llm_backbone."))}
    save_file(trained, run / "model.safetensors")
    spec = importlib.util.spec_from_file_location("export_script", REPO / "scripts" / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main([str(run), str(tmp_path / "out"), "--format", "hf-auto"])
    model, processor = AutoModelForImageTextToText.from_pretrained(out), AutoProcessor.from_pretrained(out)
    prompts = _prompts(vlm)
    inputs = processor(images=IMAGES, text=prompts)
    generated = _new_ids(vlm, model.generate(**inputs, max_new_tokens=6), inputs["input_ids"].shape[1])
    assert generated == generate_token_ids(vlm, IMAGES, prompts, max_new_tokens=6)
