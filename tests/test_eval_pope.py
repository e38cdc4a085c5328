"""POPE (`pope-slim`) end to end on the tiny run's model, from fixtures in the raw JSON Lines format of
AoiDragon/POPE: the per-split slim selection over adversarial -> popular -> random, the Yes/No prompt, and every
metric recomputed by hand from the saved predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError
from prismatic.eval.benchmarks.pope import POPE
from prismatic.eval.metrics import auroc, average_precision

QUIET = {"log": lambda _: None}
SPLITS = ("adversarial", "popular", "random")
PER_SPLIT = 3


def write_pope_raw(data_root: Path) -> dict[str, list[dict]]:
    """Five lines per split (question ids 1..5 in every split, as in the real files) over six COCO val2014 images."""
    raw = data_root / "pope" / "download"
    for i in range(6):
        write_image(raw / "val2014" / f"COCO_val2014_{i:012d}.jpg", i)
    lines = {}
    for s, split in enumerate(SPLITS):
        rows = [{"question_id": q, "image": f"COCO_val2014_{(q + s) % 6:012d}.jpg",
                 "text": f"Is there a thing {q} in the image?", "label": "yes" if (q + s) % 2 else "no"}
                for q in range(1, 6)]  # fmt: skip
        (raw / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines[split] = rows
    return lines


def expected_selection(lines: dict[str, list[dict]], size: int) -> list[str]:
    ids = [f"{split}-{r['question_id']}" for split in SPLITS for r in lines[split]]
    random.Random(21).shuffle(ids)
    taken = dict.fromkeys(SPLITS, 0)
    selected = []
    for qid in ids:
        split = qid.split("-")[0]
        if taken[split] < size:
            taken[split] += 1
            selected.append(qid)
    return selected


def small_pope(strict_counts: bool = False) -> POPE:
    benchmark = POPE(strict_counts=strict_counts)
    benchmark.slim_size = PER_SPLIT
    return benchmark


def test_pope_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    lines = write_pope_raw(tmp_path / "data")
    benchmark = small_pope()
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, tmp_path / "data", tmp_path / "results")

    records = benchmark.load_records(tmp_path / "data")
    assert list(records) == expected_selection(lines, PER_SPLIT)
    first = benchmark.items(records)[0]
    assert first.message == f"{records[first.id]['question']}\nAnswer the question using a single word or phrase."
    assert first.candidates == ("Yes", "No") and first.images[0].startswith("pope/download/val2014/")

    gold = {f"{split}-{r['question_id']}": r["label"] == "yes" for split in SPLITS for r in lines[split]}
    said = {qid: predictions[qid].answer == "Yes" for qid in records}
    p_yes = {qid: predictions[qid].probabilities["Yes"] for qid in records}

    def by_hand(qids: list[str]) -> dict[str, float]:
        tp = sum(gold[q] and said[q] for q in qids)
        fp = sum(said[q] and not gold[q] for q in qids)
        fn = sum(gold[q] and not said[q] for q in qids)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {"accuracy": 100 * sum(gold[q] == said[q] for q in qids) / len(qids), "precision": 100 * precision,
                "recall": 100 * recall,
                "f1": 100 * (2 * precision * recall / (precision + recall) if precision + recall else 0.0),
                "yes_ratio": 100 * sum(said[q] for q in qids) / len(qids)}  # fmt: skip

    split_accuracies = []
    for split in SPLITS:
        qids = [q for q in records if q.startswith(split + "-")]
        expected = by_hand(qids)
        split_accuracies.append(expected["accuracy"])
        assert metrics[f"accuracy__POPE-{split}-Accuracy"] == pytest.approx(expected["accuracy"])
        for key in ("precision", "recall", "f1", "yes_ratio"):
            assert metrics[f"{key}__POPE-{split}"] == pytest.approx(expected[key])
        labels, scores = [gold[q] for q in qids], [p_yes[q] for q in qids]
        if auroc(labels, scores) is not None:
            assert metrics[f"auroc__POPE-{split}"] == pytest.approx(100 * auroc(labels, scores))
            assert metrics[f"aupr__POPE-{split}"] == pytest.approx(100 * average_precision(labels, scores))
    # The paper's POPE: the mean of the split accuracies; the rest pooled over all items.
    assert metrics["accuracy__POPE-final-Accuracy"] == pytest.approx(sum(split_accuracies) / 3)
    pooled = by_hand(list(records))
    assert metrics["accuracy__POPE-pooled-Accuracy"] == pytest.approx(pooled["accuracy"])
    for key in ("precision", "recall", "f1", "yes_ratio"):
        assert metrics[f"{key}__POPE-final"] == pytest.approx(pooled[key])
    labels, scores = [gold[q] for q in records], [p_yes[q] for q in records]
    assert metrics["auroc__POPE-final"] == pytest.approx(100 * auroc(labels, scores))
    assert metrics["aupr__POPE-final"] == pytest.approx(100 * average_precision(labels, scores))


def test_pope_counts_and_missing_files(tmp_path: Path) -> None:
    write_pope_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 5 questions in coco_pope_adversarial\.json.*expects 3000"):
        small_pope(strict_counts=True).prepare(tmp_path / "data", **QUIET)
    (tmp_path / "data" / "pope" / "download" / "coco_pope_popular.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_popular\.json is missing.*AoiDragon/POPE"):
        small_pope().prepare(tmp_path / "data", **QUIET)


# Real lines of AoiDragon/POPE output/coco/ at commit 7ef3026 (adversarial, popular: the first three; random: lines
# 4-6). Its question ids start at 0 and it adds "image_id"; copies of the main branch documented elsewhere start at 1
# without "image_id". The parser takes both.
REAL_LINES = {
    "adversarial": [
        '{"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a dining '
        'table in the image?", "label": "yes"}',
        '{"question_id": 1, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a chair in '
        'the image?", "label": "no"}',
        '{"question_id": 2, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a sandwich '
        'in the image?", "label": "yes"}',
    ],
    "popular": [
        '{"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a dining '
        'table in the image?", "label": "yes"}',
        '{"question_id": 1, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a sandwich '
        'in the image?", "label": "yes"}',
        '{"question_id": 2, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a bottle in '
        'the image?", "label": "yes"}',
    ],
    "random": [
        '{"question_id": 3, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a tv in the '
        'image?", "label": "no"}',
        '{"question_id": 4, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there an orange '
        'in the image?", "label": "no"}',
        '{"question_id": 5, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, "text": "Is there a zebra in '
        'the image?", "label": "no"}',
    ],
}


def test_pope_real_lines(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "pope" / "download"
    write_image(raw / "val2014" / "COCO_val2014_000000548882.jpg", 0)
    for split, lines in REAL_LINES.items():
        (raw / f"coco_pope_{split}.json").write_text("".join(line + "\n" for line in lines))
    benchmark = small_pope()
    benchmark.prepare(tmp_path / "data", **QUIET)
    records = benchmark.load_records(tmp_path / "data")
    assert sorted(records) == sorted(f"{split}-{json.loads(line)['question_id']}"
                                     for split, lines in REAL_LINES.items() for line in lines)  # fmt: skip
    assert records["adversarial-1"]["question"] == "Is there a chair in the image?"
    assert records["adversarial-1"]["answer"] == "no" and records["popular-0"]["answer"] == "yes"
    assert records["random-5"]["img_path"] == "pope/download/val2014/COCO_val2014_000000548882.jpg"
    item = {i.id: i for i in benchmark.items(records)}["random-3"]
    assert item.message == "Is there a tv in the image?\nAnswer the question using a single word or phrase."
