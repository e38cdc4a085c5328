"""Static vision encoders (SigLIP, CLIP, DINOv2 and DINO+SigLIP) built from timm ViTs.

Each encoder is described by a `TimmEncoderSpec` (timm model name with its pretrained tag pinned, input size, pixel
key, small architecture overrides for the tiny test twins) and registered in `STATIC_ENCODERS`.

Features follow prismatic / the released DyVA: the patch tokens of the *second-to-last* transformer block, without the
final norm and without prefix tokens (CLS, registers). Unlike the released code we never run the last block: after the
full checkpoint is loaded, the model is truncated (last block, final norm, pooling and head removed), so every
remaining parameter is on the gradient path of the features (DDP and DCP optimizer loading fail on parameters that
never get a gradient).

Weights come from the Hugging Face hub (timm's default source) or from a local directory in the layout that timm's
own `timm.models.save_for_hf(model, dir, safe_serialization=True)` writes (`config.json` + `model.safetensors`),
loaded through timm's `local-dir:` model source (a snapshot of a timm hub repo such as
`timm/vit_so400m_patch14_siglip_224.webli` has that layout too). The encoder's normalisation always comes from its spec
(timm's pretrained config of the pinned tag), not from the directory. Tiny ids are randomly initialised (seeded) unless
given a directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import timm.models
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from prismatic.models.backbones.vision.base_vision import (
    ImageResizeStrategy,
    PixelValues,
    StreamSpec,
    VisionBackbone,
    check_resize_strategy,
)
from prismatic.models.backbones.vision.transforms import PixelConfig, PixelDictTransform, build_resize_transform

VIT_STREAM = "vit"


@dataclass(frozen=True)
class TimmEncoderSpec:
    """How to build one static encoder with timm."""

    timm_name: str  # registry name WITH its pretrained tag, e.g. "vit_so400m_patch14_siglip_224.webli"
    image_size: int  # square input size S the encoder runs at (and its position embedding is resampled to)
    pixel_key: str  # key of this encoder's tensor in the pixel-values dict
    # OpenAI CLIP weights were trained with QuickGELU; timm's CLIP entries default to exact GELU, so ask for it.
    quick_gelu: bool = False
    # Extra timm model kwargs (embed_dim, depth, num_heads, patch_size, mlp_ratio, ...): the tiny twins' small sizes.
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    random_init: bool = False  # True for the tiny twins: no hub weights exist, build seeded random weights
    seed: int = 0  # seed of the random init (tiny ids, or load_weights=False)

    @property
    def architecture(self) -> str:
        """The timm architecture name, without the pretrained tag."""
        return timm.models.split_model_name_tag(self.timm_name)[0]

    @property
    def pixel_config(self) -> PixelConfig:
        """Normalisation and resampling from timm's pretrained config of these weights; size from the spec."""
        cfg = timm.models.get_pretrained_cfg(self.timm_name)
        if cfg is None:
            raise ValueError(f"timm {timm.__version__} has no pretrained config {self.timm_name!r}; upgrade timm.")
        return PixelConfig(
            image_size=self.image_size,
            mean=tuple(cfg.mean),  # type: ignore[arg-type]
            std=tuple(cfg.std),  # type: ignore[arg-type]
            interpolation=cfg.interpolation,
            crop_pct=cfg.crop_pct,
        )

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `timm.create_model`: headless, at our image size, with the spec's overrides."""
        kwargs: dict[str, Any] = {"num_classes": 0, "img_size": self.image_size}
        if self.quick_gelu:
            kwargs["act_layer"] = "quick_gelu"
        kwargs.update(self.overrides)
        return kwargs


# Tiny twins: same timm architectures (so the same code paths, prefix tokens and norms), 64 px / patch 16 = 16 tokens.
_TINY = {"patch_size": 16, "embed_dim": 64, "depth": 3, "num_heads": 4}

STATIC_ENCODERS: dict[str, TimmEncoderSpec] = {
    # SigLIP-1: current timm resolves the bare name to SigLIP-2 (.v2_webli), so the tag is pinned.
    "siglip-vit-so400m": TimmEncoderSpec("vit_so400m_patch14_siglip_224.webli", 224, "siglip"),
    "siglip-vit-so400m-384px": TimmEncoderSpec("vit_so400m_patch14_siglip_384.webli", 384, "siglip"),
    # The released dyva_clip forgot QuickGELU for .openai weights (bug #13); we apply it, as prismatic does.
    "clip-vit-l": TimmEncoderSpec("vit_large_patch14_clip_224.openai", 224, "clip", quick_gelu=True),
    "clip-vit-l-336px": TimmEncoderSpec("vit_large_patch14_clip_336.openai", 336, "clip", quick_gelu=True),
    # DINOv2 is trained at 518 px; timm resamples its position embedding to 224 on load (as prismatic does).
    "dinov2-vit-l": TimmEncoderSpec("vit_large_patch14_reg4_dinov2.lvd142m", 224, "dino"),
    "tiny-siglip": TimmEncoderSpec(
        "vit_so400m_patch14_siglip_224.webli", 64, "siglip", overrides=dict(_TINY), random_init=True
    ),
    "tiny-clip": TimmEncoderSpec(
        "vit_large_patch14_clip_224.openai", 64, "clip", quick_gelu=True, overrides=dict(_TINY), random_init=True
    ),
    # init_values=1.0: keeps DINOv2's LayerScale parameters but lets random blocks matter (timm's 1e-5 would make
    # every tiny block an identity, and block-selection bugs invisible).
    "tiny-dinov2": TimmEncoderSpec(
        "vit_large_patch14_reg4_dinov2.lvd142m", 64, "dino", overrides={**_TINY, "init_values": 1.0}, random_init=True
    ),
}

# DINO+SigLIP (prismatic's "dinosiglip"): (DINOv2 id, SigLIP id) in STATIC_ENCODERS, features concatenated on channels.
DINOSIGLIP_ENCODERS: dict[str, tuple[str, str]] = {
    "dinosiglip-vit-so-224px": ("dinov2-vit-l", "siglip-vit-so400m"),
    "tiny-dinosiglip": ("tiny-dinov2", "tiny-siglip"),
}


def get_encoder_spec(vision_backbone_id: str) -> TimmEncoderSpec:
    if vision_backbone_id not in STATIC_ENCODERS:
        hint = " (a DINO+SigLIP id: use build_dinosiglip_backbone)" if vision_backbone_id in DINOSIGLIP_ENCODERS else ""
        raise ValueError(
            f"Unknown timm vision backbone id {vision_backbone_id!r}{hint}; valid ids are {sorted(STATIC_ENCODERS)}."
        )
    return STATIC_ENCODERS[vision_backbone_id]


def _check_local_dir(spec: TimmEncoderSpec, pretrained_path: str | Path) -> Path:
    """Fail early, with a useful message, on a directory that timm's `local-dir:` source would not read correctly."""
    path = Path(pretrained_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} has no config.json. Expected a directory written by timm.models.save_for_hf(model, dir, "
            "safe_serialization=True) (config.json + model.safetensors)."
        )
    architecture = json.loads(config_file.read_text()).get("architecture")
    if architecture != spec.architecture:
        raise ValueError(
            f"{path} holds a {architecture!r} checkpoint, but this encoder is a {spec.architecture!r}; "
            "pass the directory saved from the matching model."
        )
    return path


def create_timm_model(
    spec: TimmEncoderSpec, pretrained_path: str | Path | None = None, load_weights: bool = True
) -> VisionTransformer:
    """The FULL (untruncated, headless) timm ViT of a spec: the object timm's checkpoints and `save_for_hf` describe.

    - load_weights and pretrained_path: weights from that local directory (timm `local-dir:` source);
    - load_weights and a hub spec: weights from the hub (or its local cache);
    - otherwise (tiny twins, or load_weights=False, e.g. under `torch.device("meta")`): seeded random init.
    The architecture always comes from the spec, so a directory only supplies weights and pixel-independent metadata.
    """
    kwargs = spec.model_kwargs()
    if load_weights and pretrained_path is not None:
        path = _check_local_dir(spec, pretrained_path)
        return timm.create_model(f"local-dir:{path.resolve()}", pretrained=True, **kwargs)
    if load_weights and not spec.random_init:
        try:
            return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
        except OSError as error:  # huggingface_hub raises OSError subclasses when offline / not cached
            raise RuntimeError(
                f"Could not fetch timm weights {spec.timm_name!r} from the Hugging Face hub. Download them once "
                "(or save them with timm.models.save_for_hf) and pass `pretrained_path=<that directory>`."
            ) from error
    # Random init: seed it for reproducibility without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)


def drop_last_block(model: VisionTransformer) -> VisionTransformer:
    """Keep blocks [0, depth-2]; remove the last block, final norm, fc_norm, attention pool and head (in place)."""
    if len(model.blocks) != len(model.feature_info):
        raise ValueError(
            f"Expected a full timm ViT ({len(model.feature_info)} blocks), got one with {len(model.blocks)}: "
            "pass the untruncated model, the backbone removes the last block itself."
        )
    if len(model.blocks) < 2:
        raise ValueError("A ViT needs at least 2 blocks to take features from its second-to-last block.")
    model.prune_intermediate_layers(indices=[len(model.blocks) - 2], prune_norm=True, prune_head=True)
    return model


class TimmViTBackbone(VisionBackbone):
    """One static timm ViT: pixels -> {"vit": [B, N_patches, C]} from the second-to-last block."""

    def __init__(
        self,
        vision_backbone_id: str,
        spec: TimmEncoderSpec,
        image_resize_strategy: ImageResizeStrategy,
        model: VisionTransformer,
    ) -> None:
        """`model` is the full timm model (e.g. from `create_timm_model`); it is truncated here, in place."""
        super().__init__(vision_backbone_id)
        self.spec = spec
        self.image_resize_strategy = check_resize_strategy(image_resize_strategy)
        self.featurizer = drop_last_block(model)
        self._transform = PixelDictTransform(
            {spec.pixel_key: build_resize_transform(self.image_resize_strategy, spec.pixel_config)}
        )

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        grid_h, grid_w = self.featurizer.patch_embed.grid_size
        return (StreamSpec(VIT_STREAM, self.featurizer.embed_dim, grid_h * grid_w),)

    def get_image_transform(self) -> PixelDictTransform:
        return self._transform

    def cache_description(self) -> dict[str, Any]:
        return {"kind": "timm-vit", "spec": asdict(self.spec), "pixel_config": asdict(self.spec.pixel_config),
                "image_resize_strategy": self.image_resize_strategy}  # fmt: skip

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        return tuple({type(block) for block in self.featurizer.blocks})

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        key = self.spec.pixel_key
        if key not in pixel_values:
            raise KeyError(
                f"{self.identifier} reads pixel_values[{key!r}], but the batch only has {sorted(pixel_values)}; "
                "build pixel values with this backbone's get_image_transform()."
            )
        return {VIT_STREAM: self.patch_features(pixel_values[key])}

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, N_patches, C] tokens of the second-to-last block (prefix stripped)."""
        weight = self.featurizer.patch_embed.proj.weight
        if images.dtype != weight.dtype and weight.dtype.is_floating_point:
            images = images.to(weight.dtype)  # e.g. fp32 pixels into a model cast to bf16 with .to(dtype)
        # After truncation the remaining last block IS the second-to-last one, and the final norm is an Identity.
        tokens = self.featurizer.forward_features(images)
        return tokens[:, self.featurizer.num_prefix_tokens :]


def build_timm_backbone(
    vision_backbone_id: str,
    image_resize_strategy: ImageResizeStrategy,
    pretrained_path: str | Path | None = None,
    load_weights: bool = True,
) -> TimmViTBackbone:
    """Build a registered static encoder (see `STATIC_ENCODERS`); `pretrained_path` = a `save_for_hf` directory."""
    spec = get_encoder_spec(vision_backbone_id)
    check_resize_strategy(image_resize_strategy)
    model = create_timm_model(spec, pretrained_path=pretrained_path, load_weights=load_weights)
    return TimmViTBackbone(vision_backbone_id, spec, image_resize_strategy, model)


class DinoSigLIPBackbone(VisionBackbone):
    """DINOv2 + SigLIP, each on its own normalised pixels, patch tokens concatenated on channels (DINO first).

    Pixel keys come from the two specs ("dino", "siglip"); the single output stream "vit" is
    [B, N, C_dino + C_siglip] (256 x 2176 for the real pair).
    """

    def __init__(self, vision_backbone_id: str, dino: TimmViTBackbone, siglip: TimmViTBackbone) -> None:
        super().__init__(vision_backbone_id)
        (dino_stream,), (siglip_stream,) = dino.streams, siglip.streams
        if dino_stream.num_tokens != siglip_stream.num_tokens:
            raise ValueError(
                f"DINO gives {dino_stream.num_tokens} patch tokens but SigLIP gives {siglip_stream.num_tokens}; "
                "run both at image sizes with the same patch grid."
            )
        if dino.spec.pixel_key == siglip.spec.pixel_key:
            raise ValueError(f"Both encoders read pixel key {dino.spec.pixel_key!r}; give them distinct keys.")
        self.dino, self.siglip = dino, siglip
        self._transform = PixelDictTransform(
            {**dino.get_image_transform().transforms, **siglip.get_image_transform().transforms}
        )

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        (dino_stream,), (siglip_stream,) = self.dino.streams, self.siglip.streams
        width = dino_stream.embed_dim + siglip_stream.embed_dim
        return (StreamSpec(VIT_STREAM, width, dino_stream.num_tokens),)

    def get_image_transform(self) -> PixelDictTransform:
        return self._transform

    def cache_description(self) -> dict[str, Any]:
        return {"kind": "dinosiglip", "dino": self.dino.cache_description(), "siglip": self.siglip.cache_description()}

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        return tuple(set(self.dino.fsdp_wrap_modules) | set(self.siglip.fsdp_wrap_modules))

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        dino_tokens = self.dino(pixel_values)[VIT_STREAM]
        siglip_tokens = self.siglip(pixel_values)[VIT_STREAM]
        return {VIT_STREAM: torch.cat([dino_tokens, siglip_tokens], dim=-1)}


def build_dinosiglip_backbone(
    vision_backbone_id: str,
    image_resize_strategy: ImageResizeStrategy,
    pretrained_path: str | Path | None = None,
    load_weights: bool = True,
) -> DinoSigLIPBackbone:
    """Build a DINO+SigLIP backbone; `pretrained_path` = a directory with `dino/` and `siglip/` save_for_hf subdirs."""
    if vision_backbone_id not in DINOSIGLIP_ENCODERS:
        raise ValueError(
            f"Unknown DINO+SigLIP backbone id {vision_backbone_id!r}; valid ids are {sorted(DINOSIGLIP_ENCODERS)}."
        )
    dino_id, siglip_id = DINOSIGLIP_ENCODERS[vision_backbone_id]
    root = Path(pretrained_path) if pretrained_path is not None else None
    dino = build_timm_backbone(dino_id, image_resize_strategy, root / "dino" if root else None, load_weights)
    siglip = build_timm_backbone(siglip_id, image_resize_strategy, root / "siglip" if root else None, load_weights)
    return DinoSigLIPBackbone(vision_backbone_id, dino, siglip)


STATIC_BACKBONE_IDS: tuple[str, ...] = (*STATIC_ENCODERS, *DINOSIGLIP_ENCODERS)


def build_static_backbone(
    vision_backbone_id: str,
    image_resize_strategy: ImageResizeStrategy,
    pretrained_path: str | Path | None = None,
    load_weights: bool = True,
) -> TimmViTBackbone | DinoSigLIPBackbone:
    """Dispatch any static id (`STATIC_BACKBONE_IDS`) to its builder."""
    if vision_backbone_id in DINOSIGLIP_ENCODERS:
        return build_dinosiglip_backbone(vision_backbone_id, image_resize_strategy, pretrained_path, load_weights)
    if vision_backbone_id in STATIC_ENCODERS:
        return build_timm_backbone(vision_backbone_id, image_resize_strategy, pretrained_path, load_weights)
    raise ValueError(
        f"Unknown static vision backbone id {vision_backbone_id!r}; valid ids are {list(STATIC_BACKBONE_IDS)}."
    )
