"""MMSI-Bench (`mmsi-full`) end to end on the tiny run's model, from a fixture in the raw `MMSI_Bench.parquet` format:
images written out in dataset order, options split off the question (and the fallback when they cannot be), `thought`
kept out of the prompt, an item with more images than the 2 keyframe slots, the accuracies recomputed by hand."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from eval_helpers import COLOURS, run_family
from PIL import Image

from prismatic.eval.benchmark import BenchmarkDataError, EvalItem
from prismatic.eval.benchmarks.mmsi import MMSI, canonical_type, split_question
from prismatic.eval.predict import keyframe_slots
from prismatic.eval.runner import RunOptions, answer_batch

QUIET = {"log": lambda _: None}
CAM_CAM, MSR, MEAS = "Positional Relationship (Cam.–Cam.)", "MSR", "Attribute (Meas.)"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def jpeg(index: int) -> bytes:
    image = Image.new("RGB", (24, 24), COLOURS[index % len(COLOURS)])
    image.putpixel((index % 24, 0), (index % 256, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


ROWS = [
    {"id": 0, "n": 2, "question_type": CAM_CAM, "answer": "B",
     "question": "Image 1 is taken first. Where is camera 2 relative to camera 1?\n"
                 "Options: A: Front-left, B: Behind, slightly right, C: Left, D: Right"},
    {"id": 1, "n": 2, "question_type": CAM_CAM, "answer": "A",
     "question": "Which way did the camera turn? Options: A: left, B: right, C: up, D: down"},
    {"id": 2, "n": 2, "question_type": MEAS, "answer": "D",
     "question": "How far apart are the two chairs?\nOptions: A: 1 m, B: 2 m, C: 3 m, D: 4 m"},
    {"id": 3, "n": 5, "question_type": MSR, "answer": "C",
     "question": "Walking through the five views in order, where is the door? Options: A: ahead, B: behind, "
                 "C: on the left, D: on the right"},
    {"id": 4, "n": 2, "question_type": MEAS, "answer": "C",
     "question": "Which object is taller (no option list in this one)?"},
]  # fmt: skip


def write_mmsi_raw(data_root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = data_root / "mmsi" / "download"
    raw.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "id": [r["id"] for r in ROWS],
        "images": [[jpeg(10 * r["id"] + k) for k in range(r["n"])] for r in ROWS],
        "question_type": [r["question_type"] for r in ROWS],
        "question": [r["question"] for r in ROWS],
        "answer": [r["answer"] for r in ROWS],
        "thought": [f"SECRET-REASONING the answer is {r['answer']}" for r in ROWS],
    })  # fmt: skip
    pq.write_table(table, raw / "MMSI_Bench.parquet")
    return raw


def test_split_question_formats() -> None:
    assert split_question("Q?\nOptions: A: x, y, B: (z), C: w.") == ("Q?", ["x, y", "(z)", "w."])
    assert split_question("At point A. what is it? Options: A: one, B: two") == ("At point A. what is it?",
                                                                                  ["one", "two"])  # fmt: skip
    assert split_question("Q? A. one B. two C. three") == ("Q?", ["one", "two", "three"])
    assert split_question("Q? Options: A: only one") is None
    assert split_question("Q without options") is None
    assert split_question("Options: A: x, B: y") is None  # no stem


def test_mmsi_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    data_root, results = tmp_path / "data", tmp_path / "results"
    write_mmsi_raw(data_root)
    benchmark = MMSI(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, data_root, results)

    # Images written as <id>_<k>.jpg, named in dataset order, relative to the data root.
    records = benchmark.load_records(data_root)
    assert list(records) == [str(r["id"]) for r in ROWS]
    for row in ROWS:
        paths = records[str(row["id"])]["img_paths"]
        assert paths == [f"mmsi/download/images/{row['id']}_{k}.jpg" for k in range(row["n"])]
        assert [(data_root / p).read_bytes() for p in paths] == [jpeg(10 * row["id"] + k) for k in range(row["n"])]

    # The protocol's messages: stem, lettered options, the instruction; the unparsable one whole, candidates A-D.
    items = {item.id: item for item in benchmark.items(records)}
    assert items["0"].message == ("Image 1 is taken first. Where is camera 2 relative to camera 1?\nA. Front-left\n"
                                  f"B. Behind, slightly right\nC. Left\nD. Right\n{INSTRUCTION}")  # fmt: skip
    assert items["4"].message == f"Which object is taller (no option list in this one)?\n{INSTRUCTION}"
    assert all(item.candidates == ("A", "B", "C", "D") for item in items.values())
    assert len(items["3"].images) == 5
    assert not any("SECRET" in item.message for item in items.values())
    assert "thought" not in records["0"]

    # By hand: per type and micro average over the saved answers.
    hits = {str(r["id"]): predictions[str(r["id"])].answer == r["answer"] for r in ROWS}
    for question_type in (CAM_CAM, MSR, MEAS):
        members = [str(r["id"]) for r in ROWS if r["question_type"] == question_type]
        assert metrics[f"accuracy__MMSI-{question_type}"] == pytest.approx(
            100 * sum(hits[q] for q in members) / len(members))  # fmt: skip
    assert metrics["accuracy__MMSI-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(ROWS))
    assert all(set(p.probabilities) == set("ABCD") for p in predictions.values())

    folder = results / tiny_fingerprint.tag / "mmsi"
    run = json.loads((folder / "run.json").read_text())
    assert keyframe_slots(tiny_vlm) == 2
    assert run["multi_image"]["items_with_more_images_than_slots"] == 1  # the 5-image MSR item
    tables = (folder.parent / "results.md").read_text()
    assert "1 item(s) had more images than the 2 keyframe slots; the 'subsample' policy chose which to keep" in tables
    notes = json.loads((folder / "results.json").read_text())["notes"]
    assert any(note.startswith("1 question(s) had options that could not be split off") for note in notes)

    # The 5-image item scores as if given the subsampled images (first and last of 5 for 2 slots).
    subsampled = EvalItem("3", items["3"].message, (items["3"].images[0], items["3"].images[4]), items["3"].candidates)
    (alone,) = answer_batch(tiny_vlm, [subsampled], data_root, RunOptions(), 1)
    assert alone.answer == predictions["3"].answer
    for letter, probability in alone.probabilities.items():
        assert probability == pytest.approx(predictions["3"].probabilities[letter], abs=1e-5)


def test_mmsi_counts_missing_file_and_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_mmsi_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 5 questions in MMSI_Bench\.parquet, the protocol expects 1000"):
        MMSI().prepare(tmp_path / "data", **QUIET)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(BenchmarkDataError, match=r"pip install -e \.\[eval\]"):
        MMSI(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    (raw / "MMSI_Bench.parquet").unlink()
    with pytest.raises(BenchmarkDataError, match=r"MMSI_Bench\.parquet is missing.*RunsenXu/MMSI-Bench"):
        MMSI(strict_counts=False).prepare(tmp_path / "data", **QUIET)


# Real MMSI-Bench questions (hub split, ids 0 / 333 / 666 / 999, gold C / B / B / B) as public evaluation logs print
# them verbatim; id 0 is a "Motion (Cam.)" question.
REAL_QUESTIONS = {
    0: "The images are taken continuously from a first-person perspective. In which direction are you moving?\n"
       "Options: A: Left while moving backward, B: Forward to the left, C: Forward to the right, D: Right while moving "
       "backward",
    333: "Two pictures are taken consecutively from a first-person perspective. At the moment of the last picture, in "
         "which direction is the brown cabinet relative to you?\nOptions: A: Right, B: Behind, C: Left, D: In front",
    666: "The picture is a first-person continuous shot. What is the motion state of the blue car closest to you in "
         "the image?\nOptions: A: Moving to the right, B: Stationary, C: Moving to the left, D: Moving forward",
    999: "Continuous shooting from a first-person perspective, with the direction in Photo 1 as the front, what is the "
         "position of the shooting location in Photo 2 relative to the shooting location in Photo 1?\nOptions: A: "
         "Right, B: Front, C: Back, D: Left",
}  # fmt: skip


def test_split_question_on_real_questions() -> None:
    assert split_question(REAL_QUESTIONS[0]) == (
        "The images are taken continuously from a first-person perspective. In which direction are you moving?",
        ["Left while moving backward", "Forward to the left", "Forward to the right", "Right while moving backward"],
    )
    assert split_question(REAL_QUESTIONS[333])[1] == ["Right", "Behind", "Left", "In front"]
    assert split_question(REAL_QUESTIONS[666])[1] == ["Moving to the right", "Stationary", "Moving to the left",
                                                      "Moving forward"]  # fmt: skip
    stem, options = split_question(REAL_QUESTIONS[999])
    assert stem.endswith("relative to the shooting location in Photo 1?") and options == ["Right", "Front", "Back",
                                                                                          "Left"]  # fmt: skip


def test_mmsi_real_row_and_legacy_type_names(tmp_path: Path) -> None:
    """Question 0 as the hub parquet holds it, beside a fixture row carrying the legacy ASCII-hyphen type name that
    lmms-eval aliases ("Positional Relationship (Cam.-Obj.)"): read under the en-dash name, counted in its column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert canonical_type("Positional Relationship (Cam.-Obj.)") == "Positional Relationship (Cam.–Obj.)"
    assert canonical_type("MSR") == "MSR"
    raw = tmp_path / "data" / "mmsi" / "download"
    raw.mkdir(parents=True)
    pq.write_table(pa.table({
        "id": [0, 1],
        "images": [[jpeg(0), jpeg(1)], [jpeg(2), jpeg(3)]],
        "question_type": ["Motion (Cam.)", "Positional Relationship (Cam.-Obj.)"],
        "question": [REAL_QUESTIONS[0], "Where is the lamp relative to camera 2?\nOptions: A: Left, B: Right"],
        "answer": ["C", "B"],
        "thought": ["...", "..."],
    }), raw / "MMSI_Bench.parquet")  # fmt: skip
    logs: list[str] = []
    records = MMSI(strict_counts=False).build_records(raw, tmp_path / "data", logs.append)
    assert records["0"]["question_type"] == "Motion (Cam.)" and records["0"]["answer"] == "C"
    assert records["0"]["choices"][2] == "Forward to the right"
    assert records["1"]["question_type"] == "Positional Relationship (Cam.–Obj.)"
    assert not any("outside the paper's columns" in line for line in logs)
    assert any("found 1 'Positional Relationship (Cam.–Obj.)' questions" in line for line in logs)
