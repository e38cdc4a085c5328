"""VizWiz (`vizwiz-slim`) end to end on the tiny run's model, from a fixture in the raw `val.json` format (+
`val/<image>`): the slim selection over the file's positions, the "Unanswerable" prompt, the soft accuracy recomputed
by hand from the saved predictions, and hand-made predictions scored to known values, unanswerability AP and F1
included."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError, Prediction
from prismatic.eval.benchmarks.vizwiz import VizWiz
from prismatic.eval.paper import paper_numbers
from prismatic.eval.prompts import vqa_uncertain_prompt
from prismatic.eval.registry import get_benchmark
from prismatic.eval.vqa_normalize import VIZWIZ_CONTRACTIONS, normalize_prediction

QUIET = {"log": lambda _: None}
SLIM = 4

# (question, answers, answerable, answer type)
QUESTIONS = [
    ("What is in this cup?", ["coffee"] * 10, 1, "other"),
    ("What does this say?", ["unanswerable"] * 10, 0, "unanswerable"),
    ("What colour is this?", ["unanswerable"] * 3 + ["blue"] * 7, 0, "unanswerable"),
    ("What colour is this shirt?", ["red"] * 3 + ["unanswerable"] * 7, 1, "other"),
    ("Is this on?", ["yes"] * 2 + ["no"] * 8, 1, "yes/no"),
    ("How much is this?", ["5"] * 10, 1, "number"),
]


def write_vizwiz_raw(data_root: Path) -> list[dict]:
    raw = data_root / "vizwiz" / "download"
    rows = []
    for i, (question, answers, answerable, answer_type) in enumerate(QUESTIONS):
        image = f"VizWiz_val_{i:08d}.jpg"
        write_image(raw / "val" / image, i)
        rows.append({"image": image, "question": question, "answer_type": answer_type, "answerable": answerable,
                     "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})  # fmt: skip
    (raw / "val.json").write_text(json.dumps(rows))
    return rows


def expected_selection(count: int, size: int) -> list[str]:
    """vlm-evaluation's rule, re-implemented: ids = positions in val.json, shuffled with Random(21), the first `size`."""
    ids = list(range(count))
    random.Random(21).shuffle(ids)
    return [str(i) for i in ids[:size]]


def small_vizwiz(strict_counts: bool = False, size: int = SLIM) -> VizWiz:
    benchmark = VizWiz(strict_counts=strict_counts)
    benchmark.slim_size = size
    return benchmark


def by_hand(prediction: str, answers: list[str]) -> float:
    pred = normalize_prediction(prediction, VIZWIZ_CONTRACTIONS)
    return sum(min(1, sum(a == pred for j, a in enumerate(answers) if j != i) / 3) for i in range(10)) / 10


def test_vizwiz_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    rows = write_vizwiz_raw(tmp_path / "data")
    benchmark = small_vizwiz()
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results",
                                      max_new_tokens=4)  # fmt: skip

    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == expected_selection(len(rows), SLIM) and set(predictions) == set(records)
    first = records[next(iter(records))]
    assert first["img_path"] == f"vizwiz/download/val/VizWiz_val_{first['question_id']:08d}.jpg"
    item = benchmark.items(records)[0]
    assert item.message == vqa_uncertain_prompt(first["question"]) and item.candidates == ()
    assert "respond with 'Unanswerable'" in item.message

    scores = {qid: by_hand(predictions[qid].answer, r["answers"]) for qid, r in records.items()}
    assert metrics["accuracy__VizWiz-Overall"] == pytest.approx(100 * sum(scores.values()) / len(scores))
    answerable = [qid for qid, r in records.items() if r["answerable"]]
    if answerable:
        assert metrics["accuracy__VizWiz-Answerable"] == pytest.approx(
            100 * sum(scores[q] for q in answerable) / len(answerable))


def test_vizwiz_scores_hand_made_predictions(tmp_path: Path) -> None:
    write_vizwiz_raw(tmp_path / "data")
    benchmark = small_vizwiz(size=1024)
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    assert sorted(records, key=int) == [str(i) for i in range(6)]
    answers = ["Coffee.", "Unanswerable", "blue", "unanswerable", "yes", "five dollars"]
    predictions = {str(i): Prediction(str(i), a) for i, a in enumerate(answers)}
    # By hand: 1, 1, 1 (7 of 10 wrote "blue"), 1 ("unanswerable" is an ordinary answer: 7 wrote it), 0.6 (2 of 10),
    # 0 ("5 dollars" != "5"). Answerable: items 0, 3, 4, 5; unanswerable: 1, 2.
    scores = benchmark.score(records, predictions)
    assert scores.metrics["accuracy__VizWiz-Overall"] == pytest.approx(100 * 4.6 / 6)
    assert scores.metrics["accuracy__VizWiz-Answerable"] == pytest.approx(100 * 2.6 / 4)
    assert scores.metrics["accuracy__VizWiz-Unanswerable"] == pytest.approx(100.0)
    # Unanswerability: labels (answerable == 0) = items 1, 2; "predicted unanswerable" = items 1, 3. TP 1, FP 1, FN 1:
    # F1 = 2 / (2 + 1 + 1). AP over the 0/1 score's two thresholds: recall 1/2 at precision 1/2, then recall 1 at the
    # base rate 2/6: 0.5 x 0.5 + 0.5 x 2/6.
    assert scores.metrics["accuracy__VizWiz-Unanswerable-F1"] == pytest.approx(50.0)
    assert scores.metrics["accuracy__VizWiz-Unanswerable-AvgPR"] == pytest.approx(100 * (0.25 + 0.5 * 2 / 6))
    assert scores.counts == {"VizWiz": 6, "answerable": 4, "unanswerable": 2, "predicted unanswerable": 2}

    # Without unanswerable items there is no AP / F1 (and no unanswerable accuracy).
    subset = {qid: records[qid] for qid in ("0", "4")}
    metrics = benchmark.score(subset, predictions).metrics
    assert set(metrics) == {"accuracy__VizWiz-Overall", "accuracy__VizWiz-Answerable"}


def test_vizwiz_counts_missing_files_and_registry(tmp_path: Path) -> None:
    write_vizwiz_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 6 questions in val\.json, the protocol expects 4319"):
        small_vizwiz(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (tmp_path / "data" / "vizwiz" / "download" / "val.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"val\.json is missing.*VizWiz_final/vqa_data/Annotations\.zip"):
        small_vizwiz().prepare(tmp_path / "data", **QUIET)
    family = get_benchmark("vizwiz")
    assert isinstance(family, VizWiz) and family.dataset_id == "vizwiz-slim" and family.variant == "slim-1024"
    assert family.slim_size == 1024
    assert {label for label, _ in family.columns} == set(paper_numbers("dyva_siglip+7b", "vizwiz"))
