"""Batch collation: pad token sequences, build attention masks from lengths, stack the image rows' pixels.

The output is exactly what `PrismaticVLM.forward` takes: `input_ids`, `attention_mask`, `labels`, `pixel_values`
(the image rows only, in batch order, or None when no row has an image), `has_image` ([B] bool) and `padding_side`;
training collators add `filler_rows` (0 or 1, see below).

Training collators get `filler_pixel_values`: a micro-batch without any image row then gets one masked dummy image
row. Under data parallelism every rank must run the same parameters forward and backward (DDP requires it, and FSDP's
reduce-scatters must match across ranks), but a text-only micro-batch would skip the vision path. The dummy row has
labels IGNORE_INDEX everywhere, so it adds nothing to the loss and exactly zero to every gradient; its first token is
attended so no attention row is fully masked. Applied on one process too, so that a text-only step updates the same
parameters (with zero gradients) whatever the number of processes. `filler_rows` tells token and sample counts to
leave it out.

The attention mask comes from each row's length, never from comparing ids with the pad id: Qwen2.5's pad token
(<|endoftext|>) is also its EOS, which base-format answers end with and the model must learn to emit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from prismatic.models.backbones.vision.base_vision import ImageTransform, PixelValues, collate_pixel_values
from prismatic.models.vlms.splice import PADDING_SIDES, PaddingSide, pad_rows
from prismatic.util.constants import IGNORE_INDEX


def dummy_image() -> Image.Image:
    """The image of the masked filler row; the feature-cache builder caches its features too."""
    return Image.new("RGB", (32, 32))


def filler_pixel_values(
    image_transform: ImageTransform, attach_features: Callable[[PixelValues], PixelValues] | None = None
) -> PixelValues:
    """The collated pixels of the filler row; `attach_features` (e.g. `FeatureCache.attach`) lets it carry cached
    features, so it never runs the encoders."""
    sample = image_transform(dummy_image())
    return collate_pixel_values([attach_features(sample) if attach_features is not None else sample])


class PaddedCollator:
    """Collate dataset items (`input_ids`, `labels`, `pixel_values` dict or None) into a model-ready batch.

    `model_max_length`, when given, is a guard: a row longer than it means the dataset did not apply its budget,
    which is a bug, so it raises instead of silently cutting answers. `filler_pixel_values` (training): append the
    masked dummy image row to micro-batches without an image row (see the module docstring).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: PaddingSide = "right",
        model_max_length: int | None = None,
        filler_pixel_values: PixelValues | None = None,
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"Unknown padding_side={padding_side!r}; valid values are {list(PADDING_SIDES)}.")
        self.pad_token_id = int(pad_token_id)
        self.padding_side: PaddingSide = padding_side
        self.model_max_length = model_max_length
        self.filler_pixel_values = filler_pixel_values

    def __call__(self, instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not instances:
            raise ValueError("Cannot collate an empty list of samples.")
        input_ids = [torch.as_tensor(item["input_ids"], dtype=torch.long) for item in instances]
        labels = [torch.as_tensor(item["labels"], dtype=torch.long) for item in instances]
        lengths = torch.tensor([len(ids) for ids in input_ids], dtype=torch.long)
        for ids, lab in zip(input_ids, labels):
            if ids.ndim != 1 or ids.shape != lab.shape:
                raise ValueError(f"input_ids {tuple(ids.shape)} and labels {tuple(lab.shape)} must be equal 1-D shapes.")
        longest = int(lengths.max())
        if self.model_max_length is not None and longest > self.model_max_length:
            raise ValueError(
                f"A sample has {longest} tokens, more than model_max_length={self.model_max_length}; the dataset "
                "should have rejected or truncated it (see on_bad_sample / truncate_long_samples)."
            )

        positions = torch.arange(longest).unsqueeze(0)
        if self.padding_side == "right":
            attention_mask = (positions < lengths.unsqueeze(1)).long()
        else:
            attention_mask = (positions >= (longest - lengths).unsqueeze(1)).long()

        pixel_rows: list[PixelValues] = [item["pixel_values"] for item in instances if item["pixel_values"] is not None]
        has_image = torch.tensor([item["pixel_values"] is not None for item in instances], dtype=torch.bool)
        batch = {
            "input_ids": pad_rows(input_ids, self.pad_token_id, self.padding_side),
            "attention_mask": attention_mask,
            "labels": pad_rows(labels, IGNORE_INDEX, self.padding_side),
            "pixel_values": collate_pixel_values(pixel_rows) if pixel_rows else None,
            "has_image": has_image,
            "padding_side": self.padding_side,
        }
        if self.filler_pixel_values is not None:  # training batches: the trainer counts samples without the filler
            batch["filler_rows"] = 0
            if not pixel_rows:
                self._add_filler_row(batch)
        return batch

    def _add_filler_row(self, batch: dict[str, Any]) -> None:
        length = batch["input_ids"].shape[1]
        mask = torch.zeros((1, length), dtype=torch.long)
        mask[0, 0 if self.padding_side == "right" else length - 1] = 1
        batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, length), self.pad_token_id)])
        batch["attention_mask"] = torch.cat([batch["attention_mask"], mask])
        batch["labels"] = torch.cat([batch["labels"], torch.full((1, length), IGNORE_INDEX)])
        batch["has_image"] = torch.cat([batch["has_image"], torch.ones(1, dtype=torch.bool)])
        batch["pixel_values"] = dict(self.filler_pixel_values)  # type: ignore[arg-type]
        batch["filler_rows"] = 1

