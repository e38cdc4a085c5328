"""The embedded demo data and its scoring: deterministic builds, answers re-derived from the scene descriptions (by
code written here, independent of the generator), rendering that matches the descriptions, motion that the first
frame does not give away, balanced answers, disjoint train / eval scenes, and its scoring as the harness's `demo-world`
benchmark."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from prismatic.demo import (
    ANSWERS,
    FUTURE_ANSWERS,
    FUTURE_TYPES,
    MOTION_TYPES,
    QUESTION_TYPES,
    SINGLE_TYPES,
    build_demo_dataset,
    chance_level,
)
from prismatic.demo.dataset import read_manifest
from prismatic.demo.questions import QUESTION_TEXT, make_question
from prismatic.demo.world import BACKGROUND, GRID, RGB, geometry
from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks import demo_world
from prismatic.eval.benchmarks.demo_world import DemoWorld, DemoWorldVal, normalize_answer, type_key
from prismatic.eval.registry import BENCHMARKS, PAPER_BENCHMARKS, get_benchmark
from prismatic.eval.results import benchmark_table

SIZES = {"num_train_scenes": 240, "num_train_clips": 180, "num_eval_scenes": 80, "num_eval_clips": 60}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0, **SIZES)


def records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())


def all_records(demo) -> list[dict[str, Any]]:
    return [r for split in (demo.train_json, demo.eval_single_json, demo.eval_motion_json) for r in records(split)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# === Independent answer checks (plain dict access on the stored description) ===
def question(record: dict[str, Any]) -> str:
    return record["conversations"][0]["value"]


def by_color(objects: list[dict[str, Any]], color: str) -> dict[str, Any]:
    (match,) = [o for o in objects if o["color"] == color]
    return match


def expected_answer(record: dict[str, Any]) -> str:
    text, scene, kind = question(record), record["scene"], record["question_type"]
    objects = scene["objects"]
    assert text == f"<image>\n{QUESTION_TEXT[kind]} Answer with one word."
    if kind == "count":
        return ["one", "two", "three", "four"][len(objects) - 1]
    if kind in ("top-color", "left-of"):
        ranked = sorted(objects, key=lambda o: o["y"])
        assert ranked[0]["y"] < ranked[1]["y"], "the top object must be alone in its row"
        if kind == "top-color":
            return ranked[0]["color"]
        assert ranked[-1]["y"] > ranked[-2]["y"], "the bottom object must be alone in its row"
        assert ranked[0]["x"] != ranked[-1]["x"]
        return "yes" if ranked[0]["x"] < ranked[-1]["x"] else "no"
    moving = [o for o in objects if o["path"][0] != o["path"][-1]]
    (mover,) = moving
    if kind == "motion-direction":
        dx = mover["path"][-1][0] - mover["path"][0][0]
        dy = mover["path"][-1][1] - mover["path"][0][1]
        assert dx == 0 or dy == 0
        return ("right" if dx > 0 else "left") if dx else ("down" if dy > 0 else "up")
    if kind == "which-moved":
        assert len(objects) == 3
        return mover["color"]
    if kind == "met":
        a, b = objects
        cell = scene["image_size"] // 4
        (ax, ay), (bx, by) = a["path"][-1], b["path"][-1]
        return "yes" if sorted((abs(ax - bx), abs(ay - by))) == [0, cell] else "no"
    raise AssertionError(f"unknown question type {kind}")


# === Determinism and the cache ===
def test_same_arguments_give_identical_bytes_and_another_seed_differs(demo, tmp_path: Path) -> None:
    again = build_demo_dataset(tmp_path / "again", seed=0, **SIZES)
    assert tree_bytes(demo.root) == tree_bytes(again.root)
    other = build_demo_dataset(tmp_path / "other", seed=1, **SIZES)
    assert demo.train_json.read_bytes() != other.train_json.read_bytes()
    first_png = demo.root / records(demo.train_json)[0]["image"]
    assert first_png.read_bytes() != (other.root / records(other.train_json)[0]["image"]).read_bytes()


def test_cache_is_reused_and_rebuilt_on_new_arguments(tmp_path: Path) -> None:
    small = {"num_train_scenes": 8, "num_train_clips": 6, "num_eval_scenes": 4, "num_eval_clips": 3}
    paths = build_demo_dataset(tmp_path / "cache", **small)
    stamp = paths.train_json.stat().st_mtime_ns
    assert build_demo_dataset(tmp_path / "cache", **small).train_json.stat().st_mtime_ns == stamp
    rebuilt = build_demo_dataset(tmp_path / "cache", **{**small, "num_train_scenes": 5})
    assert read_manifest(rebuilt.root)["arguments"]["num_train_scenes"] == 5
    assert len(records(rebuilt.train_json)) == 5 + 6
    assert sorted(p.name for p in (rebuilt.root / "images" / "train").glob("s*.png")) == [
        f"s{i:06d}.png" for i in range(5)
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="empty or new directory"):
        build_demo_dataset(foreign, **small)
    with pytest.raises(ValueError, match="image_size"):
        build_demo_dataset(tmp_path / "tiny", image_size=16, **small)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_demo_dataset(tmp_path / "odd", image_size=66, **small)


def test_default_cache_dir_follows_dyva_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prismatic.demo import default_cache_dir

    monkeypatch.setenv("DYVA_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "demo"


# === Records, answers, rendering ===
def test_records_are_llava_format_with_checkable_answers(demo) -> None:
    for split, types in (
        (demo.train_json, QUESTION_TYPES),
        (demo.eval_single_json, SINGLE_TYPES),
        (demo.eval_motion_json, MOTION_TYPES),
    ):
        rows = records(split)
        assert {r["question_type"] for r in rows} == set(types)
        for record in rows:
            human, gpt = record["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].startswith("<image>\n") and human["value"].endswith(" Answer with one word.")
            assert gpt["value"] in ANSWERS[record["question_type"]]
            assert gpt["value"] == expected_answer(record), record["id"]
            single = record["question_type"] in SINGLE_TYPES
            assert isinstance(record["image"], str) == single
            if not single:
                assert 2 <= len(record["image"]) == record["scene"]["num_frames"] <= 4
    assert len({r["id"] for r in all_records(demo)}) == len(all_records(demo))


def test_rendering_matches_the_description(demo) -> None:
    for record in all_records(demo)[::3]:
        paths = [record["image"]] if isinstance(record["image"], str) else record["image"]
        frames = [np.asarray(Image.open(demo.root / p)) for p in paths]
        size = record["scene"]["image_size"]
        assert all(f.shape == (size, size, 3) for f in frames)
        assert tuple(frames[0][0, 0]) == BACKGROUND
        for obj in record["scene"]["objects"]:
            x, y = obj.get("path", [[obj.get("x"), obj.get("y")]])[0]
            assert tuple(frames[0][y, x]) == RGB[obj["color"]], (record["id"], obj)
        colors = {tuple(c) for c in frames[0].reshape(-1, 3)}
        assert colors == {BACKGROUND} | {RGB[o["color"]] for o in record["scene"]["objects"]}
        for t, frame in enumerate(frames):  # every frame shows each object where the path says (unless covered)
            for obj in record["scene"].get("objects", []):
                if "path" in obj and record["question_type"] != "met":
                    x, y = obj["path"][t]
                    assert tuple(frame[y, x]) == RGB[obj["color"]]


def test_objects_sit_on_board_cells_and_motion_is_one_straight_cell(demo) -> None:
    for record in all_records(demo):
        geo = geometry(record["scene"]["image_size"])
        objects = record["scene"]["objects"]
        if record["question_type"] in SINGLE_TYPES:
            cells = [geo.cell_of(o["x"], o["y"]) for o in objects]  # raises off a cell centre
            assert len(set(cells)) == len(cells) and all(o["size"] == geo.object_size for o in objects)
            continue
        starts = [geo.cell_of(*o["path"][0]) for o in objects]
        ends = [geo.cell_of(*o["path"][-1]) for o in objects]
        assert len(set(starts)) == len(starts) and len(set(ends)) == len(ends)  # never two objects in one cell
        assert all(0 <= c < GRID for cell in starts + ends for c in cell)
        (mover,) = [o for o in objects if o["path"][0] != o["path"][-1]]
        path = np.array(mover["path"])
        steps, total = np.diff(path, axis=0), path[-1] - path[0]
        assert np.count_nonzero(total) == 1 and np.abs(total).sum() == geo.motion == geo.cell
        assert all(np.sign(step).tolist() == np.sign(total).tolist() for step in steps)  # straight, one direction
        assert np.abs(steps).max() - np.abs(steps[np.nonzero(steps)]).min() <= 1  # constant speed up to rounding


def ks_distance(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def draw_many(question_type: str, n: int) -> list[Any]:
    geo, answers = geometry(64), ANSWERS[question_type]
    rng = np.random.default_rng(123)
    return [make_question(question_type, answers[i % len(answers)], rng, geo, 2 + i % 3) for i in range(n)]


def test_first_frame_carries_no_motion_information() -> None:
    # motion-direction: where the mover starts does not depend on where it goes
    questions = draw_many("motion-direction", 1600)
    starts = {d: [] for d in ANSWERS["motion-direction"]}
    for q in questions:
        (mover,) = [o for o in q.scene.objects if o.moves]
        starts[q.answer].append(mover.path[0])
    for axis in (0, 1):
        values = {d: [p[axis] for p in ps] for d, ps in starts.items()}
        assert ks_distance(values["left"], values["right"]) < 0.15
        assert ks_distance(values["up"], values["down"]) < 0.15
        assert ks_distance(values["left"], values["up"]) < 0.15
    # which-moved: the mover starts where the static objects start
    questions = draw_many("which-moved", 900)
    moving = [o.path[0][a] for q in questions for o in q.scene.objects if o.moves for a in (0, 1)]
    still = [o.path[0][a] for q in questions for o in q.scene.objects if not o.moves for a in (0, 1)]
    assert ks_distance(moving, still) < 0.1
    # met: the first frame (both objects' places) looks the same whether they will meet or not
    questions = draw_many("met", 1200)
    features = {"yes": [], "no": []}
    for q in questions:
        centres = sorted(o.path[0] for o in q.scene.objects)
        features[q.answer].append(np.array(centres, dtype=float).ravel())
    for column in range(4):
        yes = [f[column] for f in features["yes"]]
        no = [f[column] for f in features["no"]]
        assert ks_distance(yes, no) < 0.12


def test_answers_are_balanced_per_type(demo) -> None:
    for split in (demo.train_json, demo.eval_single_json, demo.eval_motion_json):
        per_type: dict[str, Counter] = {}
        for record in records(split):
            per_type.setdefault(record["question_type"], Counter())[record["conversations"][1]["value"]] += 1
        for question_type, counts in per_type.items():
            assert set(counts) == set(ANSWERS[question_type]), (split.name, question_type, counts)
            assert max(counts.values()) - min(counts.values()) <= 1, (split.name, question_type, counts)


def test_chance_levels() -> None:
    assert chance_level("top-color") == pytest.approx(1 / 5)
    assert chance_level("count") == pytest.approx(1 / 4)
    assert chance_level("left-of") == chance_level("met") == pytest.approx(1 / 2)
    assert chance_level("motion-direction") == pytest.approx(1 / 4)
    assert chance_level("which-moved") == pytest.approx(1 / 3)  # a guess among the three colours on show
    with pytest.raises(ValueError, match="valid types"):
        chance_level("colour")  # type: ignore[arg-type]


def test_train_and_eval_scenes_are_disjoint(demo) -> None:
    def keys(path: Path) -> set[str]:
        return {json.dumps(r["scene"], sort_keys=True) for r in records(path)}

    train = keys(demo.train_json)
    held_out = keys(demo.eval_single_json) | keys(demo.eval_motion_json)
    assert not train & held_out
    assert len(held_out) == SIZES["num_eval_scenes"] + SIZES["num_eval_clips"]  # no duplicates within eval either


# === Scoring and scripts/evaluate.py ===
def test_normalisation() -> None:
    assert normalize_answer("Two.") == normalize_answer("2") == "2"
    assert normalize_answer("Red") == normalize_answer(" red! ") == "red"
    assert normalize_answer("A blue ball") == normalize_answer("the BLUE   ball") == "blue ball"
    assert normalize_answer("Yes, ") == "yes"
    assert normalize_answer("left-of") == normalize_answer("left of")
    assert normalize_answer("Four") == normalize_answer("4")


def test_demo_world_benchmark_scores_by_question_type(demo, tmp_path: Path) -> None:
    family = DemoWorld()
    family.prepare(tmp_path / "eval-data", raw_dir=demo.root, log=lambda _: None)
    metadata = family.load_records(tmp_path / "eval-data")
    single, motion = records(demo.eval_single_json), records(demo.eval_motion_json)
    assert list(metadata) == [r["id"] for r in single + motion]
    clip = motion[0]
    assert metadata[clip["id"]]["img_paths"] == [str((demo.root / p).resolve()) for p in clip["image"]]
    items = {item.id: item for item in family.items(metadata)}
    assert items[clip["id"]].message == question(clip).replace("<image>", "").strip()
    assert not items[clip["id"]].candidates  # open form: greedy answers

    # Right answers written differently, except: every count answer wrong, every "met" answer wrong.
    predictions = {}
    for r in single + motion:
        answer = r["conversations"][1]["value"]
        wrong = r["question_type"] in ("count", "met")
        predictions[r["id"]] = Prediction(r["id"], "maybe" if wrong else f"The {answer.upper()}.")
    scores = family.score(metadata, predictions)
    metrics = scores.metrics
    assert metrics[type_key("count")] == metrics[type_key("met")] == 0.0
    assert metrics[type_key("left-of")] == metrics[type_key("top-color")] == metrics[type_key("which-moved")] == 100.0
    assert metrics["accuracy__DemoWorld-single-mean"] == pytest.approx(100 * 2 / 3)  # count, top-color, left-of
    n_count = sum(r["question_type"] == "count" for r in single)
    assert scores.counts["count"] == n_count and metrics["chance__DemoWorld-top-color"] == pytest.approx(20.0)
    table = benchmark_table(family, metrics, "fake", "fake")
    assert "| Model | count | top-color |" in table and "| fake (ours) | 0.00 | 100.00 |" in table
    # A build of the first demo world has no future split: exactly the keys it always had, nothing about the future.
    types = (*SINGLE_TYPES, *MOTION_TYPES)
    expected_keys = {type_key(t) for t in types} | {f"chance__DemoWorld-{t}" for t in types}
    assert set(metrics) == expected_keys | {"accuracy__DemoWorld-single-mean", "accuracy__DemoWorld-motion-mean"}
    assert set(scores.counts) == set(types)


# === Three question groups (single, future, motion) and the validation twin, on hand-made records ===
GROUP_TYPES = {"single": SINGLE_TYPES, "future": FUTURE_TYPES, "motion": MOTION_TYPES}


def _answers(question_type: str) -> tuple[str, ...]:
    return FUTURE_ANSWERS[question_type] if question_type in FUTURE_ANSWERS else ANSWERS[question_type]


def write_split(root: Path, split: str, per_type: int = 2) -> list[dict[str, Any]]:
    """`per_type` LLaVA records per question type of the split's group (clips of 2 frames for motion), tiny PNGs."""
    group = split.rsplit("-", 1)[-1]
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for question_type in GROUP_TYPES[group]:
        for i in range(per_type):
            index = len(rows)
            frames = [f"images/{split}/s{index:06d}-{t}.png" for t in range(2 if group == "motion" else 1)]
            for t, frame in enumerate(frames):
                Image.new("RGB", (8, 8), (40 * t, 10 * index, 90)).save(root / frame)
            answer = _answers(question_type)[i % len(_answers(question_type))]
            turns = [{"from": "human", "value": f"<image>\nWhat about {question_type}? Answer with one word."},
                     {"from": "gpt", "value": answer}]  # fmt: skip
            rows.append({"id": f"{split}-{index}", "image": frames if group == "motion" else frames[0],
                         "conversations": turns, "question_type": question_type, "scene": {"index": index}})  # fmt: skip
    (root / f"{split}.json").write_text(json.dumps(rows))
    return rows


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root of the rebuilt demo: eval-{single,future,motion}.json and val-{single,future,motion}.json."""
    root = tmp_path_factory.mktemp("world-data")
    for prefix in ("eval", "val"):
        for group in GROUP_TYPES:
            write_split(root, f"{prefix}-{group}", per_type=2 if prefix == "eval" else 1)
    return root


def _predict(records: dict[str, dict[str, Any]], wrong: tuple[str, ...]) -> dict[str, Prediction]:
    """Every answer right (written differently), except those of the `wrong` question types."""
    return {q: Prediction(q, "maybe" if r["question_type"] in wrong else f"The {r['answer'].upper()}!")
            for q, r in records.items()}  # fmt: skip


def test_demo_world_reads_the_future_split_and_reports_its_mean(world_root: Path, tmp_path: Path) -> None:
    family = DemoWorld()
    family.prepare(tmp_path / "eval-data", raw_dir=world_root, log=lambda _: None)
    metadata = family.load_records(tmp_path / "eval-data")
    expected = [r["id"] for group in GROUP_TYPES for r in records(world_root / f"eval-{group}.json")]
    assert list(metadata) == expected  # single, future, motion: every eval record, no validation one
    future = records(world_root / "eval-future.json")[0]
    assert metadata[future["id"]]["img_paths"] == [str((world_root / future["image"]).resolve())]
    assert metadata[future["id"]]["split"] == "eval-future"

    scores = family.score(metadata, _predict(metadata, wrong=("red-stop", "met")))
    metrics = scores.metrics
    assert metrics[type_key("floor-count")] == 100.0 and metrics[type_key("red-stop")] == 0.0
    assert metrics["accuracy__DemoWorld-future-mean"] == pytest.approx(50.0)
    assert metrics["accuracy__DemoWorld-single-mean"] == pytest.approx(100.0)
    assert metrics["accuracy__DemoWorld-motion-mean"] == pytest.approx(100 * 2 / 3)
    assert metrics["chance__DemoWorld-red-stop"] == pytest.approx(100 * chance_level("red-stop"))
    assert scores.counts == {t: 2 for types in GROUP_TYPES.values() for t in types}
    columns = dict(family.columns)
    assert {"floor-count", "red-stop", "future mean"} <= set(columns)
    assert columns["future mean"] == "accuracy__DemoWorld-future-mean"
    assert [label for label, _ in family.columns][-1] == "motion mean"
    table = benchmark_table(family, metrics, "fake", "fake")
    assert "| floor-count | red-stop | future mean |" in table


def test_the_validation_twin_reads_the_val_splits_with_the_same_keys(world_root: Path, tmp_path: Path) -> None:
    held_out, validation = DemoWorld(), DemoWorldVal()
    assert get_benchmark("demo-world-val").name == validation.name == "demo-world-val"
    assert BENCHMARKS["demo-world-val"] is DemoWorldVal and "demo-world-val" not in PAPER_BENCHMARKS
    assert validation.directory != held_out.directory and validation.dataset_id != held_out.dataset_id
    assert validation.columns == held_out.columns
    for family in (held_out, validation):
        family.prepare(tmp_path, raw_dir=world_root, log=lambda _: None)
    eval_records, val_records = held_out.load_records(tmp_path), validation.load_records(tmp_path)
    assert list(val_records) == [r["id"] for g in GROUP_TYPES for r in records(world_root / f"val-{g}.json")]
    assert not set(val_records) & set(eval_records)
    assert {r["split"] for r in val_records.values()} == {"val-single", "val-future", "val-motion"}
    eval_scores = held_out.score(eval_records, _predict(eval_records, wrong=("count",)))
    val_scores = validation.score(val_records, _predict(val_records, wrong=("count",)))
    assert set(val_scores.metrics) == set(eval_scores.metrics)
    assert val_scores.metrics == pytest.approx(eval_scores.metrics)  # the same right and wrong types
    assert val_scores.counts == {t: 1 for types in GROUP_TYPES.values() for t in types}


def test_a_raw_dir_without_some_splits_scores_those_it_has(world_root: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "images").symlink_to(world_root / "images")
    for split in ("eval-single", "eval-future"):
        (raw / f"{split}.json").write_bytes((world_root / f"{split}.json").read_bytes())
    logged: list[str] = []
    family = DemoWorld()
    family.prepare(tmp_path / "eval-data", raw_dir=raw, log=logged.append)
    assert any("no eval-motion.json" in line for line in logged)
    metadata = family.load_records(tmp_path / "eval-data")
    metrics = family.score(metadata, _predict(metadata, ())).metrics
    assert "accuracy__DemoWorld-future-mean" in metrics and "accuracy__DemoWorld-motion-mean" not in metrics


def test_a_raw_dir_without_any_split_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both benchmarks generate the falling world there first; a generator that writes nothing: an error.
    empty = tmp_path / "empty"
    empty.mkdir()
    generated: list[Path] = []
    monkeypatch.setattr(demo_world, "build_world_dataset", lambda root, **sizes: generated.append(root))
    with pytest.raises(BenchmarkDataError, match=r"none of \['val-single.json', 'val-future.json'"):
        DemoWorldVal().prepare(tmp_path / "eval-data", raw_dir=empty, log=lambda _: None)
    with pytest.raises(BenchmarkDataError, match=r"none of \['eval-single.json', 'eval-future.json'"):
        DemoWorld().prepare(tmp_path / "eval-data", raw_dir=empty, log=lambda _: None)
    assert generated == [empty, empty]
