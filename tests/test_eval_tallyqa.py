"""TallyQA (`tally-qa-slim`) end to end on the tiny run's model, from a fixture in the raw `test.json` format: the
per-split slim selection, the A..P prompt, and the accuracies recomputed by hand from the saved predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks.tallyqa import TallyQA

QUIET = {"log": lambda _: None}
PER_SPLIT = 3


def write_tallyqa_raw(data_root: Path) -> list[dict]:
    """A `test.json` of 10 questions (6 simple, 4 complex; one answer of 17, beyond the choices) over VG and COCO
    images, as the TallyQA zip lays them out."""
    raw = data_root / "tallyqa" / "download"
    folders = ["VG_100K", "VG_100K_2", "val2014"]
    rows = []
    for i in range(10):
        image = f"{folders[i % 3]}/{1000 + i}.jpg"
        write_image(raw / image, i)
        rows.append({"answer": 17 if i == 4 else i % 4, "data_source": "imported_genome", "image": image,
                     "image_id": 1000 + i, "issimple": i % 5 < 3, "question": f"How many things number {i}?",
                     "question_id": 500 + 7 * i})  # fmt: skip
    (raw / "test.json").write_text(json.dumps(rows))
    return rows


def expected_selection(rows: list[dict], size: int) -> list[str]:
    """vlm-evaluation's rule, re-implemented: shuffle the ids (raw order) with Random(21), first `size` per split."""
    ids = [str(r["question_id"]) for r in rows]
    split = {str(r["question_id"]): "simple" if r["issimple"] else "complex" for r in rows}
    random.Random(21).shuffle(ids)
    taken = {"simple": 0, "complex": 0}
    selected = []
    for qid in ids:
        if taken[split[qid]] < size:
            taken[split[qid]] += 1
            selected.append(qid)
    return selected


def small_tallyqa(strict_counts: bool = False) -> TallyQA:
    benchmark = TallyQA(strict_counts=strict_counts)
    benchmark.slim_size = PER_SPLIT
    return benchmark


def test_tallyqa_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    rows = write_tallyqa_raw(tmp_path / "data")
    benchmark = small_tallyqa()
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results")

    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == expected_selection(rows, PER_SPLIT)
    assert records[next(iter(records))]["img_path"].startswith("tallyqa/download/")

    # The protocol's message: question, "A. 0" .. "P. 15", the letter instruction; closed form over A..P.
    item = benchmark.items(records)[0]
    lines = item.message.split("\n")
    assert lines[1] == "A. 0" and lines[16] == "P. 15" and lines[-1].startswith("Answer with the option's letter")
    assert item.candidates == tuple("ABCDEFGHIJKLMNOP")

    # By hand: predicted count = letter index; pooled final accuracy.
    gold = {str(r["question_id"]): r for r in rows}
    hits = {qid: "ABCDEFGHIJKLMNOP".index(predictions[qid].answer) == gold[qid]["answer"] for qid in records}
    for split, flag in (("simple", True), ("complex", False)):
        members = [qid for qid in records if gold[qid]["issimple"] is flag]
        assert metrics[f"accuracy__TallyQA-{split}-Accuracy"] == pytest.approx(
            100 * sum(hits[q] for q in members) / len(members)
        )
    assert metrics["accuracy__TallyQA-final-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(hits))
    assert all(set(p.probabilities) == set("ABCDEFGHIJKLMNOP") for p in predictions.values())

    # Answers above 15 are counted in the notes.
    results = json.loads((tmp_path / "results" / tiny_fingerprint.tag / "tallyqa" / "results.json").read_text())
    assert [q for q in records if gold[q]["answer"] > 15] == ["528"]  # the fixture's answer of 17 is selected
    assert any(note.startswith("1 item(s) have an answer above 15") for note in results["notes"])
    assert not hits["528"]


def test_tallyqa_counts_and_missing_files(tmp_path: Path) -> None:
    write_tallyqa_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match="38589"):
        small_tallyqa(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (tmp_path / "data" / "tallyqa" / "download" / "test.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"test\.json.*manoja328/tallyqa"):
        small_tallyqa().prepare(tmp_path / "data", **QUIET)


def test_tallyqa_real_record(tmp_path: Path) -> None:
    """The record manoja328/tallyqa's README prints as a `test.json`/`train.json` entry (a Python repr there)."""
    raw = tmp_path / "data" / "tallyqa" / "download"
    real = {"answer": 4, "data_source": "imported_genome", "image": "VG_100K_2/2410408.jpg", "image_id": 92410408,
            "issimple": False, "question": "How many headlights does the black bus have?",
            "question_id": 30095774}  # fmt: skip
    write_image(raw / real["image"], 0)
    (raw / "test.json").write_text(json.dumps([real]))
    small_tallyqa().prepare(tmp_path / "data", **QUIET)
    records = TallyQA().load_records(tmp_path / "data")
    assert records == {"30095774": {"question_id": 30095774, "question": "How many headlights does the black bus have?",
                                    "img_path": "tallyqa/download/VG_100K_2/2410408.jpg", "answer": 4,
                                    "split": "complex"}}  # fmt: skip
    item = TallyQA().items(records)[0]
    assert item.message.startswith("How many headlights does the black bus have?\nA. 0\nB. 1\n")
    assert "\nP. 15\n" in item.message
    scores = TallyQA().score(records, {"30095774": Prediction("30095774", "E")})  # E = the fifth choice, "4"
    assert scores.metrics["accuracy__TallyQA-complex-Accuracy"] == scores.metrics["accuracy__TallyQA-final-Accuracy"]
    assert scores.metrics["accuracy__TallyQA-final-Accuracy"] == 100.0
