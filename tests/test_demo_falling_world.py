"""The falling demo world: its law of motion (checked against hand-computed layouts and an independent simulation
written here), the clips it renders, the single-image questions about the future, and the world-model study's data
(world clips, pool, validation and held-out splits, labelled subsets)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from prismatic.demo.future import FUTURE_ANSWERS, FUTURE_TEXT, FUTURE_TYPES, chance_level, future_answer, future_question
from prismatic.demo.physics import Piece, falling_clip, first_frame, random_layout, resting_cells, settle, step
from prismatic.demo.questions import ANSWERS, QUESTION_TEXT
from prismatic.demo.world import (
    BACKGROUND,
    RGB,
    SHAPES,
    Scene,
    WorldObject,
    geometry,
    render_clip,
    render_scene,
    scene_from_json,
)
from prismatic.demo.world_data import (
    ALL_TYPES,
    build_world_dataset,
    labelled_subset,
    partition_of,
    write_labelled_subset,
)

SIZES = {"num_world_clips": 40, "pool_per_type": 12, "val_per_type": 4, "eval_per_type": 8}
GEO = geometry(64)
N = 4  # board side
PURPLE = "purple"
FLOOR_WORDS = ("one", "two", "three", "four")
ROW_WORDS = ("top", "second", "third", "bottom")
GROUP_TYPES = {
    "single": ("count", "top-color", "left-of"),
    "future": ("floor-count", "red-stop"),
    "motion": ("motion-direction", "which-moved", "met"),
}
Cell = tuple[int, int]


# === An independent simulation of the law ===
def sim_step(colors: list[str], cells: list[Cell]) -> list[Cell]:
    """One frame: an object falls iff it is not purple and the run of non-purple objects right below it ends on a free
    cell of the board (so a stack falls as one, and nothing falls through the floor or a purple shelf)."""
    occupied = dict(zip(cells, colors))
    out = []
    for color, (column, row) in zip(colors, cells):
        below = row + 1
        while (column, below) in occupied and occupied[(column, below)] != PURPLE:
            below += 1
        falls = color != PURPLE and below < N and (column, below) not in occupied
        out.append((column, row + 1) if falls else (column, row))
    return out


def sim_frames(colors: list[str], cells: list[Cell], num_frames: int = 4) -> list[list[Cell]]:
    frames = [list(cells)]
    for _ in range(num_frames - 1):
        frames.append(sim_step(colors, frames[-1]))
    return frames


def sim_rest(colors: list[str], cells: list[Cell]) -> list[Cell]:
    """Where everything ends: drop single objects by one cell, in any order, until nothing can fall."""
    cells = list(cells)
    moved = True
    while moved:
        moved = False
        for i, (color, (column, row)) in enumerate(zip(colors, cells)):
            if color != PURPLE and row + 1 < N and (column, row + 1) not in cells:
                cells[i], moved = (column, row + 1), True
    return cells


def layout_of(scene: dict[str, Any]) -> tuple[list[str], list[Cell]]:
    """Colours and cells of a stored still scene (objects must sit on cell centres)."""
    colors, cells = [], []
    for o in scene["objects"]:
        assert o["x"] % 16 == 8 and o["y"] % 16 == 8 and o["size"] == 14, o
        colors.append(o["color"])
        cells.append((o["x"] // 16, o["y"] // 16))
    assert len(set(cells)) == len(cells) and len(set(colors)) == len(colors)
    return colors, cells


def expected_future(question_type: str, scene: dict[str, Any]) -> str:
    colors, cells = layout_of(scene)
    rest = sim_rest(colors, cells)
    if question_type == "floor-count":
        return FLOOR_WORDS[sum(row == N - 1 for _, row in rest) - 1]
    (red,) = [i for i, c in enumerate(colors) if c == "red"]
    return ROW_WORDS[rest[red][1]]


def paths(pieces: list[Piece], num_frames: int = 4) -> list[list[Cell]]:
    return [[tuple(c) for c in path] for path in settle(pieces, num_frames)]


# === Reading frames back ===
def decode(frame: np.ndarray) -> dict[Cell, tuple[str, str]]:
    """The layout a 64 px frame shows: cell -> (colour, shape), from the pixels at and around each cell centre."""
    by_rgb = {rgb: color for color, rgb in RGB.items()}
    layout = {}
    for column, row in itertools.product(range(N), range(N)):
        x, y = 16 * column + 8, 16 * row + 8
        pixel = tuple(int(v) for v in frame[y, x])
        if pixel == BACKGROUND:
            continue
        color = by_rgb[pixel]
        x0, y0, y1 = x - 7, y - 7, y + 6  # the object's box (14 px, centre at the lower middle)
        if tuple(frame[y0, x0]) == RGB[color]:
            shape = "square"
        elif tuple(frame[y1, x0]) == RGB[color]:
            shape = "triangle"
        else:
            shape = "circle"
        layout[(column, row)] = (color, shape)
    return layout


def scene_of(layout: dict[Cell, tuple[str, str]]) -> Scene:
    objects = (WorldObject(color, shape, 16 * c + 8, 16 * r + 8, 14) for (c, r), (color, shape) in layout.items())
    return Scene(64, tuple(objects))


def object_set(scene: dict[str, Any]) -> frozenset:
    return frozenset((o["color"], o["shape"], o["x"], o["y"], o["size"]) for o in scene["objects"])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# === Hand-made layouts ===
def test_a_lone_object_falls_one_cell_per_frame_to_the_floor() -> None:
    assert paths([Piece("red", "circle", (1, 0))]) == [[(1, 0), (1, 1), (1, 2), (1, 3)]]
    assert paths([Piece("blue", "square", (2, 2))]) == [[(2, 2), (2, 3), (2, 3), (2, 3)]]
    assert paths([Piece("yellow", "triangle", (3, 1))], num_frames=6) == [
        [(3, 1), (3, 2), (3, 3), (3, 3), (3, 3), (3, 3)]
    ]
    assert resting_cells([Piece("green", "circle", (0, 0))]) == [(0, 3)]


def test_purple_objects_never_move() -> None:
    for cell in [(0, 0), (2, 1), (3, 3)]:
        assert paths([Piece("purple", "triangle", cell)]) == [[cell] * 4]
    # an object under a purple one falls away from it; the purple one stays in mid-air
    assert paths([Piece("purple", "square", (1, 0)), Piece("green", "circle", (1, 1))]) == [
        [(1, 0)] * 4,
        [(1, 1), (1, 2), (1, 3), (1, 3)],
    ]


def test_an_object_above_a_purple_one_lands_on_it() -> None:
    red, purple = Piece("red", "circle", (3, 0)), Piece("purple", "square", (3, 2))
    assert paths([red, purple]) == [[(3, 0), (3, 1), (3, 1), (3, 1)], [(3, 2)] * 4]
    assert paths([purple, red]) == [[(3, 2)] * 4, [(3, 0), (3, 1), (3, 1), (3, 1)]]
    assert resting_cells([red, purple]) == [(3, 1), (3, 2)]
    # already resting on the shelf: nothing moves
    assert paths([Piece("red", "circle", (3, 1)), purple]) == [[(3, 1)] * 4, [(3, 2)] * 4]
    # a stack on a shelf in the middle of the board
    stack = [Piece("blue", "circle", (0, 0)), Piece("yellow", "square", (0, 1)), Piece("purple", "circle", (0, 3))]
    assert paths(stack) == [[(0, 0), (0, 1), (0, 1), (0, 1)], [(0, 1), (0, 2), (0, 2), (0, 2)], [(0, 3)] * 4]


@pytest.mark.parametrize("top_first", [True, False])
def test_a_stack_falls_together(top_first: bool) -> None:
    top, bottom = Piece("green", "circle", (0, 0)), Piece("blue", "square", (0, 1))
    pieces = [top, bottom] if top_first else [bottom, top]
    result = dict(zip([p.color for p in pieces], paths(pieces)))
    assert result["green"] == [(0, 0), (0, 1), (0, 2), (0, 2)]
    assert result["blue"] == [(0, 1), (0, 2), (0, 3), (0, 3)]
    assert all(t[1] + 1 == b[1] and t[0] == b[0] for t, b in zip(result["green"], result["blue"]))  # always in contact
    # three high: all three move in frame 1, then rest
    three = [Piece("red", "circle", (2, 2)), Piece("yellow", "triangle", (2, 0)), Piece("green", "square", (2, 1))]
    assert paths(three if top_first else three[::-1]) == (
        [[(2, 2), (2, 3), (2, 3), (2, 3)], [(2, 0), (2, 1), (2, 1), (2, 1)], [(2, 1), (2, 2), (2, 2), (2, 2)]]
        if top_first
        else [[(2, 1), (2, 2), (2, 2), (2, 2)], [(2, 0), (2, 1), (2, 1), (2, 1)], [(2, 2), (2, 3), (2, 3), (2, 3)]]
    )
    # a gap closes: the lower object lands first, the upper one lands on it a frame later
    gap = [Piece("red", "circle", (1, 0)), Piece("blue", "circle", (1, 2))]
    assert paths(gap if top_first else gap[::-1]) == (
        [[(1, 0), (1, 1), (1, 2), (1, 2)], [(1, 2), (1, 3), (1, 3), (1, 3)]]
        if top_first
        else [[(1, 2), (1, 3), (1, 3), (1, 3)], [(1, 0), (1, 1), (1, 2), (1, 2)]]
    )


def test_objects_on_the_floor_or_on_a_resting_stack_do_not_move() -> None:
    assert paths([Piece("yellow", "square", (2, 3))]) == [[(2, 3)] * 4]
    assert paths([Piece("red", "circle", (1, 2)), Piece("yellow", "square", (1, 3))]) == [[(1, 2)] * 4, [(1, 3)] * 4]
    column = [Piece(c, "circle", (3, r)) for r, c in enumerate(("red", "green", "blue", "yellow"))]
    assert paths(column) == [[(3, r)] * 4 for r in range(4)]
    # step on its own: one frame, the input list left alone
    pieces = [Piece("red", "circle", (0, 0)), Piece("purple", "square", (1, 1)), Piece("blue", "circle", (1, 0))]
    cells = [p.cell for p in pieces]
    assert step(pieces, cells) == [(0, 1), (1, 1), (1, 0)]
    assert cells == [(0, 0), (1, 1), (1, 0)]


def test_settle_rejects_two_objects_in_one_cell() -> None:
    with pytest.raises(ValueError, match="share a cell"):
        settle([Piece("red", "circle", (1, 1)), Piece("blue", "square", (1, 1))])


def test_random_layouts_follow_the_law_and_settle_within_three_moves() -> None:
    rng = np.random.default_rng(0)
    sizes = Counter()
    for _ in range(600):
        pieces = random_layout(rng)
        colors, start = [p.color for p in pieces], [p.cell for p in pieces]
        sizes[len(pieces)] += 1
        assert 1 <= len(pieces) <= 4 and len(set(colors)) == len(colors) and len(set(start)) == len(start)
        assert all(p.shape in SHAPES and 0 <= p.cell[0] < N and 0 <= p.cell[1] < N for p in pieces)
        got = paths(pieces, num_frames=6)
        frames = [[path[t] for path in got] for t in range(6)]
        assert frames[:4] == sim_frames(colors, start), pieces
        rest = sim_rest(colors, start)
        assert frames[3] == frames[4] == frames[5] == rest == list(resting_cells(pieces)), pieces
        for frame in frames:
            assert len(set(frame)) == len(frame), pieces  # never two objects in one cell
        for color, path in zip(colors, got):
            for (c0, r0), (c1, r1) in itertools.pairwise(path):
                assert c1 == c0 and r1 - r0 in ((0,) if color == PURPLE else (0, 1)), pieces
    assert set(sizes) == {1, 2, 3, 4}
    pieces = random_layout(np.random.default_rng(1), min_objects=3, max_objects=3)
    assert len(pieces) == 3


def test_falling_clip_frames_show_the_law() -> None:
    rng = np.random.default_rng(5)
    for _ in range(120):
        pieces = random_layout(rng)
        colors = [p.color for p in pieces]
        clip = falling_clip(pieces, GEO)
        assert clip.num_frames == 4 and clip.image_size == 64
        assert first_frame(pieces, GEO) == clip.frame(0)
        for cells, frame in zip(sim_frames(colors, [p.cell for p in pieces]), render_clip(clip)):
            image = np.asarray(frame)
            where = dict(zip(cells, colors))
            for column, row in itertools.product(range(N), range(N)):
                pixel = tuple(int(v) for v in image[16 * row + 8, 16 * column + 8])
                assert pixel == (RGB[where[(column, row)]] if (column, row) in where else BACKGROUND), pieces


# === Questions about the future ===
def test_future_questions_have_the_answer_their_future_gives() -> None:
    assert FUTURE_TEXT == {"floor-count": "How many shapes end on the floor?",
                           "red-stop": "Where does the red shape stop?"}  # fmt: skip
    assert FUTURE_ANSWERS == {"floor-count": FLOOR_WORDS, "red-stop": ROW_WORDS}
    for question_type in FUTURE_TYPES:
        for answer in FUTURE_ANSWERS[question_type]:
            for seed in range(3):
                question = future_question(question_type, np.random.default_rng([seed, 11]), answer, GEO)
                scene = question.scene.to_json()
                assert question.question_type == question_type and question.answer == answer
                assert question.text == FUTURE_TEXT[question_type]
                assert 2 <= len(scene["objects"]) <= 4
                assert expected_future(question_type, scene) == answer, scene
                assert future_answer(question_type, question.scene, GEO) == answer
                colors = [o["color"] for o in scene["objects"]]
                if question_type == "red-stop":
                    assert colors.count("red") == 1
                else:
                    assert any(c != PURPLE for c in colors)
    with pytest.raises(ValueError, match="not an answer"):
        future_question("floor-count", np.random.default_rng(0), "none", GEO)
    with pytest.raises(ValueError, match="not an answer"):
        future_question("red-stop", np.random.default_rng(0), "four", GEO)


def test_chance_levels_of_the_future_types() -> None:
    assert chance_level("floor-count") == chance_level("red-stop") == pytest.approx(0.25)
    assert chance_level("count") == pytest.approx(0.25)  # the other types come from questions.chance_level
    assert chance_level("which-moved") == pytest.approx(1 / 3)
    assert chance_level("top-color") == pytest.approx(0.2)
    with pytest.raises(ValueError):
        chance_level("fall-count")


# === The study's data ===
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return build_world_dataset(tmp_path_factory.mktemp("falling") / "data", seed=0, **SIZES)


def records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())


def splits(world) -> dict[str, list[dict[str, Any]]]:
    """pool, val and eval records (val and eval gathered over their three group files)."""
    out = {"pool": records(world.pool)}
    for partition in ("val", "eval"):
        out[partition] = [r for g in GROUP_TYPES for r in records(world.split(partition, g))]
    return out


def world_clips(world) -> list[dict[str, Any]]:
    return [json.loads(line) for line in world.world_manifest.read_text().splitlines() if line.strip()]


def expected_answer(record: dict[str, Any]) -> str:
    kind, scene = record["question_type"], record["scene"]
    objects = scene["objects"]
    if kind in FUTURE_TYPES:
        return expected_future(kind, scene)
    if kind == "count":
        return FLOOR_WORDS[len(objects) - 1]
    if kind in ("top-color", "left-of"):
        ranked = sorted(objects, key=lambda o: o["y"])
        assert ranked[0]["y"] < ranked[1]["y"]
        if kind == "top-color":
            return ranked[0]["color"]
        assert ranked[-1]["y"] > ranked[-2]["y"]
        return "yes" if ranked[0]["x"] < ranked[-1]["x"] else "no"
    (mover,) = [o for o in objects if o["path"][0] != o["path"][-1]]
    (x0, y0), (x1, y1) = mover["path"][0], mover["path"][-1]
    if kind == "motion-direction":
        assert (x0 == x1) != (y0 == y1)
        return ("right" if x1 > x0 else "left") if x1 != x0 else ("down" if y1 > y0 else "up")
    if kind == "which-moved":
        return mover["color"]
    assert kind == "met"
    (ax, ay), (bx, by) = (o["path"][-1] for o in objects)
    return "yes" if sorted((abs(ax - bx), abs(ay - by))) == [0, 16] else "no"


def test_manifest_and_split_counts(world) -> None:
    manifest = json.loads(world.manifest.read_text())
    assert manifest["arguments"] == {"seed": 0, **SIZES}
    assert manifest["counts"] == {
        "world-clips": 40,
        "pool": 8 * 12,
        **{f"{p}-{g}": len(types) * n for p, n in (("val", 4), ("eval", 8)) for g, types in GROUP_TYPES.items()},
    }
    assert set(ALL_TYPES) == {t for types in GROUP_TYPES.values() for t in types} and len(ALL_TYPES) == 8
    assert len(world_clips(world)) == 40
    assert Counter(r["question_type"] for r in records(world.pool)) == {t: 12 for t in ALL_TYPES}
    for partition, per_type in (("val", 4), ("eval", 8)):
        for group, types in GROUP_TYPES.items():
            rows = records(world.split(partition, group))
            assert Counter(r["question_type"] for r in rows) == {t: per_type for t in types}, (partition, group)
    ids = [r["id"] for rows in splits(world).values() for r in rows]
    assert len(set(ids)) == len(ids)


def test_every_answer_follows_from_its_scene(world) -> None:
    for name, rows in splits(world).items():
        for record in rows:
            kind = record["question_type"]
            human, gpt = record["conversations"]
            text = FUTURE_TEXT[kind] if kind in FUTURE_TYPES else QUESTION_TEXT[kind]
            assert human == {"from": "human", "value": f"<image>\n{text} Answer with one word."}
            assert gpt["from"] == "gpt" and gpt["value"] == expected_answer(record), (name, record["id"])
            images = [record["image"]] if isinstance(record["image"], str) else record["image"]
            assert all((world.root / p).is_file() for p in images)
            if kind in FUTURE_TYPES:  # the still first frame, as described
                assert isinstance(record["image"], str) and record["scene"]["kind"] == "scene"
                shown = decode(pixels(world.root / record["image"]))
                assert object_set(scene_of(shown).to_json()) == object_set(record["scene"]), record["id"]


def test_answers_are_balanced_per_type_and_split(world) -> None:
    for name, rows in splits(world).items():
        for question_type in ALL_TYPES:
            answers = FUTURE_ANSWERS.get(question_type) or ANSWERS[question_type]
            counts = Counter(r["conversations"][1]["value"] for r in rows if r["question_type"] == question_type)
            assert set(counts) <= set(answers)
            per_answer = [counts[a] for a in answers]
            assert max(per_answer) - min(per_answer) <= 1, (name, question_type, counts)
            if question_type in FUTURE_TYPES:
                assert min(per_answer) >= 1, (name, question_type, counts)


def test_world_clips_are_the_law_applied_to_their_first_frame(world) -> None:
    folder = world.world_manifest.parent
    for clip in world_clips(world):
        assert set(clip) == {"id", "frames"} and len(clip["frames"]) == 4
        assert all((folder / f).is_file() for f in clip["frames"])
        frames = [pixels(folder / f) for f in clip["frames"]]
        layout = decode(frames[0])
        assert 1 <= len(layout) <= 4
        assert np.array_equal(np.asarray(render_scene(scene_of(layout))), frames[0]), clip["id"]
        cells = list(layout)
        colors = [layout[c][0] for c in cells]
        for t, moved in enumerate(sim_frames(colors, cells)):
            expected = scene_of({m: layout[c] for c, m in zip(cells, moved)})
            assert np.array_equal(np.asarray(render_scene(expected)), frames[t]), (clip["id"], t)


def test_partitions_are_disjoint(world) -> None:
    rows = splits(world)
    canonical = {name: {json.dumps(r["scene"], sort_keys=True) for r in rs} for name, rs in rows.items()}
    unordered = {
        name: {object_set(r["scene"]) for r in rs if r["scene"]["kind"] == "scene"} for name, rs in rows.items()
    }
    for a, b in itertools.combinations(rows, 2):
        assert not canonical[a] & canonical[b], (a, b)
        assert not unordered[a] & unordered[b], (a, b)  # not even the same objects listed in another order
    for index, name in enumerate(("pool", "val", "eval")):
        for record in rows[name]:
            assert partition_of(scene_from_json(record["scene"])) == index, (name, record["id"])
    folder = world.world_manifest.parent
    held_out_future = {
        object_set(r["scene"]) for name in ("val", "eval") for r in rows[name] if r["question_type"] in FUTURE_TYPES
    }
    for clip in world_clips(world):
        shown = scene_of(decode(pixels(folder / clip["frames"][0])))
        assert object_set(shown.to_json()) not in held_out_future, clip["id"]
        assert object_set(shown.to_json()) not in unordered["val"] | unordered["eval"], clip["id"]


def test_the_partition_of_an_image_does_not_depend_on_the_order_of_its_objects() -> None:
    red, purple = WorldObject("red", "square", 8, 8, 14), WorldObject("purple", "triangle", 8, 24, 14)
    listed, reversed_ = Scene(64, (red, purple)), Scene(64, (purple, red))
    assert np.array_equal(np.asarray(render_scene(listed)), np.asarray(render_scene(reversed_)))  # the same image
    assert partition_of(listed) == partition_of(reversed_)


def data_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a build except the labelled subsets (written later, on demand)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "labelled" not in p.relative_to(root).parts
    }


def test_builds_are_reused_and_reproducible(world, tmp_path: Path) -> None:
    again = build_world_dataset(tmp_path / "again", seed=0, **SIZES)
    assert data_bytes(again.root) == data_bytes(world.root)
    stamps = {p: p.stat().st_mtime_ns for p in (again.manifest, again.pool, again.world_manifest)}
    assert build_world_dataset(tmp_path / "again", seed=0, **SIZES).root == again.root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    other = build_world_dataset(tmp_path / "again", seed=1, **{**SIZES, "pool_per_type": 4})
    assert json.loads(other.manifest.read_text())["arguments"] == {"seed": 1, **SIZES, "pool_per_type": 4}
    assert len(records(other.pool)) == 8 * 4 and other.pool.read_bytes() != world.pool.read_bytes()
    with pytest.raises(ValueError, match="non-negative int"):
        build_world_dataset(tmp_path / "bad", **{**SIZES, "val_per_type": -1})


def test_labelled_subsets(world, tmp_path: Path) -> None:
    pool = records(world.pool)
    pool_ids = {r["id"] for r in pool}
    subset = labelled_subset(pool, 5, seed=3)
    assert Counter(r["question_type"] for r in subset) == {t: 5 for t in ALL_TYPES}
    assert {r["id"] for r in subset} <= pool_ids and len({r["id"] for r in subset}) == len(subset)
    assert labelled_subset(pool, 5, seed=3) == subset
    assert [r["id"] for r in labelled_subset(pool, 5, seed=4)] != [r["id"] for r in subset]
    assert {r["id"] for r in labelled_subset(pool, 5, seed=4)} != {r["id"] for r in subset}
    assert len(labelled_subset(pool, 12, seed=0)) == 8 * 12 and labelled_subset(pool, 0, seed=0) == []
    with pytest.raises(ValueError, match="pool holds 12"):
        labelled_subset(pool, 13, seed=0)
    # written once under labelled/, identical bytes for identical arguments
    copy = build_world_dataset(tmp_path / "copy", seed=0, **SIZES)
    target = write_labelled_subset(copy, 5, 3)
    assert target == copy.root / "labelled" / "n5-s3.json" and records(target) == subset
    stamp = target.stat().st_mtime_ns
    assert write_labelled_subset(copy, 5, 3).stat().st_mtime_ns == stamp
    assert write_labelled_subset(world, 5, 3).read_bytes() == target.read_bytes()
