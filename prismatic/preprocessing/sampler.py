"""A distributed, resumable sampler: each epoch's global order is fixed by (seed, epoch), split across ranks.

The epoch is built as a list of *global batches* (`global_batch_size` samples each, one optimizer step), which depends
only on the seed, the epoch and the batch size, never on the number of ranks. Rank r of W takes positions r, r+W, ...
of every global batch. Groupings:
- `modality-length` (default): batches are modality-pure (all image rows or all text rows, as prismatic-vlms'
  split-modality sampler), and each batch is sorted by length (longest first), so a rank's consecutive micro-batches
  hold similar lengths and ranks get balanced work. With `mega_batch_multiplier` M > 1, samples are sorted within
  chunks of M global batches first, so whole steps group similar lengths (less padding, a bit less randomness).
  The leftover rows of both modalities share the last batch(es). The batch holding the longest sample goes first,
  so an out-of-memory shows up at step 1, not hours in.
- `random`: a plain permutation; `sequential`: dataset order.

`last_batch="pad"` (default) fills the final global batch by repeating its own samples, so every step has exactly
`global_batch_size` samples (every sample is seen at least once per epoch; exactly once when the dataset size is a
multiple of the global batch); `"drop"` leaves a partial final batch out.

Resume: the trainer reports consumption with `advance(num_samples)` after each step (the data loader prefetches, so the
sampler cannot know); `state_dict()` / `load_state_dict()` carry (epoch, consumed samples), and the next iteration
yields exactly the remaining order. Resuming on another number of ranks works at global-batch boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args

import numpy as np
from torch.utils.data import Sampler

SamplerGrouping = Literal["modality-length", "random", "sequential"]
SAMPLER_GROUPINGS: tuple[str, ...] = get_args(SamplerGrouping)
LastBatch = Literal["pad", "drop"]
LAST_BATCH_MODES: tuple[str, ...] = get_args(LastBatch)

# State entries that must match for a saved position to mean the same order.
_ORDER_KEYS = ("seed", "global_batch_size", "num_samples", "grouping", "last_batch", "mega_batch_multiplier")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {name}={value!r}; valid values are {list(valid)}.")


class DistributedResumableSampler(Sampler[int]):
    def __init__(
        self,
        modality_lengths: Sequence[tuple[bool, int]],
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        grouping: SamplerGrouping = "modality-length",
        last_batch: LastBatch = "pad",
        mega_batch_multiplier: int = 1,
    ) -> None:
        """`modality_lengths` is the dataset's `modality_lengths()`: (has_image, length) per sample (only its length
        matters for `random` / `sequential`)."""
        _choice("grouping", grouping, SAMPLER_GROUPINGS)
        _choice("last_batch", last_batch, LAST_BATCH_MODES)
        if not modality_lengths:
            raise ValueError("Cannot sample from an empty dataset.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas}).")
        if global_batch_size < 1 or global_batch_size % num_replicas:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of the number of ranks "
                f"({num_replicas}), so every rank gets the same share of each step."
            )
        if mega_batch_multiplier < 1:
            raise ValueError(f"mega_batch_multiplier must be >= 1, got {mega_batch_multiplier}.")
        self.has_image = np.array([bool(m) for m, _ in modality_lengths], dtype=bool)
        self.lengths = np.array([int(n) for _, n in modality_lengths], dtype=np.int64)
        self.global_batch_size, self.num_replicas, self.rank = global_batch_size, num_replicas, rank
        self.seed, self.grouping, self.last_batch = seed, grouping, last_batch
        self.mega_batch_multiplier = mega_batch_multiplier
        self.epoch = 0
        self.consumed_samples = 0

    # === Sizes ===
    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full + int(rest > 0 and self.last_batch == "pad")

    @property
    def samples_per_epoch(self) -> int:
        """Global samples per epoch, padding included (a multiple of the global batch)."""
        return self.steps_per_epoch * self.global_batch_size

    @property
    def per_rank_batch(self) -> int:
        return self.global_batch_size // self.num_replicas

    def __len__(self) -> int:
        """Indices this rank still yields in the current epoch (the full share unless resumed mid-epoch)."""
        return (self.samples_per_epoch - self.consumed_samples) // self.num_replicas

    # === The order ===
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch, in step order (identical on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.grouping == "sequential":
            batches, leftover = self._chunk(np.arange(self.num_samples))
        elif self.grouping == "random":
            batches, leftover = self._chunk(rng.permutation(self.num_samples))
        else:
            batches, leftover = self._grouped(rng)
        if len(leftover):
            batches.extend(self._finish(leftover))
        if self.grouping == "modality-length" and len(batches) > 1:
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
        batches: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        mega = self.global_batch_size * self.mega_batch_multiplier
        for modality in (True, False):
            order = rng.permutation(np.flatnonzero(self.has_image == modality))
            chunks = [self._sorted(order[i : i + mega]) for i in range(0, len(order), mega)]
            full, rest = self._chunk(np.concatenate(chunks) if chunks else order)
            batches.extend(self._sorted(b) for b in full)
            leftovers.append(rest)
        leftover = np.concatenate(leftovers)
        mixed, rest = self._chunk(self._sorted(leftover))
        batches.extend(mixed)
        return batches, rest

    def _finish(self, leftover: np.ndarray) -> list[np.ndarray]:
        """The final partial batch: padded with its own samples (cyclically) to a full batch, or dropped."""
        if self.last_batch == "drop":
            return []
        padded = np.resize(leftover, self.global_batch_size)
        return [self._sorted(padded) if self.grouping == "modality-length" else padded]

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's full sequence for an epoch: positions rank, rank + W, ... of every global batch."""
        batches = self.epoch_batches(epoch)
        if not batches:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([b[self.rank :: self.num_replicas] for b in batches])

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
