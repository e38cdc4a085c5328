"""The Llava export of SigLIP-only models (prismatic/hf/llava.py): transformers loads it with no custom code, and its
pixels, logits and greedy generations (model.generate and the image-text-to-text pipeline) equal the framework's on
tiny models; the chat template reproduces every prompt format; models without an exact Llava form are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, pipeline
from transformers.utils.chat_template_utils import render_jinja_template

from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.hf import export_llava
from prismatic.hf.chat_template import build_chat_template
from prismatic.models.backbones.llm.prompting import PROMPT_FORMATS, build_prompt_builder
from prismatic.models.vlms.generation import generate_token_ids, prepare_pixel_values, tokenize_prompts

QUESTIONS = ("What is going on?", "Which colour is the shape on the left of the picture?", "Hi")


def _image(seed: int, size: tuple[int, int] = (80, 50)) -> Image.Image:
    """A random RGB image; not square and not the encoder's size, so the resize is exercised."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def _tiny_prism(llm: str, projector: str):
    cfg = get_model_config("prism_siglip+tiny")
    cfg.llm_backbone_id, cfg.arch_specifier = llm, f"no-align+{projector}"
    return build_vlm(cfg)


@pytest.fixture(scope="module", params=[("tiny-llama2", "gelu-mlp"), ("tiny-qwen25", "linear")], ids=["llama", "qwen"])
def exported(request, tmp_path_factory: pytest.TempPathFactory):
    """(framework VLM, Llava directory): Llama-2 with Llava's own projector; Qwen2.5 (tied embeddings, image after
    <|im_start|>) with the `linear` projector (identity second layer)."""
    vlm = _tiny_prism(*request.param)
    return vlm, export_llava(vlm, tmp_path_factory.mktemp("llava") / "out")


def _prompt(vlm, question: str) -> str:
    builder = vlm.get_prompt_builder()
    builder.add_turn(role="human", message=question)
    return builder.get_prompt()


def _messages(question: str, image: Image.Image | None) -> list[dict]:
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def test_llava_export_equals_the_framework(exported) -> None:
    vlm, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config  # plain transformers, no remote code
    assert config["vision_feature_layer"] == -1 and config["vision_feature_select_strategy"] == "full"
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert isinstance(model, LlavaForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    images = [_image(1), _image(2, (40, 90)), None]
    texts = [processor.apply_chat_template(_messages(q, im), add_generation_prompt=True)
             for q, im in zip(QUESTIONS, images)]  # fmt: skip
    prompts = [_prompt(vlm, q) for q in QUESTIONS]
    inputs = processor(images=[im for im in images if im is not None], text=texts, padding=True, return_tensors="pt")

    # Pixels: bit-exact with the framework's transform.
    pixel_values, has_image = prepare_pixel_values(vlm, images, torch.device("cpu"))
    assert torch.equal(inputs["pixel_values"], pixel_values["siglip"])
    # Logits of every real position (left padding; the image tokens sit where the framework splices its tokens).
    with torch.no_grad():
        ours = model(**inputs).logits
        ids, mask = tokenize_prompts(vlm.llm_backbone, prompts)
        theirs = vlm(ids, mask, pixel_values, has_image=has_image, padding_side="left").logits
    for row in range(len(QUESTIONS)):
        real = inputs["attention_mask"][row].bool()
        reference = theirs[row, -int(real.sum()) :]
        assert torch.allclose(ours[row, real], reference, atol=1e-5, rtol=1e-5), row
    # Greedy generation, batched with left padding, stop tokens and pads included.
    generated = model.generate(**inputs, max_new_tokens=10)
    new = generated[:, inputs["input_ids"].shape[1] :].tolist()
    stops = set(vlm.llm_backbone.eos_token_ids)
    new = [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in new]
    assert new == generate_token_ids(vlm, images, prompts, max_new_tokens=10)


def test_the_pipeline_serves_the_export(exported) -> None:
    """The docs' serving example: transformers' image-text-to-text pipeline on the export directory."""
    vlm, out = exported
    pipe = pipeline("image-text-to-text", model=str(out), processor=AutoProcessor.from_pretrained(out, backend="pil"))
    answer = pipe(text=_messages(QUESTIONS[0], _image(3)), max_new_tokens=8, return_full_text=False)
    assert answer[0]["generated_text"].strip() == vlm.generate(_image(3), _prompt(vlm, QUESTIONS[0]), max_new_tokens=8)


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_chat_template_reproduces_every_prompt_format(prompt_format: str) -> None:
    eos, strip = ("<|im_end|>", False) if prompt_format == "qwen-chat" else ("</s>", True)

    def factory(system: str | None):
        return build_prompt_builder(prompt_format, eos, strip, system)

    template = build_chat_template(factory, image_anchor=None, image_token=None)
    has_system = factory(None).system_prompt is not None
    turns = [("human", "<image>\n  What moved?  "), ("gpt", "The ball."), ("human", "And then?"), ("gpt", ""),
             ("human", "Why?")]  # fmt: skip
    for length in (1, 3, 5):
        for system in (None, " Answer briefly. ") if has_system else (None,):
            builder = factory(system.strip() if system and strip else system)
            messages = [{"role": "system", "content": system}] if system else []
            for index, (role, text) in enumerate(turns[:length]):
                builder.add_turn(role, text)
                content = text if index % 2 else [{"type": "text", "text": text}]  # both content layouts
                messages.append({"role": "user" if role == "human" else "assistant", "content": content})
            rendered = render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
            assert rendered == builder.get_prompt(), (prompt_format, length, system)


def test_models_without_an_exact_llava_form_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fused-gelu-mlp.*no exact equivalent.*hf-auto"):
        export_llava(build_vlm("prism_siglip+tiny"), tmp_path / "fused")  # the registered tiny model: 3-layer MLP
    cfg = get_model_config("prism_siglip+tiny")
    cfg.vision_backbone_id, cfg.arch_specifier = "tiny-clip", "no-align+gelu-mlp"
    with pytest.raises(ValueError, match=r"SigLIP-only.*tiny-clip.*hf-auto"):
        export_llava(build_vlm(cfg), tmp_path / "clip")
    cfg = get_model_config("prism_siglip+tiny")
    cfg.arch_specifier, cfg.image_resize_strategy = "no-align+gelu-mlp", "letterbox"
    with pytest.raises(ValueError, match=r"'resize-naive' image transform only.*letterbox"):
        export_llava(build_vlm(cfg), tmp_path / "letterbox")
    assert not any(tmp_path.iterdir())  # nothing half-written
