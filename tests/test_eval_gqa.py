"""GQA (`gqa-slim`) end to end on the tiny run's model, from a fixture in the raw `testdev_balanced_questions.json`
format (+ `images/<imageId>.jpg`): the slim selection over the file's key order, the prompt, exact-match accuracy
recomputed by hand from the saved predictions, and hand-made predictions scored to known values."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks.gqa import GQA
from prismatic.eval.paper import paper_numbers
from prismatic.eval.prompts import vqa_prompt
from prismatic.eval.registry import get_benchmark

QUIET = {"log": lambda _: None}
SLIM = 5

# (question, answer, structural type, semantic type)
QUESTIONS = [
    ("Is the cup on the table?", "yes", "verify", "rel"),
    ("What is the man holding?", "table", "query", "rel"),
    ("Which side is the dog on?", "left", "query", "attr"),
    ("Are there both cars and trucks?", "no", "logical", "obj"),
    ("Is the sky blue or grey?", "blue", "choose", "attr"),
    ("Which room is it?", "kitchen", "query", "global"),
    ("Do the shirt and the hat share a colour?", "no", "compare", "attr"),
]


def write_gqa_raw(data_root: Path, balanced: bool = True) -> list[str]:
    """A questions file of 7 questions over 3 images, keyed by question id (not in sorted order); the last one is
    unbalanced unless `balanced`. Returns the ids in file order."""
    raw = data_root / "gqa" / "download"
    rows = {}
    for i, (question, answer, structural, semantic) in enumerate(QUESTIONS):
        qid, image = str(20968379 - 11 * i), f"n{161313 + i % 3}"
        write_image(raw / "images" / f"{image}.jpg", i % 3)
        rows[qid] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": "cup (1)"}],
            "entailed": [], "equivalent": [qid], "question": question, "imageId": image,
            "isBalanced": balanced or i < len(QUESTIONS) - 1, "groups": {"global": None, "local": "10c-cup"},
            "answer": answer, "semanticStr": "select: cup (1)", "annotations": {"answer": {}, "question": {},
            "fullAnswer": {}}, "types": {"detailed": "x", "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}.",
        }  # fmt: skip
    (raw / "testdev_balanced_questions.json").write_text(json.dumps(rows))
    return list(rows)


def expected_selection(qids: list[str], size: int) -> list[str]:
    """vlm-evaluation's rule, re-implemented: the ids in file order, shuffled with Random(21), the first `size`."""
    ids = list(qids)
    random.Random(21).shuffle(ids)
    return ids[:size]


def small_gqa(strict_counts: bool = False, size: int = SLIM) -> GQA:
    benchmark = GQA(strict_counts=strict_counts)
    benchmark.slim_size = size
    return benchmark


def test_gqa_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    qids = write_gqa_raw(tmp_path / "data")
    benchmark = small_gqa()
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results",
                                      max_new_tokens=4)  # fmt: skip

    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == expected_selection(qids, SLIM) and set(predictions) == set(records)
    first = records[next(iter(records))]
    assert first["img_path"].startswith("gqa/download/images/n16131") and first["img_path"].endswith(".jpg")
    item = benchmark.items(records)[0]
    assert item.message == vqa_prompt(first["question"]) and item.candidates == ()

    # By hand: punctuation deleted, lowercased, exact match with the answer.
    clean = {qid: "".join(c for c in p.answer if c not in string.punctuation).lower() for qid, p in predictions.items()}
    hits = {qid: clean[qid] == r["answer"] for qid, r in records.items()}
    assert metrics["accuracy__GQA-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(hits))
    open_items = [qid for qid, r in records.items() if r["structural"] == "query"]
    if open_items:
        assert metrics["accuracy__GQA-Open"] == pytest.approx(100 * sum(hits[q] for q in open_items) / len(open_items))


def test_gqa_scores_hand_made_predictions(tmp_path: Path) -> None:
    qids = write_gqa_raw(tmp_path / "data", balanced=False)
    benchmark = small_gqa(size=1024)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    assert sorted(records) == sorted(qids)
    answers = ["Yes.", "The table", "left-side", "NO", "Blue!", "kitchen\n", "no"]
    predictions = {q: Prediction(q, a) for q, a in zip(qids, answers)}
    # By hand: "yes" right; "the table" wrong (articles stay); "leftside" wrong; "no" right; "blue" right; "kitchen\n"
    # wrong (no whitespace strip); the 7th is unbalanced: not scored. 3 of 6.
    scores = benchmark.score(records, predictions)
    assert scores.metrics["accuracy__GQA-Accuracy"] == pytest.approx(100 * 3 / 6)
    assert scores.metrics["accuracy__GQA-Open"] == pytest.approx(0.0)  # the 3 "query" questions
    assert scores.metrics["accuracy__GQA-Binary"] == pytest.approx(100.0)  # verify, logical, choose
    assert scores.metrics["accuracy__GQA-semantic-attribute"] == pytest.approx(100 * 1 / 2)
    assert scores.metrics["accuracy__GQA-structural-verify"] == pytest.approx(100.0)
    assert "accuracy__GQA-structural-compare" not in scores.metrics  # only the unbalanced question has it
    assert scores.counts["GQA"] == 6 and scores.counts["Open"] == 3 and scores.counts["semantic-scene"] == 1
    assert any("unbalanced" in note for note in scores.notes)


def test_gqa_counts_missing_files_and_registry(tmp_path: Path) -> None:
    write_gqa_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 7 questions in testdev_balanced_questions\.json, the protocol "
                                                 r"expects 12578"):  # fmt: skip
        small_gqa(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (tmp_path / "data" / "gqa" / "download" / "testdev_balanced_questions.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"testdev_balanced_questions\.json is missing.*questions1\.2\.zip"):
        small_gqa().prepare(tmp_path / "data", **QUIET)
    family = get_benchmark("gqa")
    assert isinstance(family, GQA) and family.dataset_id == "gqa-slim" and family.variant == "slim-1024"
    assert family.slim_size == 1024
    assert {label for label, _ in family.columns} == set(paper_numbers("dyva_siglip+7b", "gqa"))


# Two test-dev balanced records as a GQA masking study's README prints them (keys 20644644 and 20903190, images n...),
# with their original question ("question_orig" there) put back in "question" and that extra key dropped.
REAL_RECORDS = {
    "20644644": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "scene"},
                     {"operation": "query", "dependencies": [0], "argument": "room"}],
        "entailed": ["20644645", "20644643"], "equivalent": ["20644644"], "question": "Which room is it?",
        "imageId": "n250821", "isBalanced": True, "groups": {"global": "room", "local": "02q-room"},
        "answer": "bedroom", "semanticStr": "select: scene->query: room [0]",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": "place", "semantic": "global", "structural": "query"}, "fullAnswer": "It is a bedroom.",
    },
    "20903190": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "person (7)"},
                     {"operation": "filter gender", "dependencies": [0], "argument": "female"},
                     {"operation": "relate", "dependencies": [1], "argument": "train,near,s (-)"},
                     {"operation": "exist", "dependencies": [2], "argument": "?"}],
        "entailed": [], "equivalent": ["20903190"], "question": "Do you see a train near the female person?",
        "imageId": "n411121", "isBalanced": True, "groups": {"global": None, "local": "13-person_train"},
        "answer": "no",
        "semanticStr": "select: person (7)->filter gender: female [0]->relate: train,near,s (-) [1]->exist: ? [2]",
        "annotations": {"answer": {}, "question": {"7:9": "7"}, "fullAnswer": {"4": "6", "7": "7"}},
        "types": {"detailed": "existRelSC", "semantic": "rel", "structural": "verify"},
        "fullAnswer": "No, there is a van near the person.",
    },
}  # fmt: skip


def test_gqa_real_records(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "gqa" / "download"
    for i, row in enumerate(REAL_RECORDS.values()):
        write_image(raw / "images" / f"{row['imageId']}.jpg", i)
    (raw / "testdev_balanced_questions.json").write_text(json.dumps(REAL_RECORDS))
    benchmark = small_gqa(size=1024)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    room = records["20644644"]
    assert room["question_id"] == 20644644 and room["img_path"] == "gqa/download/images/n250821.jpg"
    assert (room["answer"], room["structural"], room["semantic"]) == ("bedroom", "query", "global")
    scores = benchmark.score(records, {"20644644": Prediction("20644644", "Bedroom."),
                                       "20903190": Prediction("20903190", "Yes")})  # fmt: skip
    assert scores.metrics["accuracy__GQA-Accuracy"] == pytest.approx(50.0)
    assert scores.metrics["accuracy__GQA-Open"] == 100.0 and scores.metrics["accuracy__GQA-Binary"] == 0.0
    assert scores.metrics["accuracy__GQA-semantic-scene"] == 100.0
    assert scores.metrics["accuracy__GQA-structural-verify"] == 0.0
