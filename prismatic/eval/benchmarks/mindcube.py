"""MindCube, spatial mental modelling from a few views (`mindcube-full`: MindCube-Tiny, 1,050 multiple-choice questions
over 428 multi-view images, 2-4 views each): the paper's Table 1 (Rot. / Among / Around / Avg).

Raw files (`<data_root>/mindcube/download/`): the hub dataset MLL-Lab/MindCube's `data.zip`, unzipped there as is, so
that `download/data/raw/MindCube_tinybench.jsonl` and the images it names (`download/data/other_all_image/...`; the
records give them relative to `data/`) exist. (`raw/MindCube_tinybench.jsonl` or `MindCube_tinybench.jsonl` directly
under `download/` work too; the images are then looked up beside the `raw/` folder, or beside the file.) JSONL fields:
`id, category (list), type, meta_info, question (options written in as "A. ... B. ..."), images (list), gt_answer`.
Licence MIT.

Counts (checked): 1,050 questions, 428 distinct images, settings among 600 / around 250 / rotation 200.

Which set the paper used is unclear: its DyVA cells are consistent with n = 1,000 per setting, which matches neither
Tiny nor the full benchmark (`MindCube.jsonl`, 21,154 questions), and the authors' `mindcube-full` id names neither.
Tiny is the default because it is the benchmark's own evaluation set (MindCube's lmms-eval and VLMEvalKit configs) and
evaluates in minutes. The full set is the separate family `mindcube-all` (same protocol, `MindCube.jsonl` from the
same zip; only its total is checked). The paper's Avg cannot be reproduced from its columns (no non-negative weighting
of Rot. / Among / Around gives it for any row), so compare the columns, not the Avg.

Protocol (vlm-evaluation's closed form, as the paper scored DyVA): the user message is
`multiple_choice_prompt(stem, options)` ("{stem}\\nA. {o1}\\nB. {o2}...\\nAnswer with the option's letter from the
given choices directly."), the candidates are the option letters, the prediction is the argmax of the first generated
token's probability over them, correct = `gt_answer`. The views go to the model in dataset order. `meta_info` (view
count, objects, orientations) is never put in the prompt.

Stem + options: `split_question` finds the option markers (a letter A-E followed by "." at the start or after white
space) as the chain A, B, C, ... in order, and cuts the options between them; the stem is the text before "A.". A
question it cannot split (fewer than two options, an empty one, or a gold letter outside them) keeps its whole text as
the stem, gets candidates A-D, and is counted in the results' notes.

Setting = MindCube's `get_setting_from_id` on the lower-cased id, in its order: 'around' -> around, 'rotation' ->
rotation, 'translation' -> translation, 'among' -> among, else other. Metrics: `accuracy__MindCube-<setting>` per
setting present and `accuracy__MindCube-Accuracy` = micro average over among + around + rotation (translation and
other are excluded from the overall, as in MindCube's evaluation; Tiny has neither).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    letters,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.raw_formats import embedded_choice_item, gold_letter, option_chain

TINY_FILE, FULL_FILE = "MindCube_tinybench.jsonl", "MindCube.jsonl"
TINY_ITEMS, TINY_IMAGES = 1050, 428
TINY_SETTINGS = {"among": 600, "around": 250, "rotation": 200}
FULL_ITEMS = 21154
OVERALL_SETTINGS = ("among", "around", "rotation")
SETTINGS = ("rotation", "among", "around", "translation", "other")  # report order (the paper's columns first)
AVERAGE_KEY = "accuracy__MindCube-Accuracy"
ZIP_SOURCE = "https://huggingface.co/datasets/MLL-Lab/MindCube (data.zip, unzipped into the raw directory)"

_OPTION_MARKER = re.compile(r"(?<!\S)([A-E])\.\s*")


def setting_from_id(item_id: str) -> str:
    """MindCube's `get_setting_from_id` (src/evaluation/core/extractors.py): substring tests in this order."""
    lowered = str(item_id).lower()
    for setting in ("around", "rotation", "translation", "among"):
        if setting in lowered:
            return setting
    return "other"


def split_question(question: str) -> tuple[str, list[str]] | None:
    """(stem, options) of a MindCube question with "A. ... B. ..." written in, or None."""
    found = option_chain(question, _OPTION_MARKER)
    if found is None:
        return None
    stem = question[: found[0]].strip()
    return (stem, found[1]) if stem else None


def setting_key(setting: str) -> str:
    return f"accuracy__MindCube-{setting}"


class MindCube(Benchmark):
    name = "mindcube"
    dataset_id = "mindcube-full"
    title = "MindCube (Tiny)"
    directory = "mindcube"
    variant = "full"
    raw_files = (
        RawFile(f"data/raw/{TINY_FILE}", ZIP_SOURCE, "1,050 questions"),
        RawFile("data/other_all_image/", ZIP_SOURCE, "the multi-view images, in the same zip"),
    )
    max_new_tokens = 1
    columns = (
        ("Rot.", setting_key("rotation")), ("Among", setting_key("among")), ("Around", setting_key("around")),
        ("Avg.", AVERAGE_KEY),
    )  # fmt: skip
    licence = "MIT."
    jsonl: str = TINY_FILE

    def locate(self, raw_dir: Path) -> tuple[Path, Path]:
        """(the JSONL, the folder its image paths are relative to)."""
        for relative in (f"data/raw/{self.jsonl}", f"raw/{self.jsonl}", self.jsonl):
            path = raw_dir / relative
            if path.is_file():
                return path, path.parent.parent if path.parent.name == "raw" else path.parent
        return self.require(raw_dir, f"data/raw/{self.jsonl}"), raw_dir  # raises, naming the file

    def check_counts(self, rows: list[dict[str, Any]], log: Log) -> None:
        self.check_count(f"questions in {TINY_FILE}", len(rows), TINY_ITEMS, log)
        self.check_count("distinct images", len({p for row in rows for p in row["images"]}), TINY_IMAGES, log)
        settings = Counter(setting_from_id(row["id"]) for row in rows)
        for setting, expected in TINY_SETTINGS.items():
            self.check_count(f"{setting} questions", settings[setting], expected, log)

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        path, image_root = self.locate(raw_dir)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.check_counts(rows, log)
        records: Records = {}
        unparsed = []
        for row in rows:
            qid = str(row["id"])
            if qid in records:
                raise BenchmarkDataError(f"{self.title}: id {qid} appears twice in {path}.")
            answer = gold_letter(row["gt_answer"], f"{self.title} question {qid}")
            split = split_question(str(row["question"]))
            if split is not None and answer not in letters(len(split[1])):
                split = None
            if split is None:
                unparsed.append(qid)
            records[qid] = {
                "example_id": qid,
                "question": str(row["question"]),
                "setting": setting_from_id(qid),
                "type": row.get("type"),
                "category": row.get("category"),
                "img_paths": [relative_to_root(image_root / p, data_root) for p in row["images"]],
                "answer": answer,
                "stem": split[0] if split else None,
                "choices": split[1] if split else None,
                "split": Path(self.jsonl).stem,
            }
        log(f"[prepare] {self.name}: settings {dict(Counter(r['setting'] for r in records.values()))}")
        if unparsed:
            log(f"[prepare] {self.name}: {len(unparsed)} question(s) whose options could not be split off (asked "
                f"whole, candidates A-D), e.g. ids {unparsed[:5]}")  # fmt: skip
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [embedded_choice_item(qid, r) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer"] for qid, r in records.items()}
        overall = [correct[qid] for qid, r in records.items() if r["setting"] in OVERALL_SETTINGS]
        metrics = {AVERAGE_KEY: accuracy(overall)}
        counts = {"MindCube (overall)": len(overall)}
        for setting in SETTINGS:
            members = [qid for qid, r in records.items() if r["setting"] == setting]
            if members:
                metrics[setting_key(setting)] = accuracy([correct[qid] for qid in members])
                counts[setting] = len(members)
        notes = [
            "Avg. = micro average over among + around + rotation (translation and other excluded, as in MindCube's "
            "evaluation). The paper's Avg. cannot be reproduced from its columns; compare the columns.",
        ]
        unparsed = sum(not r["choices"] for r in records.values())
        if unparsed:
            notes.append(f"{unparsed} question(s) had options that could not be split off: asked with the whole "
                         "question text and candidates A-D.")  # fmt: skip
        return Scores(metrics, counts, notes)


class MindCubeAll(MindCube):
    """The full MindCube benchmark (`MindCube.jsonl`, 21,154 questions), same protocol; only its total is checked."""

    name = "mindcube-all"
    dataset_id = "mindcube-all"
    title = "MindCube (full set)"
    variant = "all"
    raw_files = (
        RawFile(f"data/raw/{FULL_FILE}", ZIP_SOURCE, "21,154 questions"),
        RawFile("data/other_all_image/", ZIP_SOURCE, "the multi-view images, in the same zip"),
    )
    jsonl = FULL_FILE

    def check_counts(self, rows: list[dict[str, Any]], log: Log) -> None:
        self.check_count(f"questions in {FULL_FILE}", len(rows), FULL_ITEMS, log)
