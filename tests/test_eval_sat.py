"""SAT (`sat-full`, the synthetic val split) end to end on the tiny run's model, from a fixture in the raw
`SAT_val.parquet` format (datasets `Image` structs): answers lettered in a fixed per-item shuffled order, the gold
letter from `correct_answer`, the "Act. Seq." column mapping, an item with more images than the 2 keyframe slots,
the accuracies recomputed by hand."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from eval_helpers import COLOURS, run_family
from PIL import Image

from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks.sat import SAT, column_types

QUIET = {"log": lambda _: None}
INSTRUCTION = "Answer with the option's letter from the given choices directly."

ROWS = [
    {"n": 2, "question_type": "obj_movement", "question": "Did the sofa move closer or further?",
     "answers": ["closer", "further"], "correct_answer": "further"},
    {"n": 2, "question_type": "ego_movement", "question": "How did the camera rotate?",
     "answers": ["rotated left", "rotated right"], "correct_answer": "rotated left"},
    {"n": 1, "question_type": "action_consequence", "question": "If I turn right, will the lamp be on my left?",
     "answers": ["yes", "no"], "correct_answer": " No"},  # matched after stripping and case-folding
    {"n": 1, "question_type": "action_consequence", "question": "Which object gets closer if I walk forward?",
     "answers": ["the table", "the bed", "the door"], "correct_answer": "the door"},
    {"n": 2, "question_type": "goal_aim", "question": "Which way should I turn to face the fridge?",
     "answers": ["left", "right"], "correct_answer": "right"},
    {"n": 3, "question_type": "perspective", "question": "From the chair's view, is the plant to the left?",
     "answers": ["yes", "no"], "correct_answer": "yes"},  # 3 images (beyond the real split's 2) for the slots test
]  # fmt: skip


def image_bytes(index: int, png: bool) -> bytes:
    image = Image.new("RGB", (24, 24), COLOURS[index % len(COLOURS)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if png else "JPEG")
    return buffer.getvalue()


def write_sat_raw(data_root: Path, rows: list[dict] = ROWS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = data_root / "sat" / "download"
    raw.mkdir(parents=True, exist_ok=True)
    images = [[{"bytes": image_bytes(10 * i + k, png=i == 0), "path": None} for k in range(r["n"])]
              for i, r in enumerate(rows)]  # fmt: skip
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image_bytes": pa.array(images, type=pa.list_(struct)),
        "question": [r["question"] for r in rows],
        "answers": [r["answers"] for r in rows],
        "question_type": [r["question_type"] for r in rows],
        "correct_answer": [r["correct_answer"] for r in rows],
    })  # fmt: skip
    pq.write_table(table, raw / "SAT_val.parquet")
    return raw


def test_sat_column_mapping_prefers_action_sequence() -> None:
    assert column_types({"ego_movement", "goal_aim"})["Act. Seq."] == "ego_movement"
    assert column_types({"ego_movement", "action_sequence"})["Act. Seq."] == "action_sequence"
    assert "Act. Seq." not in column_types({"goal_aim"})


def test_sat_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    data_root, results = tmp_path / "data", tmp_path / "results"
    write_sat_raw(data_root)
    benchmark = SAT(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, data_root, results)

    records = benchmark.load_records(data_root)
    assert list(records) == [str(i) for i in range(len(ROWS))]
    assert records["0"]["img_paths"] == ["sat/download/images/val_0_0.png", "sat/download/images/val_0_1.png"]
    assert records["5"]["img_paths"] == [f"sat/download/images/val_5_{k}.jpg" for k in range(3)]
    assert (data_root / records["1"]["img_paths"][1]).read_bytes() == image_bytes(11, png=False)

    items = {item.id: item for item in benchmark.items(records)}
    # The options in a fixed per-item order: Python's Random seeded with "sat-<row>" shuffles the file's positions.
    orders = {}
    for i, row in enumerate(ROWS):
        order = list(range(len(row["answers"])))
        random.Random(f"sat-{i}").shuffle(order)
        orders[str(i)] = order
    assert orders["3"] == [1, 2, 0]  # fixed across machines and runs
    assert items["3"].message == (f"Which object gets closer if I walk forward?\nA. the bed\nB. the door\nC. the table\n"
                                  f"{INSTRUCTION}")  # fmt: skip
    assert items["3"].candidates == ("A", "B", "C") and items["0"].candidates == ("A", "B")
    assert records["3"]["answers_in_file_order"] == ROWS[3]["answers"]

    # By hand: gold letter = where correct_answer (stripped, case-folded) landed; per type; micro average.
    gold = {}
    for i, row in enumerate(ROWS):
        position = [a.lower() for a in row["answers"]].index(row["correct_answer"].strip().lower())
        gold[str(i)] = "ABC"[orders[str(i)].index(position)]
    assert gold == {"0": "B", "1": "A", "2": "A", "3": "B", "4": "A", "5": "B"}
    hits = {qid: predictions[qid].answer == letter for qid, letter in gold.items()}
    for question_type in ("obj_movement", "ego_movement", "action_consequence", "goal_aim", "perspective"):
        members = [str(i) for i, r in enumerate(ROWS) if r["question_type"] == question_type]
        assert metrics[f"accuracy__SAT-{question_type}"] == pytest.approx(
            100 * sum(hits[q] for q in members) / len(members))  # fmt: skip
    assert metrics["accuracy__SAT-Act. Seq."] == metrics["accuracy__SAT-ego_movement"]
    assert metrics["accuracy__SAT-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(ROWS))
    assert set(predictions["3"].probabilities) == {"A", "B", "C"}

    folder = results / tiny_fingerprint.tag / "sat"
    run = json.loads((folder / "run.json").read_text())
    assert run["multi_image"]["items_with_more_images_than_slots"] == 1
    notes = json.loads((folder / "results.json").read_text())["notes"]
    assert "Act. Seq. = question_type 'ego_movement' (UNVERIFIED mapping of the paper's column)." in notes
    assert any(note.startswith("The gold letter is A for 50.0% of items") for note in notes)
    table = (results / tiny_fingerprint.tag / "results.md").read_text()
    assert "| Obj Move. | Act. Seq. | Act. Cons. | Goal Aim | Persp. | Avg. |" in table


def test_sat_counts_bad_answer_and_missing_file(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    raw = write_sat_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 6 questions in SAT_val\.parquet, the protocol expects 4001"):
        SAT().prepare(tmp_path / "data", **QUIET)
    table = pq.read_table(raw / "SAT_val.parquet")
    broken = table.set_column(4, "correct_answer", [[r["correct_answer"] for r in ROWS[:-1]] + ["maybe"]])
    pq.write_table(broken, raw / "SAT_val.parquet")
    with pytest.raises(BenchmarkDataError, match="row 5: correct_answer 'maybe' is not one of its answers"):
        SAT(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    (raw / "SAT_val.parquet").unlink()
    with pytest.raises(BenchmarkDataError, match=r"SAT_val\.parquet is missing.*array/SAT"):
        SAT(strict_counts=False).prepare(tmp_path / "data", **QUIET)


# Real SAT questions: an obj_movement train question as quoted in the R4D paper, and the camera-rotation question and
# answers that the authors' upload script (arijitray1993/r2d3 scripts/3d_reasoning_qas/huggingface/upload_data_hf.py)
# writes; that script sets correct_answer = answers[0] and question_type from the question's text.
REAL_ROWS = [
    {"n": 2, "question_type": "obj_movement",
     "question": "Were any of the objects in the initial frame that you can still see in the second frame moved from "
                 "their original positions?",
     "answers": ["green tapered square potted houseplant was moved right and towards the camera in the first frame",
                 "green tapered square potted houseplant was moved left and away from the camera in the first frame"],
     "correct_answer": "green tapered square potted houseplant was moved right and towards the camera in the first "
                       "frame"},
    {"n": 2, "question_type": "action_sequence",
     "question": "How did the camera rotate from the first image to the second image?",
     "answers": ["did not move", "rotated left"], "correct_answer": "did not move"},
]  # fmt: skip


def test_sat_real_rows(tmp_path: Path) -> None:
    write_sat_raw(tmp_path / "data", REAL_ROWS)
    benchmark = SAT(strict_counts=False)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    assert [r["answer"] for r in records.values()] == ["A", "A"]  # rows 0 and 1 keep the file order ([0, 1])
    assert [r["question_type"] for r in records.values()] == ["obj_movement", "action_sequence"]
    items = benchmark.items(records)
    assert items[0].message.startswith(f"{REAL_ROWS[0]['question']}\nA. green tapered square potted houseplant was "
                                       "moved right and towards the camera in the first frame\nB. ")  # fmt: skip
    scores = benchmark.score(records, {"0": Prediction("0", "A"), "1": Prediction("1", "B")})
    assert scores.metrics["accuracy__SAT-Act. Seq."] == scores.metrics["accuracy__SAT-action_sequence"] == 0.0
    assert scores.metrics["accuracy__SAT-obj_movement"] == 100.0
    assert "Act. Seq. = question_type 'action_sequence'." in scores.notes
    assert any(note.startswith("The gold letter is A for 100.0% of items (answers offered in a fixed") for note in
               scores.notes)  # fmt: skip
