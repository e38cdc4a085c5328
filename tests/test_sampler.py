"""The resumable, modality- and length-grouped sampler on synthetic lengths: deterministic, every index once, ranks
interleaved, pure-modality batches longest first, and an exact resume mid-epoch on the same or another world size."""

import json
from collections import Counter

import numpy as np
import pytest

from prismatic.preprocessing.sampler import DistributedResumableSampler


def synthetic_lengths(n: int = 203) -> list[tuple[bool, int]]:
    rng = np.random.default_rng(0)
    return [(bool(rng.random() < 0.7), int(rng.integers(10, 500))) for _ in range(n)]


def all_ranks(lengths, world: int, **kw) -> list[list[int]]:
    return [list(DistributedResumableSampler(lengths, num_replicas=world, rank=r, **kw)) for r in range(world)]


def test_sampler_determinism_and_rank_split() -> None:
    lengths = synthetic_lengths(192)
    kw = {"global_batch_size": 16, "seed": 7}
    first, again = all_ranks(lengths, 4, **kw), all_ranks(lengths, 4, **kw)
    assert first == again
    assert sorted(i for rank in first for i in rank) == list(range(192))  # every index exactly once
    assert len({len(rank) for rank in first}) == 1
    other = DistributedResumableSampler(lengths, num_replicas=4, rank=0, **kw)
    other.set_epoch(1)
    assert list(other) != first[0]
    first_step = DistributedResumableSampler(lengths, **kw).epoch_batches(0)[0]
    assert all_ranks(lengths, 2, **kw)[1][:3] == first_step[1::2][:3].tolist()  # rank r: positions r, r + W, ...


def test_sampler_modality_purity_length_grouping_and_padding() -> None:
    lengths = synthetic_lengths(203)
    sampler = DistributedResumableSampler(lengths, global_batch_size=16, seed=3)
    batches = sampler.epoch_batches(0)
    assert sampler.steps_per_epoch == len(batches) == 13 and all(len(b) == 16 for b in batches)
    seen = Counter(int(i) for b in batches for i in b)
    assert set(seen) == set(range(203)) and sum(seen.values()) - 203 == 13 * 16 - 203  # padding repeats only
    pure = [b for b in batches if len({lengths[i][0] for i in b}) == 1]
    assert len(pure) >= len(batches) - 2  # only the leftover batches mix modalities
    for b in batches:
        assert [lengths[i][1] for i in b] == sorted((lengths[i][1] for i in b), reverse=True)
    assert max(lengths[i][1] for i in batches[0]) == max(n for _, n in lengths)  # longest step first
    # Checkpoints of earlier versions also saved the (since removed) order options, at the values this order uses.
    sampler.advance(16)
    resumed = DistributedResumableSampler(lengths, global_batch_size=16, seed=3)
    resumed.load_state_dict({**sampler.state_dict(), "grouping": "modality-length", "last_batch": "pad"})
    assert list(resumed) == list(sampler)


@pytest.mark.parametrize("world", [1, 2])
def test_sampler_resumes_mid_epoch_with_the_exact_remaining_order(world: int) -> None:
    lengths, kw = synthetic_lengths(203), {"global_batch_size": 8, "seed": 11}
    for rank in range(world):
        sampler = DistributedResumableSampler(lengths, num_replicas=world, rank=rank, **kw)
        sampler.set_epoch(2)
        full = list(sampler)
        sampler.advance(5 * 8)  # five optimizer steps done, then the run stops
        state = json.loads(json.dumps(sampler.state_dict()))  # checkpoints store it as plain data
        resumed = DistributedResumableSampler(lengths, num_replicas=world, rank=rank, **kw)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # the trainer's epoch loop calls this again: the position is kept
        assert list(resumed) == full[5 * 8 // world :] and len(resumed) == len(full) - 5 * 8 // world
        resumed.set_epoch(3)
        assert len(list(resumed)) == len(full)
    # A step-boundary checkpoint resumes on another number of ranks with the same remaining global order.
    one = DistributedResumableSampler(lengths, **kw)
    one.advance(16)
    two = [DistributedResumableSampler(lengths, num_replicas=2, rank=r, **kw) for r in range(2)]
    for s in two:
        s.load_state_dict(one.state_dict())
    assert sorted(list(two[0]) + list(two[1])) == sorted(one)
    with pytest.raises(ValueError, match="seed"):
        DistributedResumableSampler(lengths, global_batch_size=8, seed=12).load_state_dict(one.state_dict())
