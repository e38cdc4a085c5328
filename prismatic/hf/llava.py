"""Export a SigLIP-only (`prism_*`) VLM as a transformers `LlavaForConditionalGeneration` directory (no custom code).

What the directory holds and how each framework piece maps onto Llava (docs/hf_formats.md has the full table):
- vision tower: transformers' `SiglipVisionModel` with the timm SigLIP weights (`prismatic.hf.siglip`), read at
  `vision_feature_layer=-1` with `vision_feature_select_strategy="full"` (SigLIP has no CLS token to drop);
- projector: Llava's `multi_modal_projector` is Linear -> activation -> Linear. The framework's `gelu-mlp` is exactly
  that; `linear` maps exactly with the identity activation and an identity second layer. `fused-gelu-mlp` (three
  layers, two GELUs) and a projector feature norm have no Llava equivalent and are refused;
- LLM: the language model and LM head as they are (`model.language_model.*`, `lm_head`);
- processor: `LlavaProcessor` = a `SiglipImageProcessor` that computes the framework's `resize-naive` transform
  (PIL bicubic resize to S x S, rescale, the encoder's mean/std) + the framework's tokenizer with an added `<image>`
  token + a chat template derived from the framework's prompt builder (`prismatic.hf.chat_template`) that puts the
  image where the framework splices it (after the prompt's first token); Llava expands it to the number of patches;
- `generation_config.json`: the family's stop tokens and pad token, greedy, 128 new tokens (the framework's defaults).

The image processor is pixel-exact with the PIL backend (`AutoProcessor.from_pretrained(OUT, backend="pil")`);
transformers' default torchvision backend resizes with its own antialiasing, up to 2/255 per pixel away.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

import torch
import torch.nn as nn
from PIL import Image
from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from prismatic.hf.chat_template import build_chat_template
from prismatic.hf.siglip import siglip_state_dict, siglip_vision_config
from prismatic.models.backbones.vision.timm_vit import TimmViTBackbone
from prismatic.models.projectors import ProjectorKind, SingleStreamProjector
from prismatic.models.vlms.generation import tokenize_prompts
from prismatic.models.vlms.prismatic import PrismaticVLM

IMAGE_TOKEN = "<image>"
SIGLIP_PIXEL_KEY = "siglip"
# Framework projector kind -> Llava's `projector_hidden_act` (the layer between linear_1 and linear_2).
LLAVA_PROJECTORS: dict[str, str] = {"gelu-mlp": "gelu", "linear": "linear"}
_RESAMPLING: dict[str, PILImageResampling] = {
    "bicubic": PILImageResampling.BICUBIC,
    "bilinear": PILImageResampling.BILINEAR,
    "nearest": PILImageResampling.NEAREST,
}
assert set(LLAVA_PROJECTORS) <= set(get_args(ProjectorKind))  # a renamed projector kind must be renamed here too


# === Checks: which models have an exact Llava form ===
def _siglip_backbone(vlm: PrismaticVLM) -> TimmViTBackbone:
    backbone = vlm.vision_backbone
    if not isinstance(backbone, TimmViTBackbone) or backbone.spec.pixel_key != SIGLIP_PIXEL_KEY:
        raise ValueError(
            f"The Llava export takes SigLIP-only models (prism_siglip*); {vlm.model_id!r} has the vision backbone "
            f"{backbone.identifier!r}. Export DyVA and other models with the hf-auto format (prismatic.hf.export_auto)."
        )
    if backbone.image_resize_strategy != "resize-naive":
        raise ValueError(
            f"The Llava export reproduces the 'resize-naive' image transform only (SiglipImageProcessor resizes "
            f"straight to S x S); this model uses {backbone.image_resize_strategy!r}. Export it with the hf-auto format."
        )
    if backbone.spec.pixel_config.interpolation not in _RESAMPLING:
        raise ValueError(f"No PIL resampling for interpolation {backbone.spec.pixel_config.interpolation!r}.")
    return backbone


def _projector_layers(vlm: PrismaticVLM) -> tuple[nn.Linear, nn.Linear | None, str]:
    """(first linear, second linear or None for `linear`, Llava activation) of a Llava-shaped projector."""
    kind = vlm.arch.projector
    projector = vlm.projector
    if kind not in LLAVA_PROJECTORS or not isinstance(projector, SingleStreamProjector):
        raise ValueError(
            f"Llava's projector is Linear -> activation -> Linear; the framework's {kind!r} projector has no exact "
            f"equivalent (supported: {sorted(LLAVA_PROJECTORS)}). Train with --model.arch_specifier no-align+gelu-mlp "
            "for a Llava-exportable model, or export this one with the hf-auto format (prismatic.hf.export_auto)."
        )
    if not isinstance(projector.norm, nn.Identity):
        raise ValueError(
            "This model puts a LayerNorm on the visual features before the projector (projector_feature_norm), "
            "which Llava's projector has no place for; export it with the hf-auto format (prismatic.hf.export_auto)."
        )
    layers = [m for m in projector.projector if isinstance(m, nn.Linear)]
    return layers[0], layers[1] if len(layers) > 1 else None, LLAVA_PROJECTORS[kind]


# === Pieces ===
def _projector_state(vlm: PrismaticVLM) -> tuple[dict[str, torch.Tensor], str]:
    first, second, act = _projector_layers(vlm)
    if second is None:  # `linear`: Llava's second layer becomes the identity, its activation the identity function
        width = first.out_features
        eye = torch.eye(width, dtype=first.weight.dtype, device=first.weight.device)
        second_weight, second_bias = eye, torch.zeros_like(first.bias)
    else:
        second_weight, second_bias = second.weight, second.bias
    state = {
        "model.multi_modal_projector.linear_1.weight": first.weight,
        "model.multi_modal_projector.linear_1.bias": first.bias,
        "model.multi_modal_projector.linear_2.weight": second_weight,
        "model.multi_modal_projector.linear_2.bias": second_bias,
    }
    return {k: v.detach().clone() for k, v in state.items()}, act


def _llm_state(vlm: PrismaticVLM) -> dict[str, torch.Tensor]:
    """The causal LM's weights under Llava's names: its base model moves under `model.language_model.`."""
    llm = vlm.llm_backbone.llm
    state: dict[str, torch.Tensor] = {}
    for name, tensor in llm.state_dict().items():
        if name.startswith("model."):
            state[f"model.language_model.{name.removeprefix('model.')}"] = tensor.detach().clone()
        elif name == "lm_head.weight":
            state[name] = tensor.detach().clone()
        else:
            raise ValueError(f"Unexpected LLM weight {name!r}: the Llava export knows Llama-2 and Qwen2.5 layouts.")
    return state


def _tokenizer_with_image_token(vlm: PrismaticVLM):
    tokenizer = copy.deepcopy(vlm.llm_backbone.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    # Batched generation pads on the left (every row's next token in the last column, as the framework does); the
    # attribute alone is not saved, so it goes into the init kwargs that `save_pretrained` writes too.
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    rows = vlm.llm_backbone.llm.get_input_embeddings().num_embeddings
    if token_id >= rows:
        raise ValueError(
            f"The image token would get id {token_id}, past the LLM's {rows} embedding rows, and Llava embeds it "
            "before replacing it; resize the LLM's embeddings (pad_to_multiple_of) before exporting."
        )
    return tokenizer, token_id


def _image_anchor(vlm: PrismaticVLM) -> str:
    """The text after which the template writes the image token: "" when the tokenizer adds a BOS (the framework
    splices after it), else the prompt's first token (Qwen chat: "<|im_start|>")."""
    backbone = vlm.llm_backbone
    if backbone.spec.traits.bos_on_first_turn:
        return ""
    builder = backbone.get_prompt_builder()
    builder.add_turn("human", "Hi")
    prompt = builder.get_prompt()
    first = backbone.tokenizer.decode(backbone.tokenizer(prompt, add_special_tokens=True).input_ids[:1])
    if not prompt.startswith(first):
        raise ValueError(f"The prompt {prompt!r} does not start with its first token {first!r}; cannot place images.")
    return first


def _image_processor(backbone: TimmViTBackbone) -> SiglipImageProcessorPil:
    pixels = backbone.spec.pixel_config
    return SiglipImageProcessorPil(
        do_resize=True,
        size={"height": pixels.image_size, "width": pixels.image_size},
        resample=_RESAMPLING[pixels.interpolation],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(pixels.mean),
        image_std=list(pixels.std),
        do_convert_rgb=True,
    )


def llava_processor(vlm: PrismaticVLM) -> LlavaProcessor:
    """The LlavaProcessor that turns (chat messages | prompt text, images) into what the exported model reads."""
    backbone = _siglip_backbone(vlm)
    tokenizer, _ = _tokenizer_with_image_token(vlm)
    template = build_chat_template(vlm.llm_backbone.conversation_tokenizer().prompt_builder, _image_anchor(vlm),
                                   IMAGE_TOKEN)  # fmt: skip
    return LlavaProcessor(
        image_processor=_image_processor(backbone),
        tokenizer=tokenizer,
        patch_size=backbone.spec.image_size // backbone.featurizer.patch_embed.grid_size[0],
        vision_feature_select_strategy="full",
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=0,
    )


def llava_config(vlm: PrismaticVLM) -> LlavaConfig:
    backbone = _siglip_backbone(vlm)
    _, _, act = _projector_layers(vlm)
    _, image_token_id = _tokenizer_with_image_token(vlm)
    text_config = copy.deepcopy(vlm.llm_backbone.llm.config)
    return LlavaConfig(
        vision_config=siglip_vision_config(backbone),
        text_config=text_config,
        image_token_id=image_token_id,
        projector_hidden_act=act,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=vlm.num_visual_tokens,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


def llava_model(vlm: PrismaticVLM) -> LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration holding the VLM's weights (built on `meta`, then given the tensors)."""
    config = llava_config(vlm)
    state, _ = _projector_state(vlm)
    state |= siglip_state_dict(_siglip_backbone(vlm), "model.vision_tower.")
    state |= _llm_state(vlm)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def generation_config(vlm: PrismaticVLM) -> GenerationConfig:
    backbone = vlm.llm_backbone
    return GenerationConfig(
        bos_token_id=backbone.tokenizer.bos_token_id,
        eos_token_id=list(backbone.eos_token_ids),
        pad_token_id=backbone.pad_token_id,
        do_sample=False,
        max_new_tokens=128,
    )


def _check_prompt_ids(vlm: PrismaticVLM, processor: LlavaProcessor) -> None:
    """The exported processor must give the framework's prompt ids, with the image tokens where it splices them."""
    builder = vlm.get_prompt_builder()
    builder.add_turn("human", "What is in the image?")
    expected, _ = tokenize_prompts(vlm.llm_backbone, [builder.get_prompt()])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    size = vlm.vision_backbone.spec.image_size
    ids = processor(images=Image.new("RGB", (size, size)), text=text, return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    where = (ids == image_id).nonzero().flatten()
    spliced_after = 0  # the framework splices after token 0 (BOS, or the prompt's first token)
    if not torch.equal(ids[ids != image_id], expected[0]) or where.tolist() != list(
        range(spliced_after + 1, spliced_after + 1 + vlm.num_visual_tokens)
    ):
        raise RuntimeError(
            f"The exported processor tokenizes the prompt differently from the framework (framework "
            f"{expected[0].tolist()}, export {ids.tolist()}); please report this with the model's LLM id."
        )


def check_no_adapters(vlm: PrismaticVLM) -> None:
    """The Hugging Face formats hold plain weights: LoRA adapters (peft's `lora_A` modules) must be merged first."""
    if any(hasattr(module, "lora_A") for module in vlm.modules()):
        raise ValueError(
            "This model carries LoRA adapters; the Hugging Face formats hold plain weights. Merge them first "
            "(scripts/export.py --merge, or peft's merge_and_unload on each adapted part)."
        )


def export_llava(vlm: PrismaticVLM, out_dir: str | Path) -> Path:
    """Write `vlm` (a SigLIP-only model, e.g. `prismatic.load(run_dir)`) to `out_dir` as a Llava directory that
    `LlavaForConditionalGeneration.from_pretrained` / `AutoProcessor.from_pretrained` / `pipeline` read without custom
    code; returns `out_dir`. Unsupported models (another encoder, a three-layer projector, a resize strategy other than
    resize-naive) raise a ValueError naming what to use instead."""
    out = Path(out_dir)
    check_no_adapters(vlm)
    processor = llava_processor(vlm)
    _check_prompt_ids(vlm, processor)
    model = llava_model(vlm)
    model.generation_config = generation_config(vlm)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
