"""A distributed, resumable sampler: each epoch's global order is fixed by (seed, epoch), split across ranks.

The epoch is built as a list of *global batches* (`global_batch_size` samples each, one optimizer step), which depends
only on the seed, the epoch and the batch size, never on the number of ranks. Rank r of W takes positions r, r+W, ...
of every global batch. Batches are modality-pure (all image rows or all text rows, as prismatic-vlms' split-modality
sampler), and each batch is sorted by length (longest first), so a rank's consecutive micro-batches hold similar
lengths and ranks get balanced work. The leftover rows of both modalities share the last batch(es). The batch holding
the longest sample goes first, so an out-of-memory shows up at step 1, not hours in.

The final global batch is filled by repeating its own samples, so every step has exactly `global_batch_size` samples
(every sample is seen at least once per epoch; exactly once when the dataset size is a multiple of the global batch).

Resume: the trainer reports consumption with `advance(num_samples)` after each step (the data loader prefetches, so the
sampler cannot know); `state_dict()` / `load_state_dict()` carry (epoch, consumed samples), and the next iteration
yields exactly the remaining order. Resuming on another number of ranks works at global-batch boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

# State entries that must match for a saved position to mean the same order. (Checkpoints of earlier versions also
# hold "grouping", "last_batch" and "mega_batch_multiplier", always at the values this order uses; they are ignored.)
_ORDER_KEYS = ("seed", "global_batch_size", "num_samples")


class DistributedResumableSampler(Sampler[int]):
    def __init__(
        self,
        modality_lengths: Sequence[tuple[bool, int]],
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        """`modality_lengths` is the dataset's `modality_lengths()`: (has_image, length) per sample."""
        if not modality_lengths:
            raise ValueError("Cannot sample from an empty dataset.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas}).")
        if global_batch_size < 1 or global_batch_size % num_replicas:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of the number of ranks "
                f"({num_replicas}), so every rank gets the same share of each step."
            )
        self.has_image = np.array([bool(m) for m, _ in modality_lengths], dtype=bool)
        self.lengths = np.array([int(n) for _, n in modality_lengths], dtype=np.int64)
        self.global_batch_size, self.num_replicas, self.rank = global_batch_size, num_replicas, rank
        self.seed = seed
        self.epoch = 0
        self.consumed_samples = 0

    # === Sizes ===
    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full + int(rest > 0)

    @property
    def samples_per_epoch(self) -> int:
        """Global samples per epoch, padding included (a multiple of the global batch)."""
        return self.steps_per_epoch * self.global_batch_size

    def __len__(self) -> int:
        """Indices this rank still yields in the current epoch (the full share unless resumed mid-epoch)."""
        return (self.samples_per_epoch - self.consumed_samples) // self.num_replicas

    # === The order ===
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch, in step order (identical on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        batches, leftover = self._grouped(rng)
        if len(leftover):
            batches.append(self._sorted(np.resize(leftover, self.global_batch_size)))  # cyclic padding to a full batch
        if len(batches) > 1:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            first = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches.insert(0, batches.pop(first))
        return batches

    def _chunk(self, order: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        g = self.global_batch_size
        full = len(order) // g * g
        return [order[i : i + g] for i in range(0, full, g)], order[full:]

    def _sorted(self, indices: np.ndarray) -> np.ndarray:
        # Longest first; ties broken by index so the order never depends on the sort algorithm.
        return indices[np.lexsort((indices, -self.lengths[indices]))]

    def _grouped(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Modality-pure batches, each sorted by length, and the leftover rows of both modalities."""
        batches: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        for modality in (True, False):
            full, rest = self._chunk(rng.permutation(np.flatnonzero(self.has_image == modality)))
            batches.extend(self._sorted(b) for b in full)
            leftovers.append(rest)
        leftover = np.concatenate(leftovers)
        mixed, rest = self._chunk(self._sorted(leftover))
        batches.extend(mixed)
        return batches, rest

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's full sequence for an epoch: positions rank, rank + W, ... of every global batch."""
        return np.concatenate([b[self.rank :: self.num_replicas] for b in self.epoch_batches(epoch)])

    def __iter__(self) -> Iterator[int]:
        start = self.consumed_samples // self.num_replicas
        yield from (int(i) for i in self.rank_indices(self.epoch)[start:])

    # === Progress and resume ===
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a new epoch starts from its beginning, the current one keeps its resumed position."""
        if epoch != self.epoch:
            self.epoch, self.consumed_samples = epoch, 0

    def advance(self, num_samples: int) -> None:
        """Record that `num_samples` more samples (summed over all ranks, e.g. one global batch) were trained on."""
        consumed = self.consumed_samples + num_samples
        if num_samples < 0 or consumed > self.samples_per_epoch or num_samples % self.num_replicas:
            raise ValueError(
                f"advance({num_samples}) must add a non-negative multiple of the number of ranks ({self.num_replicas})"
                f" without passing the epoch's {self.samples_per_epoch} samples (consumed so far: "
                f"{self.consumed_samples})."
            )
        self.consumed_samples = consumed

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed_samples": self.consumed_samples,
            "num_replicas": self.num_replicas,
            **{key: getattr(self, key) for key in _ORDER_KEYS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; refuses a state whose order settings differ (it would be another order)."""
        mismatched = {k: (state.get(k), getattr(self, k)) for k in _ORDER_KEYS if state.get(k) != getattr(self, k)}
        if mismatched:
            details = ", ".join(f"{k}: saved {saved!r} vs now {now!r}" for k, (saved, now) in mismatched.items())
            raise ValueError(f"Cannot resume the sampler: {details}. Resume with the settings of the saved run.")
        consumed = int(state["consumed_samples"])
        if state["num_replicas"] != self.num_replicas and consumed % self.global_batch_size:
            raise ValueError(
                f"The run was saved mid-step on {state['num_replicas']} ranks; resuming on {self.num_replicas} ranks "
                "needs a checkpoint taken at a step boundary."
            )
        if consumed % self.num_replicas or consumed > self.samples_per_epoch:
            raise ValueError(f"Saved consumed_samples={consumed} does not fit this sampler's epoch.")
        self.epoch, self.consumed_samples = int(state["epoch"]), consumed
