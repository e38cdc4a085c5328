"""GQA, test-dev balanced, vlm-evaluation's `gqa-slim` subset (1,024 of the 12,578 questions): compositional questions
about Visual Genome images, one ground-truth answer each. The paper's Tables 3/5/6 "GQA" column.

Raw files (`<data_root>/gqa/download/`): `testdev_balanced_questions.json` (from `questions1.2.zip`) and
`images/<imageId>.jpg` (`images.zip`; only the selected items' images are needed). The file is one object keyed by
question id; a test-dev record: "20644644": {"question": "Which room is it?", "imageId": "n250821", "answer":
"bedroom", "fullAnswer": "It is a bedroom.", "isBalanced": true, "types": {"detailed": "place", "semantic": "global",
"structural": "query"}, "semantic", "semanticStr", "entailed", "equivalent", "groups", "annotations"}.

Protocol (vlm-evaluation): records in the questions file's key order (12,578 questions over 398 images), the slim subset
is the first 1,024 ids of the `random.Random(21)` shuffle (`prismatic.eval.slim`). `vqa_prompt`, greedy generation (at
most 128 new tokens). Score: the prediction loses `string.punctuation` and is lowercased (vlm-evaluation's conversion
for GQA's `eval.py`), then exact match with `answer`, averaged over the balanced questions (`isBalanced`; all of
test-dev balanced), as the official `eval.py` prints its "Accuracy" (`accuracy__GQA-Accuracy`, the paper's cell). The
same script's binary / open split and per structural and semantic type are reported beside it. The ground truth is
not normalised; vlm-evaluation parses the printed accuracy at 2 decimals, we keep full precision.
"""

from __future__ import annotations

import json
import string
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
    accuracy,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.prompts import vqa_prompt
from prismatic.eval.slim import SLIM_SIZE, slim_ids

GQA_QUESTIONS, GQA_IMAGES = 12578, 398
QUESTIONS_FILE = "testdev_balanced_questions.json"
# GQA eval.py's names for the semantic types.
SEMANTIC_NAMES = {"attr": "attribute", "cat": "category", "global": "scene", "obj": "object", "rel": "relation"}
_STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_gqa_prediction(text: str) -> str:
    """vlm-evaluation's GQA conversion: every `string.punctuation` character deleted, lowercased (nothing else)."""
    return text.translate(_STRIP_PUNCTUATION).lower()


class GQA(Benchmark):
    name = "gqa"
    dataset_id = "gqa-slim"
    title = "GQA (test-dev balanced, slim 1,024)"
    directory = "gqa"
    variant = "slim-1024"
    slim_size: int = SLIM_SIZE  # an instance may lower it (tests)
    raw_files = (
        RawFile(QUESTIONS_FILE, "https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip",
                "https://cs.stanford.edu/people/dorarad/gqa/download.html; 12,578 questions"),
        RawFile("images/", "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip", "<imageId>.jpg, 398 used"),
    )  # fmt: skip
    max_new_tokens = 128
    columns = (("GQA", "accuracy__GQA-Accuracy"),)
    licence = "GQA questions: CC BY 4.0; images: Visual Genome (CC BY 4.0)."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        raw = json.loads(self.require(raw_dir, QUESTIONS_FILE).read_text(encoding="utf-8"))
        records: Records = {}
        for key, row in raw.items():
            types = row.get("types") or {}
            records[str(key)] = {
                "question_id": int(key) if str(key).isdigit() else key,
                "question": row["question"],
                "img_path": relative_to_root(raw_dir / "images" / f"{row['imageId']}.jpg", data_root),
                "answer": row["answer"],
                "fullAnswer": row.get("fullAnswer"),
                "semanticStr": row.get("semanticStr"),
                "entailed": row.get("entailed", []),
                "equivalent": row.get("equivalent", []),
                "structural": types.get("structural"),
                "semantic": types.get("semantic"),
                "isBalanced": bool(row.get("isBalanced", True)),
            }
        self.check_count(f"questions in {QUESTIONS_FILE}", len(records), GQA_QUESTIONS, log)
        self.check_count("distinct images", len({r["img_path"] for r in records.values()}), GQA_IMAGES, log)
        return {qid: records[qid] for qid in slim_ids(list(records), self.slim_size)}

    def items(self, records: Records) -> list[EvalItem]:
        return [EvalItem(qid, vqa_prompt(r["question"]), (r["img_path"],)) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        balanced = {qid: r for qid, r in records.items() if r.get("isBalanced", True)}
        correct = {qid: normalize_gqa_prediction(predictions[qid].answer) == r["answer"] for qid, r in balanced.items()}
        metrics = {"accuracy__GQA-Accuracy": accuracy(list(correct.values()))}
        counts = {"GQA": len(balanced)}
        notes = []
        if len(balanced) < len(records):
            notes.append(f"{len(records) - len(balanced)} unbalanced questions are not scored (GQA eval.py).")
        groups: dict[str, list[str]] = {}
        for qid, r in balanced.items():
            if r.get("structural"):
                groups.setdefault("Open" if r["structural"] == "query" else "Binary", []).append(qid)
                groups.setdefault(f"structural-{r['structural']}", []).append(qid)
            if r.get("semantic"):
                groups.setdefault(f"semantic-{SEMANTIC_NAMES.get(r['semantic'], r['semantic'])}", []).append(qid)
        for group in sorted(groups):
            metrics[f"accuracy__GQA-{group}"] = accuracy([correct[qid] for qid in groups[group]])
            counts[group] = len(groups[group])
        return Scores(metrics, counts, notes)
