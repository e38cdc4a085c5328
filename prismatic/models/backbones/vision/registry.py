"""The one registry of vision backbones: every id, what it is made of, and the released ids that alias it.

A backbone is a static encoder (timm ViT, or the fused DINO-SigLIP), a generative encoder (`svd`, the `vae` ablation, or
a DiT video model of the zoo: `cogvideox`, `wan`, `ltx`), or one of each (dual-stream). To add a backbone, add a line
here (and, for a new static encoder, its spec in `timm_vit.py`). To add a video model as a generative encoder, write
its file (a `video_encoder.VideoDiTEncoder` subclass) and add one line to `GENERATIVE_ENCODERS`: every static encoder
then pairs with it (`siglip+<kind>`, `tiny-siglip+<kind>`, ...) and it runs alone as `<kind>` / `tiny-<kind>`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal, get_args

GenerativeKind = Literal["svd", "vae", "cogvideox", "wan", "ltx"]

# The class that computes each generative stream ("module:Class", imported when a backbone is built).
GENERATIVE_ENCODERS: dict[str, str] = {
    "svd": "prismatic.models.backbones.vision.svd:SVDGenerativeEncoder",
    "vae": "prismatic.models.backbones.vision.vae_only:VAEOnlyBackbone",
    "cogvideox": "prismatic.models.backbones.vision.cogvideox:CogVideoXEncoder",
    "wan": "prismatic.models.backbones.vision.wan:WanEncoder",
    "ltx": "prismatic.models.backbones.vision.ltx:LTXVideoEncoder",
}
# The DiT video models (configured by `VideoEncoderConfig`, `--model.video_*`); SVD and the VAE ablation are not.
VIDEO_KINDS: tuple[str, ...] = tuple(kind for kind in GENERATIVE_ENCODERS if kind not in ("svd", "vae"))
# Each generative stream's pixel key is its kind; a sample may carry several frames under it.
GENERATIVE_PIXEL_KEYS: frozenset[str] = frozenset(get_args(GenerativeKind))


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
    # The video-model zoo: alone, and beside every static encoder of the dual-stream backbones (real and tiny).
    **{kind: VisionBackboneSpec(None, kind) for kind in VIDEO_KINDS},  # type: ignore[arg-type]
    **{f"{k.removesuffix('+svd')}+{kind}": VisionBackboneSpec(v, kind)  # type: ignore[arg-type]
       for k, v in _DUAL.items() for kind in VIDEO_KINDS},
    **{f"tiny-{kind}": VisionBackboneSpec(None, kind, tiny=True) for kind in VIDEO_KINDS},  # type: ignore[arg-type]
    **{f"{k}+{kind}": VisionBackboneSpec(v, kind, tiny=True)  # type: ignore[arg-type]
       for k, v in _TINY_STATIC.items() for kind in VIDEO_KINDS},
}  # fmt: skip

# The spellings used by the authors' code and README resolve to the ids above.
VISION_BACKBONE_ALIASES: dict[str, str] = {
    "svd-only": "svd",
    "dyva-svd": "svd",
    "dyva_siglip": "siglip+svd",
    "dyva_clip": "clip+svd",
    "dyva_dino": "dinov2+svd",
    "dyva_dinosiglip": "dinosiglip+svd",
    # The authors' dev branch: CogVideoX-1.5 beside a ViT, and alone.
    "dyva_dit_siglip": "siglip+cogvideox",
    "dyva_dit_dino": "dinov2+cogvideox",
    "dyva_dit_clip": "clip+cogvideox",
    "dyva_cogvideox": "cogvideox",
}


def generative_encoder_class(kind: str) -> Any:
    """The encoder class of a generative kind (imported now: diffusers is only loaded when a backbone is built)."""
    if kind not in GENERATIVE_ENCODERS:
        raise ValueError(f"Unknown generative encoder {kind!r}; registered: {', '.join(GENERATIVE_ENCODERS)}.")
    module_name, class_name = GENERATIVE_ENCODERS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def resolve_vision_backbone_id(vision_backbone_id: str) -> str:
    resolved = VISION_BACKBONE_ALIASES.get(vision_backbone_id, vision_backbone_id)
    if resolved not in VISION_BACKBONES:
        valid = sorted([*VISION_BACKBONES, *VISION_BACKBONE_ALIASES])
        raise ValueError(f"Unknown vision_backbone_id {vision_backbone_id!r}; valid ids are: {', '.join(valid)}.")
    return resolved
