"""Where visual tokens go in the LLM input: right after the first real token of each prompt (docs/model.md).

For Llama that first token is BOS; for Qwen chat it is `<|im_start|>`. Visual positions get attention 1 and label -100.
Rows without an image (text-only samples in a mixed batch) keep their order and get `num_visual` padding positions
(attention 0, label -100) instead, at the end for right-padded training batches or at the front for left-padded
generation batches, so every row has the same length and left-padded rows still end together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from prismatic.util.constants import IGNORE_INDEX

PaddingSide = Literal["right", "left"]
PADDING_SIDES: tuple[str, ...] = get_args(PaddingSide)


def pad_rows(rows: Sequence[Sequence[int] | torch.Tensor], value: int, side: PaddingSide) -> torch.Tensor:
    """Token rows of different lengths as one [B, longest] long tensor, padded with `value` on `side` (training
    batches pad on the right; generation pads on the left so every row's next token is in the last column)."""
    length = max(len(row) for row in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = torch.as_tensor(row, dtype=torch.long)
        if side == "right":
            out[i, : len(row)] = row
        else:
            out[i, length - len(row) :] = row
    return out


@dataclass
class SplicedInputs:
    inputs_embeds: torch.Tensor  # [B, L + Nv, d]
    attention_mask: torch.Tensor  # [B, L + Nv] long
    position_ids: torch.Tensor  # [B, L + Nv]
    labels: torch.Tensor | None  # [B, L + Nv] or None


def first_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first attended token of each row (0 for right padding; the BOS after left padding)."""
    return attention_mask.to(torch.long).argmax(dim=1)


def splice_visual_tokens(
    text_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual_embeds: torch.Tensor | None,
    has_image: torch.Tensor,
    labels: torch.Tensor | None = None,
    padding_side: PaddingSide = "right",
) -> SplicedInputs:
    """Insert `visual_embeds` ([n_image_rows, Nv, d], rows in batch order) after token 0 of each image row."""
    batch, length, dim = text_embeds.shape
    num_visual = 0 if visual_embeds is None else visual_embeds.shape[1]
    if visual_embeds is not None and visual_embeds.shape[0] != int(has_image.sum()):
        raise ValueError(
            f"Got visual tokens for {visual_embeds.shape[0]} rows but has_image marks {int(has_image.sum())} image rows."
        )
    device = text_embeds.device
    total = length + num_visual
    cols = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)

    # Target column of every text token: image rows shift tokens after the first real one by Nv; text-only rows shift
    # everything by Nv when left-padded (pads in front) and nothing when right-padded (pads at the end).
    anchor = first_real_token(attention_mask).unsqueeze(1)
    image_shift = (cols > anchor).long() * num_visual
    text_shift = torch.full_like(cols, num_visual if padding_side == "left" else 0)
    target = cols + torch.where(has_image.unsqueeze(1), image_shift, text_shift)

    embeds = text_embeds.new_zeros(batch, total, dim)
    embeds.scatter_(1, target.unsqueeze(-1).expand(-1, -1, dim), text_embeds)
    mask = attention_mask.new_zeros(batch, total)
    mask.scatter_(1, target, attention_mask)
    out_labels = None
    if labels is not None:
        out_labels = labels.new_full((batch, total), IGNORE_INDEX)
        out_labels.scatter_(1, target, labels)

    if visual_embeds is not None and num_visual > 0:
        rows = has_image.nonzero(as_tuple=True)[0]
        vis_cols = anchor[rows] + 1 + torch.arange(num_visual, device=device).unsqueeze(0)
        embeds[rows.unsqueeze(1), vis_cols] = visual_embeds.to(embeds.dtype)
        mask[rows.unsqueeze(1), vis_cols] = 1

    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return SplicedInputs(embeds, mask, position_ids, out_labels)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts: labels[:, 1:], with IGNORE_INDEX after the last position ([B, L])."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
