"""POPE, object-hallucination probing on COCO val2014 ("Is there a <object> in the image?"), as the paper scored it:
`pope-slim`, 1,024 questions from each of the adversarial, popular and random splits (3,072). The paper's "POPE"
(Tables 3/5/6) is `accuracy__POPE-final-Accuracy`: the MEAN of the three split accuracies, not a pooled accuracy and
not F1.

Raw files (`<data_root>/pope/download/`): `coco_pope_adversarial.json`, `coco_pope_popular.json` and
`coco_pope_random.json` from AoiDragon/POPE at commit e3e39262c85a6a83f26cf5094022a782cb0df58d, folder `output/coco/`
(JSON Lines despite the extension; 3,000 / 3,000 / 2,910 lines), and the COCO val2014 images in `val2014/`
(http://images.cocodataset.org/zips/val2014.zip). A raw line (the first of a main-branch copy): {"question_id": 1,
"image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}; labels are
"yes" / "no". Other revisions of the repository differ (e.g. commit 7ef3026: ids from 0, an extra "image_id", 3,000
random lines); extra keys are ignored, the line counts are checked.

Slim subset (vlm-evaluation's rule, `prismatic.eval.slim`): every line becomes a record with qid
"<split>-<question_id>" (question ids repeat across splits), inserted split by split in the order adversarial,
popular, random, each in file order. That is the order of vlm-evaluation's POPE harness, which walks a dict
{"adversarial", "popular", "random"} (read in its source, not an assumption); it matters, because the seeded shuffle
permutes positions. (vlm-evaluation keys the records by Python's salted `hash` of the same string; only the positions
enter the shuffle, so the selection is the same.) The id list is shuffled with `random.Random(21)` and the first 1,024
ids of each split are kept, walking the shuffled list; the metadata keeps that shuffled order.

Protocol (vlm-evaluation): `vqa_prompt(text)` (the question and "Answer the question using a single word or
phrase."); closed form over "Yes" / "No" at the first generated token; correct when the argmax matches `label`.
Metrics, in percent:
- per split: `accuracy__POPE-<split>-Accuracy` (vlm-evaluation's keys), and, with "yes" as the positive class,
  `precision__POPE-<split>`, `recall__POPE-<split>`, `f1__POPE-<split>`, `yes_ratio__POPE-<split>` (the share of
  "Yes" answers; the POPE paper's set, which vlm-evaluation does not report), `auroc__POPE-<split>` and
  `aupr__POPE-<split>` of P(Yes);
- overall: `accuracy__POPE-final-Accuracy` = mean of the split accuracies (the paper's number), and pooled over all
  items `accuracy__POPE-pooled-Accuracy` (what lmms-eval's `pope_accuracy` reports), `precision__POPE-final`,
  `recall__POPE-final`, `f1__POPE-final`, `yes_ratio__POPE-final`, `auroc__POPE-final`, `aupr__POPE-final`.
Precision (and so F1) is 0 when the model never answers "Yes".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from prismatic.eval.benchmark import (
    Benchmark,
    BenchmarkDataError,
    EvalItem,
    Log,
    Prediction,
    RawFile,
    Records,
    Scores,
    accuracy,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.metrics import auroc, average_precision
from prismatic.eval.prompts import vqa_prompt
from prismatic.eval.slim import SLIM_SIZE, slim_ids_per_split

# vlm-evaluation's split order (its insertion order) and the expected line counts of the pinned files.
SPLIT_COUNTS = {"adversarial": 3000, "popular": 3000, "random": 2910}
SPLITS = tuple(SPLIT_COUNTS)
CANDIDATES = ("Yes", "No")
POPE_URL = "https://raw.githubusercontent.com/AoiDragon/POPE/e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco/"


def raw_name(split: str) -> str:
    return f"coco_pope_{split}.json"


def binary_metrics(labels: Sequence[bool], said_yes: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (percent) with "yes" as the positive class."""
    true_pos = sum(y and p for y, p in zip(labels, said_yes))
    false_pos = sum(p and not y for y, p in zip(labels, said_yes))
    false_neg = sum(y and not p for y, p in zip(labels, said_yes))
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": accuracy([y == p for y, p in zip(labels, said_yes)]),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(said_yes) / len(said_yes) if said_yes else 0.0,
    }


class POPE(Benchmark):
    name = "pope"
    dataset_id = "pope-slim"
    title = "POPE (COCO, slim: 1,024 per split)"
    directory = "pope"
    variant = "slim-1024"
    raw_files = (
        *(RawFile(raw_name(split), POPE_URL + raw_name(split), f"{count:,} lines") for split, count in
          SPLIT_COUNTS.items()),
        RawFile("val2014/", "http://images.cocodataset.org/zips/val2014.zip", "COCO val2014 images"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (
        ("Adv.", "accuracy__POPE-adversarial-Accuracy"),
        ("Pop.", "accuracy__POPE-popular-Accuracy"),
        ("Rand.", "accuracy__POPE-random-Accuracy"),
        ("POPE", "accuracy__POPE-final-Accuracy"),
    )
    licence = "POPE: MIT; images: COCO (Flickr terms)."
    slim_size: int = SLIM_SIZE  # items per split (tests lower it on an instance)

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        index: Records = {}
        for split, expected in SPLIT_COUNTS.items():
            lines = self.require(raw_dir, raw_name(split)).read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            self.check_count(f"questions in {raw_name(split)}", len(rows), expected, log)
            for row in rows:
                qid = f"{split}-{row['question_id']}"
                if qid in index:
                    raise BenchmarkDataError(f"{self.title}: question id {row['question_id']} repeats in "
                                             f"{raw_name(split)}; the protocol needs unique ids per split.")  # fmt: skip
                label = str(row["label"]).strip().lower()
                if label not in ("yes", "no"):
                    raise BenchmarkDataError(f"{self.title}: {qid} has label {row['label']!r}, not yes/no.")
                index[qid] = {
                    "question_id": qid,
                    "question": row["text"],
                    "img_path": relative_to_root(raw_dir / "val2014" / row["image"], data_root),
                    "answer": label,
                    "split": split,
                    "split_question_id": row["question_id"],
                }
        selected = slim_ids_per_split(list(index), lambda qid: index[qid]["split"], size=self.slim_size)
        return {qid: index[qid] for qid in selected}

    def items(self, records: Records) -> list[EvalItem]:
        return [EvalItem(qid, vqa_prompt(r["question"]), (r["img_path"],), CANDIDATES) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        split_accuracies = []
        pooled_labels: list[bool] = []
        pooled_yes: list[bool] = []
        pooled_p_yes: list[float] = []
        for split in SPLITS:
            members = [qid for qid, r in records.items() if r["split"] == split]
            if not members:
                continue
            labels = [records[qid]["answer"] == "yes" for qid in members]
            said_yes = [predictions[qid].answer == "Yes" for qid in members]
            p_yes = [float((predictions[qid].probabilities or {}).get("Yes", 0.0)) for qid in members]
            values = binary_metrics(labels, said_yes)
            metrics[f"accuracy__POPE-{split}-Accuracy"] = values["accuracy"]
            for key in ("precision", "recall", "f1", "yes_ratio"):
                metrics[f"{key}__POPE-{split}"] = values[key]
            self._ranking(metrics, split, labels, p_yes)
            split_accuracies.append(values["accuracy"])
            counts[split] = len(members)
            pooled_labels += labels
            pooled_yes += said_yes
            pooled_p_yes += p_yes
        pooled = binary_metrics(pooled_labels, pooled_yes)
        metrics["accuracy__POPE-final-Accuracy"] = sum(split_accuracies) / len(split_accuracies) if split_accuracies \
            else 0.0  # fmt: skip
        metrics["accuracy__POPE-pooled-Accuracy"] = pooled["accuracy"]
        for key in ("precision", "recall", "f1", "yes_ratio"):
            metrics[f"{key}__POPE-final"] = pooled[key]
        self._ranking(metrics, "final", pooled_labels, pooled_p_yes)
        counts["POPE"] = len(records)
        notes = ["POPE = accuracy__POPE-final-Accuracy, the mean of the split accuracies (vlm-evaluation); "
                 "accuracy__POPE-pooled-Accuracy pools all items (lmms-eval)."]  # fmt: skip
        return Scores(metrics, counts, notes)

    @staticmethod
    def _ranking(metrics: dict[str, float], split: str, labels: list[bool], p_yes: list[float]) -> None:
        for key, value in (("auroc", auroc(labels, p_yes)), ("aupr", average_precision(labels, p_yes))):
            if value is not None:
                metrics[f"{key}__POPE-{split}"] = 100.0 * value
