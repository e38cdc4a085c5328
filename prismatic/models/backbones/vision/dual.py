"""Dual-stream backbones (DyVA and its ablations): a static encoder and a generative encoder side by side.

The static stream comes first, as the released dual projector expects. Each member keeps its own transform; a sample's
pixel dict is the union of both (e.g. `{"siglip": [3,224,224], "svd": uint8 [K,3,448,448]}`), so the static encoder
sees image 1 and the generative encoder sees all K frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prismatic.models.backbones.vision.base_vision import (
    Images,
    ImageTransform,
    PixelValues,
    StreamSpec,
    VisionBackbone,
)


class MergedTransform:
    """Apply each member's transform to the same image(s) and merge the pixel dicts."""

    def __init__(self, transforms: list[ImageTransform]) -> None:
        self.transforms = transforms

    def __call__(self, images: Images) -> PixelValues:
        merged: PixelValues = {}
        for transform in self.transforms:
            merged.update(transform(images))
        return merged


class DualStreamBackbone(VisionBackbone):
    """A static member and a generative member; the feature cache describes (and keys) each member on its own."""

    def __init__(self, vision_backbone_id: str, static: VisionBackbone, generative: VisionBackbone) -> None:
        super().__init__(vision_backbone_id)
        overlap = {s.name for s in static.streams} & {s.name for s in generative.streams}
        if overlap:
            raise ValueError(f"Both members of {vision_backbone_id!r} emit stream(s) {sorted(overlap)}.")
        self.static = static
        self.generative = generative

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return self.static.streams + self.generative.streams

    def get_image_transform(self) -> ImageTransform:
        return MergedTransform([self.static.get_image_transform(), self.generative.get_image_transform()])

    def stream_encoders(self) -> dict[str, VisionBackbone]:
        # Each stream's own member, so a cached stream never runs (or fingerprints) the other encoder.
        return {**self.static.stream_encoders(), **self.generative.stream_encoders()}

    @property
    def max_keyframes(self) -> int | None:
        return self.generative.max_keyframes

    def generative_parts(self) -> dict[str, nn.Module]:
        return self.generative.generative_parts()

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        return self.static.fsdp_wrap_modules + self.generative.fsdp_wrap_modules

    @property
    def trainable_module_names(self) -> tuple[str, ...]:
        return tuple(f"{member}.{name}" for member in ("static", "generative")
                     for name in getattr(self, member).trainable_module_names)  # fmt: skip

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        return {**self.static(pixel_values), **self.generative(pixel_values)}
