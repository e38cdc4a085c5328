"""VSR, Visual Spatial Reasoning, zero-shot test split (`vsr-full`: 1,222 statements over 715 COCO images): is the
caption true of the image? The paper's Table 2 (Topo / Prox / Proj / Direc / Adj / Orien / Unall / Avg) and Table 3.

Raw files (`<data_root>/vsr/download/`): `test.jsonl` from cambridgeltl/visual-spatial-reasoning
`data/splits/zeroshot/test.jsonl` (the 1,222-line version; older ones had 731 lines) or the hub dataset
`cambridgeltl/vsr_zeroshot`, and `images/<image>` (the COCO-2017 images the records name; VSR's `vsr_images.zip`).

Protocol (vlm-evaluation): `true_false_prompt`, closed form over "True" / "False" at the first generated token;
accuracy (`accuracy__VSR-ExactMatch`, the paper's Avg) plus AUROC / AUPR of P(True). The per-meta-category columns
come from VSR's own relation -> meta-category dict (its analysis scripts), joined on each item's relation.
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
    accuracy,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.metrics import auroc, average_precision
from prismatic.eval.prompts import true_false_prompt

VSR_ITEMS, VSR_IMAGES = 1222, 715
CANDIDATES = ("True", "False")

# VSR's analysis_scripts/rel_meta_category_dict.txt. "among" is listed under Topological and Unallocated there; the
# official script builds the dict in this order, so Unallocated wins (it does not occur in the zero-shot test).
META_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Adjacency": ("adjacent to", "alongside", "at the side of", "at the right side of", "at the left side of",
                  "attached to", "at the back of", "ahead of", "against", "at the edge of"),
    "Directional": ("off", "past", "toward", "down", "deep down", "up", "away from", "along", "around", "from", "into",
                    "to", "across", "across from", "through", "down from"),
    "Orientation": ("facing", "facing away from", "parallel to", "perpendicular to"),
    "Projective": ("on top of", "beneath", "beside", "behind", "left of", "right of", "under", "in front of", "below",
                   "above", "over", "in the middle of"),
    "Proximity": ("by", "close to", "near", "far from", "far away from"),
    "Topological": ("connected to", "detached from", "has as a part", "part of", "contains", "within", "at", "on", "in",
                    "with", "surrounding", "among", "consists of", "out of", "between", "inside", "outside",
                    "touching"),
    "Unallocated": ("beyond", "next to", "opposite to", "after", "among", "enclosed by"),
}  # fmt: skip
RELATION_TO_CATEGORY: dict[str, str] = {rel: cat for cat, rels in META_CATEGORIES.items() for rel in rels}
# The zero-shot test's items per meta-category (the paper's cells are exact k/n with these n).
CATEGORY_COUNTS = {"Topological": 492, "Proximity": 32, "Projective": 451, "Directional": 42, "Adjacency": 116,
                   "Orientation": 49, "Unallocated": 40}  # fmt: skip


class VSR(Benchmark):
    name = "vsr"
    dataset_id = "vsr-full"
    title = "VSR (zero-shot test)"
    directory = "vsr"
    variant = "full"
    raw_files = (
        RawFile("test.jsonl", "https://huggingface.co/datasets/cambridgeltl/vsr_zeroshot/raw/main/test.jsonl",
                "1,222 lines"),
        RawFile("images/", "the COCO-2017 images named by test.jsonl (VSR README: vsr_images.zip, or COCO train/val "
                           "2017)"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (
        ("Topo.", "accuracy__VSR-Topological"), ("Prox.", "accuracy__VSR-Proximity"),
        ("Proj.", "accuracy__VSR-Projective"), ("Direc.", "accuracy__VSR-Directional"),
        ("Adj.", "accuracy__VSR-Adjacency"), ("Orien.", "accuracy__VSR-Orientation"),
        ("Unall.", "accuracy__VSR-Unallocated"), ("Avg.", "accuracy__VSR-ExactMatch"),
    )  # fmt: skip
    licence = "VSR annotations: Apache-2.0; images: COCO (Flickr terms)."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        lines = self.require(raw_dir, "test.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        self.check_count("statements in test.jsonl", len(rows), VSR_ITEMS, log)
        self.check_count("distinct images", len({r["image"] for r in rows}), VSR_IMAGES, log)
        records: Records = {}
        for example_id, row in enumerate(rows):
            records[str(example_id)] = {
                "example_id": example_id,
                "caption": row["caption"],
                "img_path": relative_to_root(raw_dir / "images" / row["image"], data_root),
                "true_false": bool(row["label"]),
                "subj": row.get("subj"),
                "obj": row.get("obj"),
                "relation": row["relation"],
            }
        unknown = sorted({r["relation"] for r in records.values()} - set(RELATION_TO_CATEGORY))
        if unknown:
            log(f"[prepare] vsr: relations without a meta-category (scored in Avg only): {unknown}")
        found = {cat: sum(RELATION_TO_CATEGORY.get(r["relation"]) == cat for r in records.values()) for cat in
                 CATEGORY_COUNTS}  # fmt: skip
        for category, expected in CATEGORY_COUNTS.items():
            self.check_count(f"{category} statements", found[category], expected, log)
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, true_false_prompt(r["caption"]), (r["img_path"],), CANDIDATES) for qid, r in records.items()
        ]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: (predictions[qid].answer == "True") == r["true_false"] for qid, r in records.items()}
        metrics = {"accuracy__VSR-ExactMatch": accuracy(list(correct.values()))}
        counts = {"VSR": len(records)}
        for category in META_CATEGORIES:
            members = [qid for qid, r in records.items() if RELATION_TO_CATEGORY.get(r["relation"]) == category]
            if members:
                metrics[f"accuracy__VSR-{category}"] = accuracy([correct[qid] for qid in members])
                counts[category] = len(members)
        labels = [bool(r["true_false"]) for r in records.values()]
        p_true = [float((predictions[qid].probabilities or {}).get("True", 0.0)) for qid in records]
        for key, value in (("auroc__VSR", auroc(labels, p_true)), ("aupr__VSR", average_precision(labels, p_true))):
            if value is not None:
                metrics[key] = 100.0 * value
        return Scores(metrics, counts)
