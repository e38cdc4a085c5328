"""Image transforms of the static (timm ViT) encoders, one per resize strategy.

Every encoder declares its pixel statistics (`PixelConfig`, taken from timm's pretrained config of its weights). From
that and an `ImageResizeStrategy` we build a PIL -> [3, S, S] float transform:

- `resize-naive`: resize straight to S x S (aspect ratio not kept) with the encoder's interpolation (bicubic). This is
  what the released DyVA and prismatic's SigLIP baselines use.
- `resize-crop`: timm's own evaluation transform (shorter side to S / crop_pct, then a centre crop to S).
- `letterbox`: pad the short side to a square with the encoder's mean colour (so padding normalises to ~0), then
  resize to S x S.

`PixelDictTransform` wraps one or more of these into the per-sample transform of the backbone contract: it takes one
PIL image or a list (frames) and, like every static encoder, looks at the first image only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import timm.data
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from prismatic.models.backbones.vision.base_vision import (
    ImageResizeStrategy,
    Images,
    PixelValues,
    as_image_list,
    check_resize_strategy,
)

PILToTensor = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class PixelConfig:
    """What an encoder expects of its pixels: square size, normalisation and resampling."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # a timm / torchvision interpolation name
    crop_pct: float = 1.0  # only used by `resize-crop` (timm's eval transform)

    @property
    def mean_colour(self) -> tuple[int, int, int]:
        """The mean as an 8-bit RGB colour: letterbox padding in this colour normalises to (almost) zero."""
        r, g, b = (round(255 * m) for m in self.mean)
        return (r, g, b)


def _interpolation_mode(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


class LetterboxPad:
    """Pad a PIL image to a square, centring it, with a constant fill colour (the short side gets the padding)."""

    def __init__(self, fill: tuple[int, int, int]) -> None:
        self.fill = fill

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        side = max(width, height)
        # Split odd differences so the result is exactly square (left/top get the smaller half).
        left, top = (side - width) // 2, (side - height) // 2
        right, bottom = side - width - left, side - height - top
        return TF.pad(image, [left, top, right, bottom], fill=self.fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fill={self.fill})"


def _resize_square_then_normalize(config: PixelConfig) -> list[Callable]:
    size = config.image_size
    return [
        T.Resize((size, size), interpolation=_interpolation_mode(config.interpolation)),
        T.ToTensor(),
        T.Normalize(mean=config.mean, std=config.std),
    ]


def build_resize_transform(strategy: ImageResizeStrategy, config: PixelConfig) -> PILToTensor:
    """One RGB PIL image -> normalised FloatTensor [3, S, S] for the given resize strategy."""
    strategy = check_resize_strategy(strategy)
    if strategy == "resize-naive":
        return T.Compose(_resize_square_then_normalize(config))
    if strategy == "resize-crop":
        return timm.data.create_transform(
            input_size=(3, config.image_size, config.image_size),
            is_training=False,
            interpolation=config.interpolation,
            mean=config.mean,
            std=config.std,
            crop_pct=config.crop_pct,
            crop_mode="center",
        )
    # letterbox: after padding the image is square, so the plain square resize keeps its aspect ratio.
    return T.Compose([LetterboxPad(config.mean_colour), *_resize_square_then_normalize(config)])


class PixelDictTransform:
    """Per-sample transform of a static backbone: image(s) -> {pixel key: [3, S, S]} built from the first image.

    A module-level class (not a closure) so that DataLoader workers can pickle it.
    """

    def __init__(self, transforms: Mapping[str, PILToTensor]) -> None:
        if not transforms:
            raise ValueError("PixelDictTransform needs at least one (pixel key -> transform) entry.")
        self.transforms = dict(transforms)

    def __call__(self, images: Images) -> PixelValues:
        # Static encoders see image 1 only (as in the released DyVA); the generative stream consumes the other frames.
        first = as_image_list(images)[0]
        return {key: transform(first) for key, transform in self.transforms.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"
