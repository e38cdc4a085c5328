"""Batch collation: pad token sequences, build attention masks from lengths, stack the image rows' pixels.

The output is exactly what `PrismaticVLM.forward` takes: `input_ids`, `attention_mask`, `labels`, `pixel_values`
(the image rows only, in batch order, or None when no row has an image), `has_image` ([B] bool) and `padding_side`.

The attention mask comes from each row's length, never from comparing ids with the pad id: Qwen2.5's pad token
(<|endoftext|>) is also its EOS, which base-format answers end with and the model must learn to emit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from prismatic.models.backbones.llm.base_llm import IGNORE_INDEX
from prismatic.models.backbones.vision.base_vision import PixelValues, collate_pixel_values
from prismatic.models.vlms.splice import PaddingSide

PADDING_SIDES: tuple[str, ...] = ("right", "left")


def _pad(rows: Sequence[torch.Tensor], length: int, value: int, side: PaddingSide) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = row
        else:
            out[i, length - len(row) :] = row
    return out


class PaddedCollator:
    """Collate dataset items (`input_ids`, `labels`, `pixel_values` dict or None) into a model-ready batch.

    `model_max_length`, when given, is a guard: a row longer than it means the dataset did not apply its budget,
    which is a bug, so it raises instead of silently cutting answers.
    """

    def __init__(
        self, pad_token_id: int, padding_side: PaddingSide = "right", model_max_length: int | None = None
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"Unknown padding_side={padding_side!r}; valid values are {list(PADDING_SIDES)}.")
        self.pad_token_id = int(pad_token_id)
        self.padding_side: PaddingSide = padding_side
        self.model_max_length = model_max_length

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
        return {
            "input_ids": _pad(input_ids, longest, self.pad_token_id, self.padding_side),
            "attention_mask": attention_mask,
            "labels": _pad(labels, longest, IGNORE_INDEX, self.padding_side),
            "pixel_values": collate_pixel_values(pixel_rows) if pixel_rows else None,
            "has_image": has_image,
            "padding_side": self.padding_side,
        }


def batch_to_device(batch: Mapping[str, Any], device: torch.device | str, non_blocking: bool = False) -> dict[str, Any]:
    """Move every tensor of a collated batch (including the pixel dict) to `device`; other values pass through."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=non_blocking)
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        return value

    return {key: move(value) for key, value in batch.items()}
