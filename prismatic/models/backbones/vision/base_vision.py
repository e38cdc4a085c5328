"""The contract every vision backbone meets, and the image transforms they share.

A backbone turns a dict of pixel tensors into a dict of *token streams*. Static encoders (SigLIP, CLIP, DINOv2) give one
stream, `"vit"`; the generative encoder gives `"svd"` (or `"vae"`); dual-stream backbones (DyVA) give both. `streams`
lists them in the order the projector consumes them (static first), so the projector never guesses.

Per sample, a backbone's transform maps one PIL image, or a list of K images (frames), to a dict of tensors. Static
encoders only look at the first image. The SVD stream keeps all K as a uint8 tensor [K, 3, H, W]; `collate_pixel_values`
pads K across a batch and records each sample's count under `"<key>_count"`.

A pixel dict may also carry precomputed encoder outputs under `"features:<stream>"` (per sample [N, C], attached from the
frozen-feature cache); the VLM then skips that stream's encoder for those rows. Rows of a batch that lack them are
zero-filled and listed by a `"features:<stream>:hit"` bool mask, so the encoder runs on the missing rows only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn as nn
from PIL import Image

from prismatic.models.backbones.vision.registry import GENERATIVE_PIXEL_KEYS

ImageResizeStrategy = Literal["resize-naive", "resize-crop", "letterbox"]
IMAGE_RESIZE_STRATEGIES: tuple[str, ...] = get_args(ImageResizeStrategy)

Images = Image.Image | Sequence[Image.Image]
PixelValues = dict[str, torch.Tensor]
ImageTransform = Callable[[Images], PixelValues]


@dataclass(frozen=True)
class StreamSpec:
    """One token stream a backbone emits: its name, width and number of tokens per sample."""

    name: str
    embed_dim: int
    num_tokens: int


def as_image_list(images: Images) -> list[Image.Image]:
    """Accept one image or a non-empty sequence of images; check every one is an RGB PIL image."""
    image_list = [images] if isinstance(images, Image.Image) else list(images)
    if not image_list:
        raise ValueError("Got an empty list of images; pass one PIL image or a list of at least one.")
    for i, image in enumerate(image_list):
        if not isinstance(image, Image.Image):
            raise TypeError(f"Image {i} is a {type(image).__name__}, expected a PIL.Image.Image (use Image.open(...)).")
        if image.mode != "RGB":
            raise ValueError(f"Image {i} has mode {image.mode!r}; convert it first with `image.convert('RGB')`.")
    return image_list


def check_resize_strategy(image_resize_strategy: str) -> ImageResizeStrategy:
    if image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
        raise ValueError(
            f"Unknown image_resize_strategy {image_resize_strategy!r}; valid values are {list(IMAGE_RESIZE_STRATEGIES)}."
        )
    return image_resize_strategy  # type: ignore[return-value]


class VisionBackbone(nn.Module, ABC):
    """Base class: `forward(pixel_values) -> {stream name: [B, N, C]}` with streams in projector order."""

    def __init__(self, vision_backbone_id: str) -> None:
        super().__init__()
        self.identifier = vision_backbone_id

    @property
    @abstractmethod
    def streams(self) -> tuple[StreamSpec, ...]:
        """The token streams this backbone emits, in the order the projector consumes them."""

    @abstractmethod
    def get_image_transform(self) -> ImageTransform:
        """The per-sample transform: PIL image(s) -> dict of tensors that `forward` accepts after collation."""

    @abstractmethod
    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        """Encode a collated batch; returns one [B, N_stream, C_stream] tensor per stream."""

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        """Module classes FSDP should shard as their own unit (e.g. ViT blocks); empty = shard as one unit."""
        return ()

    @property
    def trainable_module_names(self) -> tuple[str, ...]:
        """Submodules that train even when the backbone is frozen (e.g. the VAE-only ablation's conv stem)."""
        return ()

    @property
    def max_keyframes(self) -> int | None:
        """How many images one sample may carry: the generative encoder's frame slots, None when there is no such
        limit (a static encoder looks at image 1 and ignores the rest)."""
        return None

    def generative_parts(self) -> dict[str, nn.Module]:
        """The generative encoder's parts that a stage may unfreeze, by name ("unet", "vae" where they exist): the
        keys of `Stage.generative_parts`. Empty for static-only backbones."""
        return {}

    def cache_description(self) -> dict[str, Any]:
        """The configuration that, with the weights, determines this encoder's output: the feature cache hashes it into
        the fingerprint that names the encoder's cache directory. Hub ids and local paths stay out (the same weights
        loaded either way share one cache). Changing what an encoder returns here renames its cache directories, so
        every existing cache of it misses. This default (the class) suits encoders whose weights are their whole
        configuration."""
        return {"kind": f"{type(self).__module__}.{type(self).__qualname__}"}

    @property
    def num_visual_tokens(self) -> int:
        return sum(s.num_tokens for s in self.streams)

    def stream_encoders(self) -> dict[str, VisionBackbone]:
        """The module that computes each stream (itself here; dual backbones name their members), so a stream can be
        encoded, fingerprinted or cached on its own."""
        return {s.name: self for s in self.streams}

    def forward_streams(self, pixel_values: PixelValues, streams: Sequence[str]) -> dict[str, torch.Tensor]:
        """Encode only `streams`, running only the members that produce them."""
        encoders = self.stream_encoders()
        unknown = [name for name in streams if name not in encoders]
        if unknown:
            raise KeyError(f"{self.identifier} has no stream(s) {unknown}; its streams are {list(encoders)}.")
        out: dict[str, torch.Tensor] = {}
        for member in {id(encoders[name]): encoders[name] for name in streams}.values():
            own = [name for name in streams if encoders[name] is member]
            features = member(pixel_values) if member is self else member.forward_streams(pixel_values, own)
            out.update({name: value for name, value in features.items() if name in own})
        return out


# Precomputed encoder outputs travel in the pixel dict under these keys (see the module docstring).
FEATURE_PREFIX = "features:"
_HIT_SUFFIX = ":hit"


def feature_key(stream: str) -> str:
    return f"{FEATURE_PREFIX}{stream}"


def feature_hit_key(stream: str) -> str:
    return f"{FEATURE_PREFIX}{stream}{_HIT_SUFFIX}"


def is_feature_key(key: str) -> bool:
    return key.startswith(FEATURE_PREFIX)


def _collate_features(samples: Sequence[PixelValues], batch: PixelValues) -> None:
    """Stack `features:<stream>` entries; rows without one get zeros and the batch gets a `:hit` mask."""
    keys = dict.fromkeys(k for s in samples for k in s if is_feature_key(k) and not k.endswith(_HIT_SUFFIX))
    for key in keys:
        rows = [s.get(key) for s in samples]
        template = next(row for row in rows if row is not None)
        batch[key] = torch.stack([row if row is not None else template.new_zeros(template.shape) for row in rows])
        if any(row is None for row in rows):
            batch[key + _HIT_SUFFIX] = torch.tensor([row is not None for row in rows], dtype=torch.bool)


def collate_pixel_values(samples: Sequence[PixelValues]) -> PixelValues:
    """Stack per-sample pixel dicts into a batch.

    Tensors whose first dim varies across samples (the K frames of the SVD stream) are zero-padded to the largest K,
    and each sample's true K is stored under `"<key>_count"` so padded frames are never used as keyframes.
    Cached features (`"features:<stream>"`) may be present in some rows only (see `_collate_features`).
    """
    if not samples:
        raise ValueError("Cannot collate an empty batch of pixel values.")
    batch: PixelValues = {}
    _collate_features(samples, batch)
    for key in (k for k in samples[0] if not is_feature_key(k)):
        tensors = [s[key] for s in samples]
        lengths = {t.shape[0] for t in tensors}
        if len(lengths) == 1 and not key_is_variable(key):
            batch[key] = torch.stack(tensors)
            continue
        k_max = max(lengths)
        padded = tensors[0].new_zeros((len(tensors), k_max, *tensors[0].shape[1:]))
        for i, t in enumerate(tensors):
            padded[i, : t.shape[0]] = t
        batch[key] = padded
        batch[f"{key}_count"] = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    return batch


# Pixel keys that hold a variable number of frames per sample (always collated with a `_count` companion): every
# generative encoder's.
VARIABLE_LENGTH_KEYS: frozenset[str] = GENERATIVE_PIXEL_KEYS


def key_is_variable(key: str) -> bool:
    return key in VARIABLE_LENGTH_KEYS
