"""Factories that build the pieces of a VLM from registry ids (the names prismatic-vlms users know).

`get_vision_backbone_and_transform`, `get_llm_backbone_and_tokenizer` and `get_vlm` are the building blocks that
`scripts/pretrain.py` calls top to bottom; `build_vlm` chains them for a registered model id (used by `load()` and by
tests that build 7B models on the `meta` device).
"""

from __future__ import annotations

from dataclasses import replace

from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer
from prismatic.models.backbones.vision.base_vision import ImageTransform, VisionBackbone, check_resize_strategy
from prismatic.models.backbones.vision.dual import DualStreamBackbone
from prismatic.models.backbones.vision.registry import VISION_BACKBONES, resolve_vision_backbone_id
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder, VAEOnlyBackbone
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.backbones.vision.timm_vit import build_static_backbone
from prismatic.models.projectors import ArchSpecifier
from prismatic.models.registry import ModelSpec, get_model_spec
from prismatic.models.vlms.prismatic import PrismaticVLM

__all__ = ["build_vlm", "get_llm_backbone_and_tokenizer", "get_vision_backbone_and_transform", "get_vlm"]

# Tiny generative encoders: random components at 64 px (see svd_components.build_tiny_svd_components).
TINY_SVD_CONFIG = SVDEncoderConfig(model_id=None, image_size=64)


def get_vision_backbone_and_transform(
    vision_backbone_id: str,
    image_resize_strategy: str = "resize-naive",
    num_frames: int | None = None,
    svd_config: SVDEncoderConfig | None = None,
    pretrained_path: str | None = None,
    load_weights: bool = True,
) -> tuple[VisionBackbone, ImageTransform]:
    """Build a vision backbone and its per-sample image transform.

    `svd_config` configures the generative stream (default: the real SVD checkpoint, or tiny random components for
    `tiny-*` ids); `num_frames`, when given, overrides its T. `pretrained_path` points the static encoder at a local
    directory instead of the hub. `load_weights=False` builds the architecture only (e.g. on the `meta` device).
    """
    vision_backbone_id = resolve_vision_backbone_id(vision_backbone_id)
    check_resize_strategy(image_resize_strategy)
    spec = VISION_BACKBONES[vision_backbone_id]

    static = None
    if spec.static_id is not None:
        static = build_static_backbone(spec.static_id, image_resize_strategy, pretrained_path, load_weights)
    generative = None
    if spec.generative is not None:
        config = svd_config or (TINY_SVD_CONFIG if spec.tiny else SVDEncoderConfig())
        if num_frames is not None:
            config = replace(config, num_frames=num_frames)
        encoder_cls = SVDGenerativeEncoder if spec.generative == "svd" else VAEOnlyBackbone
        generative = encoder_cls.from_config(vision_backbone_id, config, load_weights=load_weights)
        if isinstance(generative, SVDGenerativeEncoder):
            generative.drop_unused_modules()  # never run (release pre-mid): free the memory, leave no gradless params

    if static is not None and generative is not None:
        backbone: VisionBackbone = DualStreamBackbone(vision_backbone_id, static, generative)
    else:
        backbone = static if static is not None else generative  # type: ignore[assignment]
    return backbone, backbone.get_image_transform()


def get_vlm(
    model_id: str,
    arch_specifier: str,
    vision_backbone: VisionBackbone,
    llm_backbone,
    enable_mixed_precision_training: bool = True,
    projector_feature_norm: bool = False,
) -> PrismaticVLM:
    """Assemble a VLM (the projector is created here, sized to the backbones; `projector_feature_norm` adds a LayerNorm
    per visual stream before its MLP). Precision is applied by the strategy; the flag is kept for prismatic-vlms
    compatibility and recorded on the model."""
    vlm = PrismaticVLM(model_id, vision_backbone, llm_backbone, ArchSpecifier.parse(arch_specifier),
                       projector_feature_norm=projector_feature_norm)  # fmt: skip
    vlm.enable_mixed_precision_training = enable_mixed_precision_training
    return vlm


def build_vlm(
    model: str | ModelSpec,
    load_weights: bool = True,
    hf_token: str | None = None,
    llm_max_length: int = 2048,
    svd_config: SVDEncoderConfig | None = None,
    vision_pretrained_path: str | None = None,
    llm_pretrained_path: str | None = None,
) -> PrismaticVLM:
    """Build a registered model end to end. With `load_weights=False` nothing is downloaded or read from disk except
    packaged tokenizer vocabularies, so a 7B model builds under `with torch.device("meta"):`."""
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    if svd_config is None and VISION_BACKBONES[resolve_vision_backbone_id(spec.vision_backbone_id)].generative:
        tiny = VISION_BACKBONES[resolve_vision_backbone_id(spec.vision_backbone_id)].tiny
        svd_config = replace(TINY_SVD_CONFIG if tiny else SVDEncoderConfig(), mode=spec.svd_mode, tap=spec.tap)
    vision_backbone, _ = get_vision_backbone_and_transform(
        spec.vision_backbone_id,
        spec.image_resize_strategy,
        num_frames=spec.num_frames,
        svd_config=svd_config,
        pretrained_path=vision_pretrained_path,
        load_weights=load_weights,
    )
    llm_backbone, _ = get_llm_backbone_and_tokenizer(
        spec.llm_backbone_id,
        llm_max_length=llm_max_length,
        hf_token=hf_token,
        inference_mode=not load_weights,
        pretrained_path=llm_pretrained_path,
    )
    return get_vlm(spec.model_id, spec.arch_specifier, vision_backbone, llm_backbone)
