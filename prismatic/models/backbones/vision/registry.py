"""The one registry of vision backbones: every id, what it is made of, and the released ids that alias it.

A backbone is a static encoder (timm ViT, or the fused DINO-SigLIP), a generative encoder (`svd`, or the `vae` ablation),
or one of each (dual-stream). To add a backbone, add a line here (and, for a new static encoder, its spec in
`timm_vit.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GenerativeKind = Literal["svd", "vae"]


@dataclass(frozen=True)
class VisionBackboneSpec:
    """What a backbone id is made of: a static encoder, a generative one, or both (dual-stream)."""

    static_id: str | None  # a key of timm_vit.STATIC_ENCODERS or timm_vit.DINOSIGLIP_ENCODERS
    generative: GenerativeKind | None
    tiny: bool = False  # seeded random test-size encoders (the generative one built from svd_config.TINY_SVD_CONFIG)


_STATIC = {
    "siglip-vit-so400m": "siglip-vit-so400m",
    "siglip-vit-so400m-384px": "siglip-vit-so400m-384px",
    "clip-vit-l": "clip-vit-l",
    "clip-vit-l-336px": "clip-vit-l-336px",
    "dinov2-vit-l": "dinov2-vit-l",
    "dinosiglip-vit-so-224px": "dinosiglip-vit-so-224px",
}
_DUAL = {"siglip+svd": "siglip-vit-so400m", "clip+svd": "clip-vit-l", "dinov2+svd": "dinov2-vit-l",
         "dinosiglip+svd": "dinosiglip-vit-so-224px"}  # fmt: skip
_TINY_STATIC = {"tiny-siglip": "tiny-siglip", "tiny-clip": "tiny-clip", "tiny-dinov2": "tiny-dinov2",
                "tiny-dinosiglip": "tiny-dinosiglip"}  # fmt: skip

VISION_BACKBONES: dict[str, VisionBackboneSpec] = {
    **{k: VisionBackboneSpec(v, None) for k, v in _STATIC.items()},
    **{k: VisionBackboneSpec(v, "svd") for k, v in _DUAL.items()},
    "svd": VisionBackboneSpec(None, "svd"),
    "vae-only": VisionBackboneSpec(None, "vae"),
    **{k: VisionBackboneSpec(v, None, tiny=True) for k, v in _TINY_STATIC.items()},
    **{f"{k}+svd": VisionBackboneSpec(v, "svd", tiny=True) for k, v in _TINY_STATIC.items()},
    "tiny-svd": VisionBackboneSpec(None, "svd", tiny=True),
    "tiny-vae-only": VisionBackboneSpec(None, "vae", tiny=True),
}

# The spellings used by the authors' code and README resolve to the ids above.
VISION_BACKBONE_ALIASES: dict[str, str] = {
    "svd-only": "svd",
    "dyva-svd": "svd",
    "dyva_siglip": "siglip+svd",
    "dyva_clip": "clip+svd",
    "dyva_dino": "dinov2+svd",
    "dyva_dinosiglip": "dinosiglip+svd",
}


def resolve_vision_backbone_id(vision_backbone_id: str) -> str:
    resolved = VISION_BACKBONE_ALIASES.get(vision_backbone_id, vision_backbone_id)
    if resolved not in VISION_BACKBONES:
        valid = sorted([*VISION_BACKBONES, *VISION_BACKBONE_ALIASES])
        raise ValueError(f"Unknown vision_backbone_id {vision_backbone_id!r}; valid ids are: {', '.join(valid)}.")
    return resolved
