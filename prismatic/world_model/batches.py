"""The world model's deterministic data order and per-slot random streams, independent of how ranks split the work.

A global batch of G clips is cut into S = G / P "slots" of P clips (P = per-device batch size); rank r runs slots
r * A ... r * A + A - 1 as its A = S / world_size micro-batches (gradient accumulation). Epoch e visits the train
clips in a permutation drawn from a CPU generator seeded with (seed, e) (DistributedSampler's rule; the tail that
does not fill a global batch is dropped), and global batch b of the epoch is positions [b * G, (b + 1) * G).

Each slot owns a `torch.Generator` seeded from (seed, slot) that draws that micro-batch's noise (sigmas, dropout,
augmentation, posterior and diffusion noise). With one micro-batch per rank the slot is the rank, i.e. a per-rank
generator seeded from (seed, rank). Because the streams belong to slots, not to processes, 1 process x 2 micro-batches
and 2 processes x 1 micro-batch see the same clips with the same noise in every step, so their losses agree up to
floating-point reduction order. The generators' states are checkpointed (per rank), so a resumed run is bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from prismatic.util.distributed import DistributedContext
from prismatic.world_model.clips import ClipDataset

# Slot seeds are seed * SEED_STRIDE + slot, so runs with different seeds never share a slot's stream.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split: slots of `per_device` clips, `accumulation` of them per rank."""

    global_batch_size: int
    per_device_batch_size: int
    world_size: int

    def __post_init__(self) -> None:
        per_step = self.per_device_batch_size * self.world_size
        if self.per_device_batch_size < 1 or self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a positive multiple of per_device_batch_size="
                f"{self.per_device_batch_size} x world_size={self.world_size}; change one of them."
            )

    @property
    def accumulation(self) -> int:
        return self.global_batch_size // (self.per_device_batch_size * self.world_size)

    def slots(self, rank: int) -> list[int]:
        return [rank * self.accumulation + m for m in range(self.accumulation)]


def epoch_order(num_clips: int, seed: int, epoch: int) -> list[int]:
    """The permutation of clip indices that epoch `epoch` visits (the same on every rank)."""
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return torch.randperm(num_clips, generator=generator).tolist()


def steps_per_epoch(num_clips: int, global_batch_size: int) -> int:
    steps = num_clips // global_batch_size
    if steps == 0:
        raise ValueError(
            f"{num_clips} training clips cannot fill one global batch of {global_batch_size}; lower "
            "--global_batch_size or add clips."
        )
    return steps


class SlotBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches (lists of clip indices), step after step from `start_step`, for `num_steps` steps."""

    def __init__(self, num_clips: int, layout: BatchLayout, rank: int, seed: int, start_step: int,
                 num_steps: int) -> None:  # fmt: skip
        self.num_clips, self.layout, self.rank, self.seed = num_clips, layout, rank, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.steps_per_epoch = steps_per_epoch(num_clips, layout.global_batch_size)

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step) * self.layout.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        size = self.layout.per_device_batch_size
        order, order_epoch = [], -1
        for step in range(self.start_step, self.num_steps):
            epoch, batch = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(self.num_clips, self.seed, epoch), epoch
            start = batch * self.layout.global_batch_size
            for slot in self.layout.slots(self.rank):
                yield order[start + slot * size : start + (slot + 1) * size]


def slot_generators(layout: BatchLayout, ctx: DistributedContext, seed: int) -> list[torch.Generator]:
    """One generator per micro-batch slot of this rank, on its device, seeded from (seed, slot)."""
    return [torch.Generator(device=ctx.device).manual_seed(seed * SEED_STRIDE + slot) for slot in layout.slots(ctx.rank)]


class ClipsWithFps(Dataset[dict[str, Any]]):
    """A `ClipDataset`'s items plus each clip's sampled frame rate (`default_fps` where the manifest has none)."""

    def __init__(self, clips: ClipDataset, default_fps: float) -> None:
        self.clips, self.default_fps = clips, default_fps

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        fps = self.clips.sampled_fps(index)
        return {**self.clips[index], "fps": self.default_fps if fps is None else fps}


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """frames uint8 [B, T, 3, S, S], fps float32 [B], ids."""
    return {
        "frames": torch.stack([item["frames"] for item in items]),
        "fps": torch.tensor([float(item["fps"]) for item in items], dtype=torch.float32),
        "ids": [item["id"] for item in items],
    }
