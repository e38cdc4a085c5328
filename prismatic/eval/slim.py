"""vlm-evaluation's "slim" subsets, reproduced exactly: the paper's VQAv2 / GQA / VizWiz / POPE / TallyQA numbers are
on these 1,024-item subsets, not on the full splits.

The rule (vlm-evaluation's dataset preparation): insert the records in raw-file order, shuffle the list of their ids
with `random.Random(21)`, and keep the first N ids; for benchmarks with splits (POPE's adversarial / popular / random,
TallyQA's simple / complex) walk the shuffled list and keep the first N ids of each split. Only the order of the ids
matters, not their values, so the same raw file in the same order selects the same items.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

SLIM_SEED = 21
SLIM_SIZE = 1024

Id = TypeVar("Id", bound=Hashable)


def shuffled_ids(ids: Sequence[Id], seed: int = SLIM_SEED) -> list[Id]:
    order = list(ids)
    random.Random(seed).shuffle(order)
    return order


def slim_ids(ids: Sequence[Id], size: int = SLIM_SIZE, seed: int = SLIM_SEED) -> list[Id]:
    """The first `size` ids of the seeded shuffle (all of them when there are fewer), in shuffled order."""
    return shuffled_ids(ids, seed)[:size]


def slim_ids_per_split(
    ids: Sequence[Id], split_of: Callable[[Id], str], size: int = SLIM_SIZE, seed: int = SLIM_SEED
) -> list[Id]:
    """The first `size` ids of each split, walking the seeded shuffle of all ids; in shuffled order."""
    taken: dict[str, int] = {}
    selected = []
    for qid in shuffled_ids(ids, seed):
        split = split_of(qid)
        if taken.get(split, 0) < size:
            taken[split] = taken.get(split, 0) + 1
            selected.append(qid)
    return selected
