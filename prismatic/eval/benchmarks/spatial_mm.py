"""SpatialMM-Obj (Spatial-MM, EMNLP 2024, "An Empirical Analysis on Spatial Reasoning Capabilities of LMMs"): one- and
two-object spatial multiple-choice questions ("Where is the dog located from camera's perspective?"), the paper's
Table 2 / Table 3 "SpatialMM" columns 1-obj / 2-obj / Avg.

Raw files (`<data_root>/spatial-mm-obj/download/`): `spatial_mm_one_obj.json` (502 items) and `spatial_mm_two_obj.json`
(1,074 items) from GitHub FatemehShiri/Spatial-MM, folder `data/` (some revisions keep the one-object file at the
repository root), and the images in `images/<image_name>`, from the Google Drive folder the repository's README links
(there is no other mirror). A raw item: {"image_name": "1b875201ff.jpg", "question": "Which direction is elephant facing
from camera's perspective?\\nA. left\\nB. right\\nC. bottom\\nD. front", "answer": "B. right", "object1":
"elephant", "object2": ""}. Two- and four-option questions are mixed.

Protocol (the wlm-eval fork's `spatial-mm-obj` is not public; this is vlm-evaluation's multiple-choice path, the most
likely one): the options are inline in `question`, so it is split into the stem (the lines before the first "A. ..."
line) and the options ("<letter>. <text>" lines, letters A, B, ... in order); the prompt is
`multiple_choice_prompt(stem, options)`, the model answers closed form over the options' letters at the first
generated token, and the item is correct when that letter is the answer's letter `answer[0]`.
Metrics: `accuracy__SpatialMM-one-obj`, `accuracy__SpatialMM-two-obj` and `accuracy__SpatialMM-Obj` (micro over all
scored items; the paper's Avg. matches a micro average). qids are "one-<index>" / "two-<index>", the index in the file.

Decisions:
- Six items have an answer letter that disagrees with the answer text (e.g. "C. middle" where option C is "left"; two
  one-object, four two-object items): they are scored by the letter, which is what a letter-probability harness
  does; `prepare` logs them, each record carries `answer_text_mismatch`, and the score notes count them.
- Items whose image is missing from the download are dropped with a logged count (`skip_missing_images`) instead of
  failing: the granularity of the paper's two-object numbers implies about 1,054 scored items, not 1,074, most likely
  for this reason. The score notes give the items scored per file against 502 / 1,074.
"""

from __future__ import annotations

import json
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
from prismatic.eval.prompts import multiple_choice_prompt

# split -> (raw file, items in it, metric key)
SPLITS = {
    "one": ("spatial_mm_one_obj.json", 502, "accuracy__SpatialMM-one-obj"),
    "two": ("spatial_mm_two_obj.json", 1074, "accuracy__SpatialMM-two-obj"),
}
OVERALL = "accuracy__SpatialMM-Obj"
REPO_URL = "https://github.com/FatemehShiri/Spatial-MM"
OPTION = re.compile(r"^\s*([A-Z])\s*[.)]\s*(.*?)\s*$")


def parse_question(question: str) -> tuple[str, list[str]]:
    """The stem (lines before the first option) and the option texts ("A. left" lines, letters A, B, ... in order);
    ValueError when the options are not that."""
    lines = question.split("\n")
    first = next((i for i, line in enumerate(lines) if OPTION.match(line) and OPTION.match(line).group(1) == "A"), None)
    if first is None or first == 0:
        raise ValueError("no stem followed by an 'A. ...' option line")
    stem = "\n".join(lines[:first]).strip()
    options = []
    for line in lines[first:]:
        if not line.strip():
            continue
        match = OPTION.match(line)
        if match is None or match.group(1) != chr(ord("A") + len(options)):
            raise ValueError(f"unexpected line among the options: {line!r}")
        options.append(match.group(2))
    if len(options) < 2:
        raise ValueError("fewer than two options")
    return stem, options


class SpatialMM(Benchmark):
    name = "spatial-mm-obj"
    dataset_id = "spatial-mm-obj"
    title = "SpatialMM-Obj (one- and two-object)"
    directory = "spatial-mm-obj"
    variant = "full"
    raw_files = (
        RawFile("spatial_mm_one_obj.json", f"{REPO_URL} (data/spatial_mm_one_obj.json)", "502 items"),
        RawFile("spatial_mm_two_obj.json", f"{REPO_URL} (data/spatial_mm_two_obj.json)", "1,074 items"),
        RawFile("images/", f"the Google Drive folder linked in {REPO_URL}'s README", "images/<image_name>"),
    )
    max_new_tokens = 1
    columns = (("1-obj", "accuracy__SpatialMM-one-obj"), ("2-obj", "accuracy__SpatialMM-two-obj"), ("Avg.", OVERALL))
    licence = "Spatial-MM: no licence stated in the repository; images: their web sources' terms."
    skip_missing_images = True

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        self.require(raw_dir, "images")
        records: Records = {}
        mismatched = []
        for split, (file_name, expected, _) in SPLITS.items():
            rows = json.loads(self.require(raw_dir, file_name).read_text(encoding="utf-8"))
            self.check_count(f"items in {file_name}", len(rows), expected, log)
            for index, row in enumerate(rows):
                qid = f"{split}-{index}"
                try:
                    stem, options = parse_question(row["question"])
                except ValueError as error:
                    raise BenchmarkDataError(f"{self.title}: item {index} of {file_name}: {error}.") from error
                answer = str(row["answer"]).strip()
                letter = answer[:1]
                if letter not in letters(len(options)):
                    raise BenchmarkDataError(f"{self.title}: item {index} of {file_name} has answer {answer!r}, whose "
                                             f"letter is not one of its {len(options)} options.")  # fmt: skip
                match = OPTION.match(answer)
                answer_text = match.group(2) if match else answer[1:].lstrip(". )")
                mismatch = " ".join(answer_text.lower().split()) != " ".join(options[ord(letter) - 65].lower().split())
                if mismatch:
                    mismatched.append(qid)
                records[qid] = {
                    "split": split,
                    "index": index,
                    "image_name": row["image_name"],
                    "question": row["question"],
                    "stem": stem,
                    "options": options,
                    "answer": answer,
                    "answer_letter": letter,
                    "answer_text_mismatch": mismatch,
                    "object1": row.get("object1", ""),
                    "object2": row.get("object2", ""),
                    "img_path": relative_to_root(raw_dir / "images" / row["image_name"], data_root),
                }
        if mismatched:
            log(f"[prepare] spatial-mm-obj: {len(mismatched)} item(s) whose answer letter disagrees with the answer "
                f"text ({mismatched}); scored by the letter.")  # fmt: skip
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, multiple_choice_prompt(r["stem"], r["options"]), (r["img_path"],), letters(len(r["options"])))
            for qid, r in records.items()
        ]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer_letter"] for qid, r in records.items()}
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        notes = []
        for split, (file_name, expected, key) in SPLITS.items():
            members = [qid for qid, r in records.items() if r["split"] == split]
            if members:
                metrics[key] = accuracy([correct[qid] for qid in members])
            counts[f"{split}-obj"] = len(members)
            if len(members) != expected:
                notes.append(f"{file_name}: {len(members)} of {expected} items scored (the others' images are "
                             "missing).")  # fmt: skip
        metrics[OVERALL] = accuracy(list(correct.values()))
        counts["SpatialMM-Obj"] = len(records)
        mismatched = sum(bool(r.get("answer_text_mismatch")) for r in records.values())
        if mismatched:
            notes.append(f"{mismatched} item(s) have an answer letter that disagrees with the answer text; scored by "
                         "the letter.")  # fmt: skip
        return Scores(metrics, counts, notes)
