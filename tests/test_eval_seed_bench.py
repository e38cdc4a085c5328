"""SEED-Bench (image questions) end to end on the tiny run's model, from a fixture in the hub copy's parquet format
(lmms-lab/SEED-Bench: images embedded, video rows to leave out), and `prepare` from the official SEED-Bench.json
layout; accuracies (overall and per dimension) recomputed by hand from the saved predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError
from prismatic.eval.benchmarks.seed_bench import SEEDBench

QUIET = {"log": lambda _: None}
TYPE_IDS = [1, 5, 5, 6, 9, 1, 3, 5]  # the image questions' dimensions, in raw order


def question_rows() -> list[dict]:
    """Eight image questions (ids "100".."107") and two video questions, interleaved, in the raw schema."""
    rows = []
    for i, type_id in enumerate(TYPE_IDS):
        rows.append({"question_id": str(100 + i), "question": f"What is shown in picture {i}?",
                     "choice_a": f"a{i}", "choice_b": f"b{i}", "choice_c": f"c{i}", "choice_d": f"d{i}",
                     "answer": "ABCD"[(3 * i) % 4], "data_type": "image", "data_id": f"{i}_{7 * i}.jpg",
                     "question_type_id": type_id})  # fmt: skip
        if i in (2, 5):
            rows.append({"question_id": f"v{i}", "question": "What happens next?", "choice_a": "x", "choice_b": "y",
                         "choice_c": "z", "choice_d": "w", "answer": "B", "data_type": "video",
                         "data_id": f"{i}.webm", "question_type_id": 10})  # fmt: skip
    return rows


def write_seed_hub_raw(data_root: Path, scratch: Path) -> list[dict]:
    """The rows as two parquet files under `data/` (sorted order = raw order), images as bytes (JPEG and PNG)."""
    raw = data_root / "seed-bench" / "download"
    rows = question_rows()
    for index, row in enumerate(rows):
        suffix = ".png" if index % 3 == 0 else ".jpg"
        count = 1 if row["data_type"] == "image" else 2  # video rows carry frames
        row["image"] = [{"bytes": write_image(scratch / f"{index}-{k}{suffix}", index + k).read_bytes(), "path": None}
                        for k in range(count)]  # fmt: skip
    (raw / "data").mkdir(parents=True, exist_ok=True)
    half = 5
    for name, part in (("test-00000-of-00002.parquet", rows[:half]), ("test-00001-of-00002.parquet", rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), raw / "data" / name)
    return rows


def test_seed_bench_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    rows = write_seed_hub_raw(tmp_path / "data", tmp_path / "scratch")
    benchmark = SEEDBench(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results")

    records = benchmark.load_records(tmp_path / "data")
    image_rows = [r for r in rows if r["data_type"] == "image"]
    assert list(records) == [r["question_id"] for r in image_rows]  # raw order, video rows left out
    # The images were written out unchanged, named by question id, with their format's suffix.
    for index, row in enumerate(rows):
        if row["data_type"] == "image":
            suffix = ".png" if index % 3 == 0 else ".jpg"
            written = tmp_path / "data" / records[row["question_id"]]["img_path"]
            assert written.name == row["question_id"] + suffix
            assert written.read_bytes() == row["image"][0]["bytes"]

    item = benchmark.items(records)[0]
    row = image_rows[0]
    assert item.message == (
        f"{row['question']}\nA. {row['choice_a']}\nB. {row['choice_b']}\nC. {row['choice_c']}\n"
        f"D. {row['choice_d']}\nAnswer with the option's letter from the given choices directly."
    )
    assert item.candidates == ("A", "B", "C", "D")

    hits = {r["question_id"]: predictions[r["question_id"]].answer == r["answer"] for r in image_rows}
    assert metrics["accuracy__SEED-image-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(hits))
    names = {1: "Scene-Understanding", 3: "Instance-Attributes", 5: "Instances-Counting", 6: "Spatial-Relation",
             9: "Text-Understanding"}  # fmt: skip
    for type_id, name in names.items():
        members = [r["question_id"] for r in image_rows if r["question_type_id"] == type_id]
        assert metrics[f"accuracy__SEED-{name}"] == pytest.approx(100 * sum(hits[q] for q in members) / len(members))
    assert len([k for k in metrics if k.startswith("accuracy__SEED-")]) == 1 + len(names)


def test_seed_bench_official_json_layout(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "seed-bench" / "download"
    rows = question_rows()
    for i, row in enumerate(rows):
        if row["data_type"] == "image":
            write_image(raw / "SEED-Bench-image" / row["data_id"], i)
    (raw / "SEED-Bench.json").write_text(json.dumps({"questions": rows, "question_type": {"Scene Understanding": 1}}))
    benchmark = SEEDBench(strict_counts=False)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    image_rows = [r for r in rows if r["data_type"] == "image"]
    assert list(records) == [r["question_id"] for r in image_rows]
    assert [r["img_path"] for r in records.values()] == [
        f"seed-bench/download/SEED-Bench-image/{r['data_id']}" for r in image_rows
    ]
    assert [r["answer"] for r in records.values()] == [r["answer"] for r in image_rows]


def test_seed_bench_counts_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_seed_hub_raw(tmp_path / "data", tmp_path / "scratch")
    with pytest.raises(BenchmarkDataError, match=r"found 8 image questions.*expects 14233"):
        SEEDBench(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(BenchmarkDataError, match=r"needs pyarrow.*pip install -e \.\[eval\]"):
        SEEDBench(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    monkeypatch.undo()
    for path in (tmp_path / "data" / "seed-bench" / "download" / "data").iterdir():
        path.unlink()
    with pytest.raises(BenchmarkDataError, match=r"no SEED-Bench\.json and no parquet files.*lmms-lab/SEED-Bench"):
        SEEDBench(strict_counts=False).prepare(tmp_path / "data", **QUIET)


def test_seed_bench_real_records_and_the_files_own_dimension_names(tmp_path: Path) -> None:
    """The image and video examples of AILab-CVC/SEED-Bench's DATASET.md (questions 101669 and v1738, verbatim) and
    its `question_type` map, which numbers "Instance Location" 3 and "Instance Attributes" 4 (other copies swap them):
    the video row is left out, and a dimension is named (and counted) by the file's own map. Question "900" is a
    fixture of dimension 3, to exercise the map."""
    raw = tmp_path / "data" / "seed-bench" / "download"
    questions = [
        {"answer": "A", "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four",
         "data_id": "1454426_2591111986", "data_type": "image", "question": "How many towels are in the image?",
         "question_id": "101669", "question_type_id": 5},
        {"answer": "B", "choice_a": "throwing something in the air and letting it fall",
         "choice_b": "throwing something in the air and catching it",
         "choice_c": "lifting up one end of something, then letting it drop down",
         "choice_d": "poking something so that it falls over", "data_id": "94328.webm", "data_type": "video",
         "question": "What is the action being carried out in the video?", "question_id": "v1738",
         "question_type_id": 10},
        {"answer": "C", "choice_a": "left", "choice_b": "right", "choice_c": "top", "choice_d": "bottom",
         "data_id": "fixture_3.jpg", "data_type": "image", "question": "Where is the cup?", "question_id": "900",
         "question_type_id": 3},
    ]  # fmt: skip
    question_type = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Location": 3, "Instance Attributes": 4,
                     "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
                     "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11,
                     "Procedure Understanding": 12}  # fmt: skip
    for i, name in enumerate(("1454426_2591111986", "fixture_3.jpg")):  # the real data_id has no extension
        (raw / "SEED-Bench-image").mkdir(parents=True, exist_ok=True)
        (raw / "SEED-Bench-image" / name).write_bytes(write_image(tmp_path / f"{i}.jpg", i).read_bytes())
    (raw / "SEED-Bench.json").write_text(json.dumps({"questions": questions, "question_type": question_type}))
    logs: list[str] = []
    benchmark = SEEDBench(strict_counts=False)
    benchmark.prepare(tmp_path / "data", log=logs.append)
    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == ["101669", "900"]
    assert records["101669"]["dimension"] == "Instances Counting"
    assert records["101669"]["choices"] == ["One", "Two", "Three", "Four"] and records["101669"]["answer"] == "A"
    assert records["900"]["dimension"] == "Instance Location"
    assert any("1 questions of dimension 'Instance Location', the SEED-Bench paper lists 978" in line for line in logs)
    from prismatic.eval.benchmark import Prediction

    scores = benchmark.score(records, {"101669": Prediction("101669", "A"), "900": Prediction("900", "B")})
    assert scores.metrics["accuracy__SEED-Instances-Counting"] == 100.0
    assert scores.metrics["accuracy__SEED-Instance-Location"] == 0.0
    assert "accuracy__SEED-Instance-Attributes" not in scores.metrics
