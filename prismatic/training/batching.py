"""The loss of a step, and what training does to a collated batch before the model sees it.

The loss of an optimizer step is the sum of the token losses of the whole GLOBAL batch (every micro-batch on every
rank) divided by its number of label tokens, so gradient accumulation and data parallelism give exactly the update
of one big batch (a mean of per-micro-batch means would weight short answers more). Token losses are computed here,
outside the model, from its logits and the labels re-aligned to the spliced sequence, with the causal shift: the
logit at position i predicts the label at position i + 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prismatic.models.vlms.splice import IGNORE_INDEX, PaddingSide, next_token_targets, splice_visual_tokens

Batch = Mapping[str, Any]


@dataclass(frozen=True)
class BatchCounts:
    """What one rank's micro-batches of a step hold: label tokens (after the shift), LLM tokens, samples."""

    label_tokens: int
    tokens: int
    samples: int

    def as_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.label_tokens, self.tokens, self.samples], dtype=torch.float64, device=device)


def count_label_tokens(labels: torch.Tensor) -> int:
    """Targets that contribute to the loss: labels[:, 1:] (position 0 is never predicted) that are not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def count_batch(micro_batches: Sequence[Batch], num_visual_tokens: int) -> BatchCounts:
    """Counts of the real samples: the collator's masked filler row (`filler_rows`, one attended token and its visual
    tokens) is left out."""
    label_tokens = sum(count_label_tokens(b["labels"]) for b in micro_batches)
    tokens = sum(int(b["attention_mask"].sum()) + num_visual_tokens * int(b["has_image"].sum())
                 - b.get("filler_rows", 0) * (1 + num_visual_tokens) for b in micro_batches)  # fmt: skip
    samples = sum(int(b["input_ids"].shape[0]) - b.get("filler_rows", 0) for b in micro_batches)
    return BatchCounts(label_tokens, tokens, samples)


def spliced_labels(
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    has_image: torch.Tensor,
    num_visual: int,
    padding_side: PaddingSide = "right",
) -> torch.Tensor:
    """Labels aligned with the model's logits: the model's own splice applied to the labels alone (visual and
    padding positions get IGNORE_INDEX), so both always agree on where every label lands."""
    batch, length = labels.shape
    text = labels.new_zeros((batch, length, 1), dtype=torch.float32)
    visual = None
    if num_visual > 0 and bool(has_image.any()):
        visual = text.new_zeros((int(has_image.sum()), num_visual, 1))
    aligned = splice_visual_tokens(text, attention_mask, visual, has_image, labels, padding_side).labels
    if aligned is None:
        raise RuntimeError("splice_visual_tokens returned no labels although labels were given.")
    return aligned


def label_targets(labels: torch.Tensor) -> torch.Tensor:
    """The targets of `PrismaticVLM.forward(..., label_logits_only=True)`'s logits, in the same order: the labels each
    position predicts, where one is predicted."""
    targets = next_token_targets(labels)
    return targets[targets != IGNORE_INDEX]

