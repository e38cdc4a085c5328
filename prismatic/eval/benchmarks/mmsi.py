"""MMSI-Bench, multi-image spatial intelligence (`mmsi-full`: 1,000 four-way multiple-choice questions, 2-10 real images
each): the paper's Table 1 (Cam-Cam / Obj-Obj / Reg-Reg / Cam-Obj / Obj-Reg / Cam-Reg / Attr. Meas. / Attr. Appr. /
Motion Cam / Motion Obj / MSR / Avg).

Raw file (`<data_root>/mmsi/download/`): `MMSI_Bench.parquet` from the hub dataset RunsenXu/MMSI-Bench (split `test`;
columns `id, images, question_type, question, answer, thought`, newer versions add `mean_normed_duration_seconds,
difficulty`). `images` holds each question's JPEG bytes (a list, 2-10 per question; a datasets-style
`{"bytes": ..., "path": ...}` struct is accepted too). `prepare` writes them to `download/images/<id>_<k>.jpg` (the
layout of MMSI-Bench's own README) and the records name them in dataset order (`img_paths`). Reading the parquet needs
pyarrow (`pip install -e .[eval]`). Licence CC BY-NC 4.0 (non-commercial); the images come from ScanNet, nuScenes,
Matterport3D, Ego4D, AgiBot-World, DTU, DAVIS-2017 and Waymo under their own terms.

Counts: 1,000 questions; per `question_type` (the exact strings, with an en dash "–")
93 / 94 / 81 / 86 / 85 / 83 / 64 / 66 / 74 / 76 / 198 in the paper's column order (every paper cell is k/n with these
n). `prepare` checks all of them. (The same 11 counts are pinned on the official revision by a public validator of
the hub split.) Copies with the legacy ASCII-hyphen names ("Positional Relationship (Cam.-Obj.)", which lmms-eval maps
back with an alias table) are read under the en-dash names.

Protocol (vlm-evaluation's closed form, as the paper scored DyVA): the user message is `multiple_choice_prompt(stem,
options)` ("{stem}\\nA. {o1}\\nB. {o2}...\\nAnswer with the option's letter from the given choices directly."), the
candidates are the option letters, the prediction is the argmax of the first generated token's probability over them,
correct = the gold letter (`answer`). All images go to the model in dataset order; the runner's keyframe policy picks
which ones fill the generative encoder's slots when there are more images than slots (MSR items have up to 10).

Stem + options: MMSI has no option columns; the options are written into `question`, as "<question text>\\nOptions: A:
<o1>, B: <o2>, C: <o3>, D: <o4>" (e.g. question 0: "The images are taken continuously from a first-person perspective.
In which direction are you moving?\\nOptions: A: Left while moving backward, B: Forward to the left, C: Forward to the
right, D: Right while moving backward", answer "C"). `split_question` takes the text after the last "Options:" label,
finds the option markers (a letter A-D followed by ":", "." or ")", at the start or after a space, comma or semicolon)
as the chain A, B, C, ... in order, and cuts the options between them (separating commas dropped); the stem is the text
before the label. A question it cannot split (no chain of at least two options, an empty option, or a gold letter
outside the parsed letters) keeps its whole text as the stem, gets candidates A-D, and is counted in the results' notes
(and the prepare log). `thought` (the annotated reasoning, i.e. the answer) is never put in the prompt, and is not
stored in the metadata.

Metrics: `accuracy__MMSI-<question_type>` per type and `accuracy__MMSI-Accuracy` = micro average over all items (the
paper's Avg = sum of correct / 1,000).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
    letters,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.raw_formats import (
    embedded_choice_item,
    gold_letter,
    image_bytes,
    option_chain,
    parquet_rows,
    write_if_changed,
)

MMSI_ITEMS = 1000
PARQUET = "MMSI_Bench.parquet"
# question_type -> (the paper's column header, its item count), in the paper's column order.
QUESTION_TYPES: dict[str, tuple[str, int]] = {
    "Positional Relationship (Cam.–Cam.)": ("Cam–Cam", 93),
    "Positional Relationship (Obj.–Obj.)": ("Obj–Obj", 94),
    "Positional Relationship (Reg.–Reg.)": ("Reg–Reg", 81),
    "Positional Relationship (Cam.–Obj.)": ("Cam–Obj", 86),
    "Positional Relationship (Obj.–Reg.)": ("Obj–Reg", 85),
    "Positional Relationship (Cam.–Reg.)": ("Cam–Reg", 83),
    "Attribute (Meas.)": ("Attr. Meas.", 64),
    "Attribute (Appr.)": ("Attr. Appr.", 66),
    "Motion (Cam.)": ("Motion Cam", 74),
    "Motion (Obj.)": ("Motion Obj", 76),
    "MSR": ("MSR", 198),
}
AVERAGE_KEY = "accuracy__MMSI-Accuracy"
# Legacy spelling of the positional types (ASCII hyphen for the en dash) -> the names above.
TYPE_ALIASES = {name.replace("–", "-"): name for name in QUESTION_TYPES if "–" in name}

_OPTIONS_LABEL = re.compile(r"options\s*:", re.IGNORECASE)
_OPTION_MARKER = re.compile(r"(?<![^\s,;(])([A-D])\s*[:.)]\s*")


def type_key(question_type: str) -> str:
    return f"accuracy__MMSI-{question_type}"


def canonical_type(question_type: object) -> str:
    """A row's `question_type` under the names of QUESTION_TYPES (legacy ASCII-hyphen spellings mapped back)."""
    name = str(question_type).strip()
    return TYPE_ALIASES.get(name, name)


def split_question(question: str) -> tuple[str, list[str]] | None:
    """(stem, options) of an MMSI question with its options written in (see the module docstring), or None."""
    labels = list(_OPTIONS_LABEL.finditer(question))
    found = option_chain(question, _OPTION_MARKER, labels[-1].end() if labels else 0)
    if found is None:
        return None
    stem = question[: labels[-1].start() if labels else found[0]].strip()
    return (stem, found[1]) if stem else None


class MMSI(Benchmark):
    name = "mmsi"
    dataset_id = "mmsi-full"
    title = "MMSI-Bench"
    directory = "mmsi"
    variant = "full"
    raw_files = (
        RawFile(PARQUET, "https://huggingface.co/datasets/RunsenXu/MMSI-Bench (MMSI_Bench.parquet)",
                "1,000 questions; the images are inside it"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (
        *((header, type_key(question_type)) for question_type, (header, _) in QUESTION_TYPES.items()),
        ("Avg.", AVERAGE_KEY),
    )
    licence = "CC BY-NC 4.0 (non-commercial); images under their source datasets' terms."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        path = self.require(raw_dir, PARQUET)
        rows = list(parquet_rows(path, self.title, ["id", "question_type", "question", "answer"]))
        for row in rows:
            row["question_type"] = canonical_type(row["question_type"])
        self.check_count(f"questions in {PARQUET}", len(rows), MMSI_ITEMS, log)
        for question_type, (_, expected) in QUESTION_TYPES.items():
            found = sum(row["question_type"] == question_type for row in rows)
            self.check_count(f"{question_type!r} questions", found, expected, log)
        unknown = sorted({row["question_type"] for row in rows} - set(QUESTION_TYPES))
        if unknown:
            log(f"[prepare] mmsi: question types outside the paper's columns (scored in Avg only): {unknown}")
        image_paths: dict[str, list[str]] = {}
        for row in parquet_rows(path, self.title, ["id", "images"]):  # the images, a batch at a time
            qid = str(row["id"])
            if qid in image_paths:
                raise BenchmarkDataError(f"{self.title}: id {qid} appears twice in {PARQUET}.")
            image_paths[qid] = []
            for k, cell in enumerate(row["images"] or []):
                image = raw_dir / "images" / f"{qid}_{k}.jpg"
                write_if_changed(image, image_bytes(cell, self.title))
                image_paths[qid].append(relative_to_root(image, data_root))
        records: Records = {}
        unparsed = []
        for row in rows:
            qid = str(row["id"])
            paths = image_paths[qid]
            if not paths:
                raise BenchmarkDataError(f"{self.title}: question {qid} has no images.")
            answer = gold_letter(row["answer"], f"{self.title} question {qid}")
            split = split_question(str(row["question"]))
            if split is not None and answer not in letters(len(split[1])):
                split = None
            if split is None:
                unparsed.append(qid)
            records[qid] = {
                "example_id": row["id"],
                "question": str(row["question"]),
                "question_type": row["question_type"],
                "img_paths": paths,
                "answer": answer,
                "stem": split[0] if split else None,
                "choices": split[1] if split else None,
                "split": "test",
            }
        if unparsed:
            log(f"[prepare] mmsi: {len(unparsed)} question(s) whose options could not be split off (asked whole, "
                f"candidates A-D), e.g. ids {unparsed[:5]}")  # fmt: skip
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [embedded_choice_item(qid, r) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer"] for qid, r in records.items()}
        metrics = {AVERAGE_KEY: accuracy(list(correct.values()))}
        counts = {"MMSI": len(records)}
        types = list(QUESTION_TYPES) + sorted({r["question_type"] for r in records.values()} - set(QUESTION_TYPES))
        for question_type in types:
            members = [qid for qid, r in records.items() if r["question_type"] == question_type]
            if members:
                metrics[type_key(question_type)] = accuracy([correct[qid] for qid in members])
                counts[question_type] = len(members)
        notes = ["Avg. = micro average over all items (sum of correct / items)."]
        unparsed = sum(not r["choices"] for r in records.values())
        if unparsed:
            notes.append(f"{unparsed} question(s) had options that could not be split off: asked with the whole "
                         "question text and candidates A-D.")  # fmt: skip
        return Scores(metrics, counts, notes)
