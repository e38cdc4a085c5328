"""SpatialMM-Obj end to end on the tiny run's model, from fixtures in the raw format of FatemehShiri/Spatial-MM
(options inline in `question`, answer "<letter>. <text>"): the parsed prompt, letter candidates per item, an item
with a missing image dropped and counted, a letter/text mismatch scored by letter, accuracies recomputed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError
from prismatic.eval.benchmarks.spatial_mm import SpatialMM

QUIET = {"log": lambda _: None}

ONE_OBJ = [
    ("Which direction is the cat facing from camera's perspective?", ["left", "right", "bottom", "front"], "B. right"),
    ("Where is the dog located from camera's perspective?", ["middle", "bottom", "left", "right"], "C. middle"),
    ("Is the chair in the top corner of this image?", ["yes", "no"], "B. no"),
    ("Which hand is the person using to point?", ["left", "right"], "A. left"),
]  # the second item's letter C points at "left", not "middle": scored by the letter
TWO_OBJ = [
    ("In which hand is the man holding the glass?", ["left", "right"], "B. right"),
    ("Where is the building in relation to the wall from camera's perspective?",
     ["right", "front", "behind", "below"], "C. behind"),
    ("Where is the boy from the man's perspective?", ["behind", "right", "front", "left"], "D. left"),
    ("Is the glass touching the watch?", ["yes", "no"], "A. yes"),
    ("Where is the cat in relation to the armchair?", ["behind", "under", "top", "front"], "C. top"),
]  # fmt: skip
MISSING = "two-3"  # its image is not in the download


def write_spatial_mm_raw(data_root: Path) -> None:
    raw = data_root / "spatial-mm-obj" / "download"
    for file_name, items, prefix, object2 in (("spatial_mm_one_obj.json", ONE_OBJ, "a", ""),
                                              ("spatial_mm_two_obj.json", TWO_OBJ, "b", "table")):  # fmt: skip
        rows = []
        for i, (stem, options, answer) in enumerate(items):
            question = stem + "".join(f"\n{chr(65 + k)}. {text}" for k, text in enumerate(options))
            image = f"{prefix}{i:09x}.jpg"
            if f"{'one' if prefix == 'a' else 'two'}-{i}" != MISSING:
                write_image(raw / "images" / image, i + (10 if prefix == "b" else 0))
            rows.append({"image_name": image, "question": question, "answer": answer, "object1": "thing",
                         "object2": object2})  # fmt: skip
        (raw / file_name).write_text(json.dumps(rows, indent=4))


def test_spatial_mm_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    write_spatial_mm_raw(tmp_path / "data")
    benchmark = SpatialMM(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results")

    records = benchmark.load_records(tmp_path / "data")
    expected_ids = [f"one-{i}" for i in range(len(ONE_OBJ))] + [f"two-{i}" for i in range(len(TWO_OBJ))]
    assert list(records) == [q for q in expected_ids if q != MISSING]
    gold = {f"one-{i}": item for i, item in enumerate(ONE_OBJ)} | {f"two-{i}": item for i, item in enumerate(TWO_OBJ)}

    # The prompt: the stem, the options re-lettered by the protocol's prompt, the letter instruction.
    items = {item.id: item for item in benchmark.items(records)}
    for qid, item in items.items():
        stem, options, _ = gold[qid]
        lettered = "\n".join(f"{chr(65 + k)}. {text}" for k, text in enumerate(options))
        assert item.message == f"{stem}\n{lettered}\nAnswer with the option's letter from the given choices directly."
        assert item.candidates == tuple("ABCD"[: len(options)])
        assert set(predictions[qid].probabilities) == set(item.candidates)

    # By hand: correct = predicted letter == the answer's first character (the mismatched item too).
    hits = {qid: predictions[qid].answer == gold[qid][2][0] for qid in records}
    one = [q for q in records if q.startswith("one-")]
    two = [q for q in records if q.startswith("two-")]
    assert metrics["accuracy__SpatialMM-one-obj"] == pytest.approx(100 * sum(hits[q] for q in one) / len(one))
    assert metrics["accuracy__SpatialMM-two-obj"] == pytest.approx(100 * sum(hits[q] for q in two) / len(two))
    assert metrics["accuracy__SpatialMM-Obj"] == pytest.approx(100 * sum(hits.values()) / len(hits))

    assert [q for q, r in records.items() if r["answer_text_mismatch"]] == ["one-1"]
    results = json.loads((tmp_path / "results" / tiny_fingerprint.tag / "spatial-mm-obj" / "results.json").read_text())
    assert results["counts"] == {"one-obj": 4, "two-obj": 4, "SpatialMM-Obj": 8}
    notes = " ".join(results["notes"])
    assert "spatial_mm_two_obj.json: 4 of 1074 items scored" in notes and "1 item(s) have an answer letter" in notes


def test_spatial_mm_counts_and_missing_files(tmp_path: Path) -> None:
    write_spatial_mm_raw(tmp_path / "data")
    raw = tmp_path / "data" / "spatial-mm-obj" / "download"
    with pytest.raises(BenchmarkDataError, match=r"found 4 items in spatial_mm_one_obj\.json.*expects 502"):
        SpatialMM(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (raw / "spatial_mm_two_obj.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"spatial_mm_two_obj\.json is missing.*FatemehShiri/Spatial-MM"):
        SpatialMM(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    # Without the images folder nothing is silently skipped: the folder is named, with where to get it.
    write_spatial_mm_raw(tmp_path / "data")
    for path in (raw / "images").iterdir():
        path.unlink()
    with pytest.raises(BenchmarkDataError, match="9 image"):
        SpatialMM(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    (raw / "images").rmdir()
    with pytest.raises(BenchmarkDataError, match=r"images is missing.*Google Drive"):
        SpatialMM(strict_counts=False).prepare(tmp_path / "data", **QUIET)


def test_spatial_mm_real_records(tmp_path: Path) -> None:
    """Verbatim items of FatemehShiri/Spatial-MM's two files: 4- and 2-option questions, the stray leading quote of
    6898464256, and two of the six letter/text mismatches (b2a8fdeff0 "C. middle" where C is "left"; a213089337
    "D. front" where D is "back"), scored by the letter and flagged."""
    raw = tmp_path / "data" / "spatial-mm-obj" / "download"
    one = [
        {"image_name": "1b875201ff.jpg", "question": "Which direction is elephant facing from camera's perspective?"
         "\nA. left\nB. right\nC. bottom\nD. front", "answer": "B. right", "object1": "elephant", "object2": ""},
        {"image_name": "b2a8fdeff0.jpg", "question": "Where is the steering wheel located from camera's perspective?"
         "\nA. middle\nB. bottom\nC. left\nD. right", "answer": "C. middle", "object1": "steering wheel",
         "object2": ""},
        {"image_name": "8087a6bee7.jpg", "question": "Is the chair located in the top corner of this image?\nA. yes"
         "\nB. no", "answer": "B. no", "object1": "chair", "object2": ""},
    ]  # fmt: skip
    two = [
        {"image_name": "75a3568a9a.jpg", "question": "In which hand is the man holding the glass?\nA. left\nB. right",
         "answer": "B. right", "object1": "man", "object2": "glass"},
        {"image_name": "6898464256.jpg", "question": "\"To which ear of the cows is the number attached?\nA. left"
         "\nB. right", "answer": "B. right", "object1": "number", "object2": "cows"},
        {"image_name": "a213089337.jpg", "question": "Where is the dog from the woman's perspective?\nA. right\nB. "
         "front\nC. left\nD. back", "answer": "D. front", "object1": "dog", "object2": "woman"},
    ]  # fmt: skip
    (raw / "images").mkdir(parents=True)
    (raw / "spatial_mm_one_obj.json").write_text(json.dumps(one, indent=4))
    (raw / "spatial_mm_two_obj.json").write_text(json.dumps(two, indent=4))
    records = SpatialMM(strict_counts=False).build_records(raw, tmp_path / "data", lambda _: None)
    assert list(records) == ["one-0", "one-1", "one-2", "two-0", "two-1", "two-2"]
    assert records["one-0"]["stem"] == "Which direction is elephant facing from camera's perspective?"
    assert records["one-0"]["options"] == ["left", "right", "bottom", "front"]
    assert records["one-2"]["options"] == ["yes", "no"] and records["one-2"]["answer_letter"] == "B"
    assert records["two-1"]["stem"] == '"To which ear of the cows is the number attached?'
    assert [qid for qid, r in records.items() if r["answer_text_mismatch"]] == ["one-1", "two-2"]
    assert records["one-1"]["answer_letter"] == "C" and records["two-2"]["answer_letter"] == "D"
