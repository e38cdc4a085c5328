"""Factories that build the pieces of a VLM from registry ids (the names prismatic-vlms users know).

`get_vision_backbone_and_transform`, `get_llm_backbone_and_tokenizer` and `get_vlm` are the building blocks; the one
path that assembles a whole VLM from a model config (pieces, freezing, casts) is `prismatic.assembly.build_vlm`.
The backbone modules (timm, diffusers, transformers) are imported when a piece is built, not when this module is, so
scripts and their `--help` start in well under a second.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prismatic.models.backbones.vision.base_vision import ImageTransform, VisionBackbone, check_resize_strategy
from prismatic.models.backbones.vision.registry import (
    VIDEO_KINDS,
    VISION_BACKBONES,
    generative_encoder_class,
    resolve_vision_backbone_id,
)
from prismatic.models.backbones.vision.svd_config import TINY_SVD_CONFIG, SVDEncoderConfig
from prismatic.models.backbones.vision.video_config import TINY_VIDEO_CONFIG, VideoEncoderConfig
from prismatic.models.projectors import ArchSpecifier
from prismatic.models.vlms.visual_features import EncoderBatching

if TYPE_CHECKING:
    from prismatic.models.backbones.llm.base_llm import LLMBackbone
    from prismatic.models.vlms.prismatic import PrismaticVLM

__all__ = ["get_llm_backbone_and_tokenizer", "get_vision_backbone_and_transform", "get_vlm"]


def get_llm_backbone_and_tokenizer(llm_backbone_id: str, **kwargs: Any) -> tuple[LLMBackbone, Any]:
    """The registered LLM and its tokenizer (see `prismatic.models.backbones.llm.loading` for the arguments)."""
    from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer as load_llm_backbone

    return load_llm_backbone(llm_backbone_id, **kwargs)


def get_vision_backbone_and_transform(
    vision_backbone_id: str,
    image_resize_strategy: str = "resize-naive",
    num_frames: int | None = None,
    svd_config: SVDEncoderConfig | None = None,
    pretrained_path: str | None = None,
    load_weights: bool = True,
    video_config: VideoEncoderConfig | None = None,
) -> tuple[VisionBackbone, ImageTransform]:
    """Build a vision backbone and its per-sample image transform.

    `svd_config` configures an SVD (or VAE-only) stream (default: the real SVD checkpoint, or tiny random components
    for `tiny-*` ids); `num_frames`, when given, overrides its T. `video_config` configures a DiT video stream
    (CogVideoX, Wan, LTX; default: the family's hub checkpoint, or tiny random components for `tiny-*` ids).
    `pretrained_path` points the static encoder at a local directory instead of the hub. `load_weights=False` builds
    the architecture only (e.g. on the `meta` device).
    """
    from prismatic.models.backbones.vision.dual import DualStreamBackbone
    from prismatic.models.backbones.vision.timm_vit import build_static_backbone

    vision_backbone_id = resolve_vision_backbone_id(vision_backbone_id)
    check_resize_strategy(image_resize_strategy)
    spec = VISION_BACKBONES[vision_backbone_id]

    static = None
    if spec.static_id is not None:
        static = build_static_backbone(spec.static_id, image_resize_strategy, pretrained_path, load_weights)
    generative = None
    if spec.generative in VIDEO_KINDS:
        config = video_config or (TINY_VIDEO_CONFIG if spec.tiny else VideoEncoderConfig())
        generative = generative_encoder_class(spec.generative).from_config(vision_backbone_id, config,
                                                                           load_weights=load_weights)  # fmt: skip
    elif spec.generative is not None:
        config = svd_config or (TINY_SVD_CONFIG if spec.tiny else SVDEncoderConfig())
        if num_frames is not None:
            config = replace(config, num_frames=num_frames)
        generative = generative_encoder_class(spec.generative).from_config(vision_backbone_id, config,
                                                                           load_weights=load_weights)  # fmt: skip
    if hasattr(generative, "drop_unused_modules"):
        generative.drop_unused_modules()  # never run (e.g. blocks after the tap): free the memory, no gradless params

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
    projector_feature_norm: bool = False,
    encoder_batching: EncoderBatching = "per-sample",
) -> PrismaticVLM:
    """Assemble a VLM; the projector is created here, sized to the backbones (`projector_feature_norm` adds a
    LayerNorm per visual stream before its MLP)."""
    from prismatic.models.vlms.prismatic import PrismaticVLM

    return PrismaticVLM(model_id, vision_backbone, llm_backbone, ArchSpecifier.parse(arch_specifier),
                        projector_feature_norm=projector_feature_norm, encoder_batching=encoder_batching)  # fmt: skip
