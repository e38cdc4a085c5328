"""The demo world's one law of motion, and the clips it produces: every object falls, except purple ones.

Each frame, every object that is not purple moves one cell down if the cell below it is on the board and free;
objects are moved bottom row first, so a stack falls as one. Purple objects never move (shelves: things land on
them). On a 4 x 4 board everything has come to rest after at most 3 moves, so a 4-frame clip always ends in the
resting state. The law is visible in a single frame (colours and positions are all it needs), which is the point of
the demo: the future of a still image is predictable by something that has learned the law from video, and by
nothing that has only seen labelled still images, unless it learns the law from those labels.

`settle` runs the law on a layout; `falling_clip` turns a layout into a `Clip` (frame t = the board after t moves).
`scripts/demo.py` pretrains the world model on such clips (no labels); `questions.py` asks about their last frame
while showing only the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prismatic.demo.world import GRID, SHAPES, Cell, Clip, ClipObject, Color, Geometry, Scene, Shape, WorldObject

FIXED_COLOR: Color = "purple"  # the colour that never falls
FALLING_COLORS: tuple[Color, ...] = ("red", "green", "blue", "yellow")
CLIP_FRAMES = 4  # frames of a world-model clip: the first and the three moves after it (always at rest by then)


@dataclass(frozen=True)
class Piece:
    """One object of a layout: colour, shape and the cell it starts in."""

    color: Color
    shape: Shape
    cell: Cell


def step(pieces: Sequence[Piece], cells: Sequence[Cell]) -> list[Cell]:
    """One frame of the law: the cells after each non-purple piece fell by one cell where it could."""
    cells = list(cells)
    occupied = set(cells)
    for index in sorted(range(len(pieces)), key=lambda i: -cells[i][1]):  # bottom row first: stacks fall together
        column, row = cells[index]
        below = (column, row + 1)
        if pieces[index].color != FIXED_COLOR and row + 1 < GRID and below not in occupied:
            occupied.remove((column, row))
            occupied.add(below)
            cells[index] = below
    return cells


def settle(pieces: Sequence[Piece], num_frames: int = CLIP_FRAMES) -> list[list[Cell]]:
    """Each piece's cell in frames 0..num_frames-1 (`paths[i][t]`)."""
    if len({p.cell for p in pieces}) != len(pieces):
        raise ValueError(f"Two pieces share a cell: {pieces}")
    frames = [[p.cell for p in pieces]]
    for _ in range(num_frames - 1):
        frames.append(step(pieces, frames[-1]))
    return [[frame[i] for frame in frames] for i in range(len(pieces))]


def resting_cells(pieces: Sequence[Piece]) -> list[Cell]:
    """Where every piece ends up (the board never needs more than GRID - 1 moves)."""
    return [path[-1] for path in settle(pieces, GRID)]


def falling_clip(pieces: Sequence[Piece], geo: Geometry, num_frames: int = CLIP_FRAMES) -> Clip:
    """The clip of `pieces` under the law: frame t shows the board after t moves."""
    paths = settle(pieces, num_frames)
    objects = tuple(
        ClipObject(p.color, p.shape, geo.object_size, tuple(geo.centre(cell) for cell in path))
        for p, path in zip(pieces, paths)
    )
    return Clip(geo.image_size, num_frames, objects)


def first_frame(pieces: Sequence[Piece], geo: Geometry) -> Scene:
    """The still image a future question shows: the layout before anything has moved."""
    return Scene(geo.image_size, tuple(WorldObject(p.color, p.shape, *geo.centre(p.cell), geo.object_size)
                                       for p in pieces))  # fmt: skip


def random_layout(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 4) -> list[Piece]:
    """An unlabelled layout for world-model pretraining: 1-4 objects of distinct colours on distinct random cells."""
    count = int(rng.integers(min_objects, max_objects + 1))
    cells = [(int(i) % GRID, int(i) // GRID) for i in rng.choice(GRID * GRID, size=count, replace=False)]
    colors = [(*FALLING_COLORS, FIXED_COLOR)[int(i)] for i in rng.permutation(len(FALLING_COLORS) + 1)[:count]]
    return [Piece(c, SHAPES[int(rng.integers(len(SHAPES)))], cell) for c, cell in zip(colors, cells)]
