"""VizWiz-VQA, val split, vlm-evaluation's `vizwiz-slim` subset (1,024 of the 4,319 questions): questions asked by
blind people about their own photos, 10 crowd answers each, many of them "unanswerable". The paper's Tables 3/5/6
"VizWiz" column.

Raw files (`<data_root>/vizwiz/download/`): `val.json` (from `Annotations.zip`) and `val/<image>` (`val.zip`; only the
selected items' images are needed).

Protocol (vlm-evaluation): record ids are the positions in `val.json` (4,319 questions, one image each), the slim subset
is the first 1,024 ids of the `random.Random(21)` shuffle (`prismatic.eval.slim`). `vqa_uncertain_prompt` (the
"respond with 'Unanswerable'" trigger), greedy generation (at most 128 new tokens). Scores (vlm-evaluation's VizWiz
scorer, `prismatic.eval.vqa_normalize.vizwiz_accuracy`):
- `accuracy__VizWiz-Overall` (the paper's cell; vlm-evaluation's name): soft VQA accuracy
  over the 10 answers x 100, the prediction normalised, the answers as they are in `val.json`; "unanswerable" is an
  ordinary answer string (answering it scores only where annotators wrote it);
- `accuracy__VizWiz-Answerable` / `-Unanswerable`: the same over the items whose `answerable` flag is 1 / 0;
- `accuracy__VizWiz-Unanswerable-AvgPR` / `-F1`: detecting the unanswerable items (label `answerable == 0`), the model
  "predicting unanswerable" iff its normalised answer is exactly "unanswerable". There is no probability, so the
  average precision is sklearn's `average_precision_score` on that 0/1 score (vlm-evaluation's call), i.e. over its two
  thresholds: recall x precision at the single operating point plus (1 - recall) x the unanswerable base rate. F1 is
  that of the unanswerable class (0 when it has no true positive). Both are omitted when no item is unanswerable.
vlm-evaluation rounds each to 2 decimals; we keep full precision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from prismatic.eval.benchmark import (
    Benchmark,
    EvalItem,
    Log,
    Prediction,
    RawFile,
    Records,
    Scores,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.metrics import average_precision
from prismatic.eval.prompts import vqa_uncertain_prompt
from prismatic.eval.slim import SLIM_SIZE, slim_ids
from prismatic.eval.vqa_normalize import VIZWIZ_CONTRACTIONS, mean_percent, normalize_prediction, vizwiz_accuracy

VIZWIZ_QUESTIONS = 4319
QUESTIONS_FILE = "val.json"
UNANSWERABLE = "unanswerable"


def predicts_unanswerable(answer: str) -> bool:
    """The model declines: its answer, normalised as the scorer does, is exactly "unanswerable"."""
    return normalize_prediction(answer, VIZWIZ_CONTRACTIONS) == UNANSWERABLE


def f1_score(labels: list[bool], predicted: list[bool]) -> float:
    """F1 of the positive class in [0, 1] (0 when there is no true positive, as sklearn's default)."""
    true_pos = sum(y and p for y, p in zip(labels, predicted))
    false_pos = sum(p and not y for y, p in zip(labels, predicted))
    false_neg = sum(y and not p for y, p in zip(labels, predicted))
    return 2 * true_pos / (2 * true_pos + false_pos + false_neg) if true_pos else 0.0


class VizWiz(Benchmark):
    name = "vizwiz"
    dataset_id = "vizwiz-slim"
    title = "VizWiz-VQA (val, slim 1,024)"
    directory = "vizwiz"
    variant = "slim-1024"
    slim_size: int = SLIM_SIZE  # an instance may lower it (tests)
    raw_files = (
        RawFile(QUESTIONS_FILE, "https://vizwiz.cs.colorado.edu/VizWiz_final/vqa_data/Annotations.zip",
                "https://vizwiz.org/tasks-and-datasets/vqa/; 4,319 questions"),
        RawFile("val/", "https://vizwiz.cs.colorado.edu/VizWiz_final/images/val.zip", "VizWiz_val_%08d.jpg"),
    )  # fmt: skip
    max_new_tokens = 128
    columns = (("VizWiz", "accuracy__VizWiz-Overall"),)
    licence = "VizWiz-VQA: CC BY 4.0."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        rows = json.loads(self.require(raw_dir, QUESTIONS_FILE).read_text(encoding="utf-8"))
        records: Records = {}
        for index, row in enumerate(rows):
            records[str(index)] = {
                "question_id": index,
                "image": row["image"],
                "question": row["question"],
                "img_path": relative_to_root(raw_dir / "val" / row["image"], data_root),
                "answers": [a["answer"] for a in row["answers"]],
                "answer_type": row.get("answer_type"),
                "answerable": int(row["answerable"]),
            }
        self.check_count(f"questions in {QUESTIONS_FILE}", len(records), VIZWIZ_QUESTIONS, log)
        self.check_count("distinct images", len({r["img_path"] for r in records.values()}), VIZWIZ_QUESTIONS, log)
        return {qid: records[qid] for qid in slim_ids(list(records), self.slim_size)}

    def items(self, records: Records) -> list[EvalItem]:
        return [EvalItem(qid, vqa_uncertain_prompt(r["question"]), (r["img_path"],)) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        scores = {qid: vizwiz_accuracy(predictions[qid].answer, r["answers"]) for qid, r in records.items()}
        answerable = [qid for qid, r in records.items() if r["answerable"]]
        unanswerable = [qid for qid, r in records.items() if not r["answerable"]]
        metrics = {"accuracy__VizWiz-Overall": mean_percent(list(scores.values()))}
        counts = {"VizWiz": len(records), "answerable": len(answerable), "unanswerable": len(unanswerable)}
        for key, members in (("Answerable", answerable), ("Unanswerable", unanswerable)):
            if members:
                metrics[f"accuracy__VizWiz-{key}"] = mean_percent([scores[qid] for qid in members])
        labels = [not r["answerable"] for r in records.values()]
        declined = [predicts_unanswerable(predictions[qid].answer) for qid in records]
        precision = average_precision(labels, [float(d) for d in declined])
        if precision is not None:
            metrics["accuracy__VizWiz-Unanswerable-AvgPR"] = 100.0 * precision
            metrics["accuracy__VizWiz-Unanswerable-F1"] = 100.0 * f1_score(labels, declined)
        counts["predicted unanswerable"] = sum(declined)
        return Scores(metrics, counts)
