"""VQAv2 (`vqa-v2-slim`) end to end on the tiny run's model, from a fixture in the raw VQA format (questions and
annotations JSON, `val2014/COCO_val2014_%012d.jpg`): the slim selection, the prompt, the soft accuracy recomputed by
hand from the saved predictions, and hand-made predictions scored to known values."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks.vqav2 import VQAv2
from prismatic.eval.paper import paper_numbers
from prismatic.eval.prompts import vqa_prompt
from prismatic.eval.registry import get_benchmark
from prismatic.eval.vqa_normalize import normalize_prediction, process_punctuation

QUIET = {"log": lambda _: None}
SLIM = 5

# (question, answer type, the 10 answers)
QUESTIONS = [
    ("How many dogs are there?", "number", ["2"] * 10),
    ("Is it raining?", "yes/no", ["yes"] * 3 + ["no"] * 7),
    ("What animal is this?", "other", ["dog"] * 2 + ["cat"] * 8),
    ("What is on the table?", "other", ["hot dog"] * 4 + ["food"] * 6),
    ("How many people?", "number", ["10000"] + ["many"] * 9),
    ("Is the door open?", "yes/no", ["no"] * 10),
    ("What colour is the car?", "other", ["red"] * 5 + ["dark red"] * 5),
]


def write_vqav2_raw(data_root: Path) -> list[int]:
    """The two VQA JSON files (7 questions over 4 COCO images, annotations in id order) and the images; returns the
    question ids in annotation order."""
    raw = data_root / "vqa-v2" / "download"
    questions, annotations = [], []
    for i, (question, answer_type, answers) in enumerate(QUESTIONS):
        image_id, qid = 100 + i % 4, (100 + i % 4) * 1000 + i
        write_image(raw / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", i % 4)
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({
            "question_type": question.split()[0].lower(), "multiple_choice_answer": max(answers, key=answers.count),
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)],
            "image_id": image_id, "answer_type": answer_type, "question_id": qid,
        })  # fmt: skip
    common = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014"}
    (raw / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({**common, "questions": questions}))
    (raw / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({**common, "annotations": annotations}))
    return [a["question_id"] for a in annotations]


def expected_selection(qids: list[int], size: int) -> list[str]:
    """vlm-evaluation's rule, re-implemented: the ids in annotation order, shuffled with Random(21), the first `size`."""
    ids = list(qids)
    random.Random(21).shuffle(ids)
    return [str(q) for q in ids[:size]]


def small_vqav2(strict_counts: bool = False, size: int = SLIM) -> VQAv2:
    benchmark = VQAv2(strict_counts=strict_counts)
    benchmark.slim_size = size
    return benchmark


def by_hand(prediction: str, answers: list[str]) -> float:
    """The official leave-one-out average, written out: the 10 choose 9 subsets, min(1, matches / 3) in each."""
    pred = normalize_prediction(prediction)
    gts = [process_punctuation(a) for a in answers]
    return sum(min(1, sum(g == pred for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))) / len(gts)


def test_vqav2_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    qids = write_vqav2_raw(tmp_path / "data")
    benchmark = small_vqav2()
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results",
                                      max_new_tokens=4)  # fmt: skip

    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == expected_selection(qids, SLIM) and set(predictions) == set(records)
    first = records[next(iter(records))]
    assert first["img_path"] == f"vqa-v2/download/val2014/COCO_val2014_{first['question_id'] // 1000:012d}.jpg"
    item = benchmark.items(records)[0]
    assert item.message == vqa_prompt(first["question"]) and item.candidates == ()

    scores = {qid: by_hand(predictions[qid].answer, r["all_answers"]) for qid, r in records.items()}
    assert metrics["accuracy__VQAv2-Accuracy"] == pytest.approx(100 * sum(scores.values()) / len(scores))
    for answer_type in ("yes/no", "number", "other"):
        members = [qid for qid, r in records.items() if r["answer_type"] == answer_type]
        if members:
            assert metrics[f"accuracy__VQAv2-{answer_type}"] == pytest.approx(
                100 * sum(scores[q] for q in members) / len(members))


def test_vqav2_scores_hand_made_predictions(tmp_path: Path) -> None:
    qids = write_vqav2_raw(tmp_path / "data")
    benchmark = small_vqav2(size=1024)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    assert sorted(records) == sorted(map(str, qids))  # fewer ids than the slim size: all of them
    answers = ["Two.", "yes", "a dog.", "hot-dog", "10,000", "No", "nothing"]
    predictions = {str(q): Prediction(str(q), a) for q, a in zip(qids, answers)}
    # By hand: 10/10 "2" -> 1; 3 of 10 "yes" -> (7 + 3 x 2/3) / 10 = 0.9; 2 of 10 "dog" -> (8 x 2/3 + 2 x 1/3) / 10 =
    # 0.6; "hot dog" 4 of 10 -> 1; "10000" 1 of 10 -> 9 x 1/3 / 10 = 0.3; "no" 10/10 -> 1; "nothing" -> 0.
    per_item = [1.0, 0.9, 0.6, 1.0, 0.3, 1.0, 0.0]
    scores = benchmark.score(records, predictions)
    assert scores.metrics["accuracy__VQAv2-Accuracy"] == pytest.approx(100 * sum(per_item) / 7)
    assert scores.metrics["accuracy__VQAv2-number"] == pytest.approx(100 * (1.0 + 0.3) / 2)
    assert scores.metrics["accuracy__VQAv2-yes/no"] == pytest.approx(100 * (0.9 + 1.0) / 2)
    assert scores.metrics["accuracy__VQAv2-other"] == pytest.approx(100 * (0.6 + 1.0 + 0.0) / 3)
    assert scores.counts == {"VQAv2": 7, "yes/no": 2, "number": 2, "other": 3}
    with pytest.raises(BenchmarkDataError, match="no prediction"):
        benchmark.score(records, {})


def test_vqav2_counts_missing_files_and_registry(tmp_path: Path) -> None:
    write_vqav2_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 7 questions in v2_mscoco_val2014_annotations\.json, the "
                                                 r"protocol expects 214354"):  # fmt: skip
        small_vqav2(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (tmp_path / "data" / "vqa-v2" / "download" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"v2_mscoco_val2014_annotations\.json is missing.*"
                                                 r"v2_Annotations_Val_mscoco\.zip"):  # fmt: skip
        small_vqav2().prepare(tmp_path / "data", **QUIET)
    family = get_benchmark("vqa-v2")
    assert isinstance(family, VQAv2) and family.dataset_id == "vqa-v2-slim" and family.variant == "slim-1024"
    assert family.slim_size == 1024
    assert {label for label, _ in family.columns} == set(paper_numbers("dyva_siglip+7b", "vqa-v2"))
