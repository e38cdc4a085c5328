"""3DSRBench, 3D spatial reasoning, real split (`3dsr-full`: the MS-COCO-image rows of 3DSRBench v1, 2-4 options per
question): the paper's Table 2 (H. / L. / O. / M. / Avg) and Table 3 ("3DSR").

Raw files (`<data_root>/3dsrbench/download/`): `3dsrbench_v1-00000-of-00001.parquet` from the hub dataset ccvl/3DSRBench
(columns `index, question, A, B, C, D, answer, category, image_source, image_url`; `index` is the question id, a string
such as "VIN6MS3J"; absent options are null, e.g. C and D of a 2-option row; an optional `qid` column is used as the id
when present), and `images/<file name of image_url>` (the COCO-2017 images, e.g. `images/000000557944.jpg`: unzip the
same repository's `coco_images.zip` so the files land there, or copy them from COCO train2017 / val2017). "Real" =
`image_source == "MS-COCO"`; the other rows (HSSD renders) are not used. Only this parquet is supported, not the
VLMEvalKit TSVs with base64 images (their circular rows are a different item set). Reading it needs pyarrow (`pip
install -e .[eval]`). Licence CC-BY-4.0; the images carry COCO's terms.

Counts: the paper's cells imply per-row accuracy over 2,625 rows, H 350 / L 875 / O 525 / M 875 (DERIVED from its
numbers, e.g. DyVA-7B Avg 1192/2625); `prepare` checks the real rows against them. If your file gives other counts it
is another version; `--allow_other_counts` prepares it anyway.

Protocol (vlm-evaluation's closed form, as the paper scored DyVA): the options are the non-empty of A-D, in that order
(re-lettered A, B, ... if one in the middle were empty); the user message is `multiple_choice_prompt(question,
options)` ("{question}\\nA. {o1}\\nB. {o2}...\\nAnswer with the option's letter from the given choices directly."),
the candidates are the option letters, the prediction is the argmax of the first generated token's probability over
them, correct = the gold letter (`answer`).

Categories -> columns: height_higher -> H; location_above, location_closer_to_camera, location_next_to -> L;
orientation_in_front_of, orientation_on_the_left, orientation_viewpoint -> O; multi_object_closer_to,
multi_object_facing, multi_object_viewpoint_towards_object, multi_object_parallel, multi_object_same_direction -> M.
Metrics: the primary one is per-row ("vanilla") accuracy: `accuracy__3DSR-<category>` per category,
`accuracy__3DSR-{Height,Location,Orientation,MultiObject}` per column, `accuracy__3DSR-Accuracy` = micro average over
all real rows (the paper's Avg). When the file has a `qid` column whose ids carry variant suffixes (`<base>-1`,
`<base>-flip`, ...), `accuracy__3DSR-Circular` (a base question counts only if all its rows are right; the official
CircularEval idea) is reported as a secondary metric; it is much lower than per-row accuracy and is not the paper's.
"""

from __future__ import annotations

import math
from collections import defaultdict
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
from prismatic.eval.prompts import multiple_choice_prompt
from prismatic.eval.raw_formats import gold_letter, parquet_rows

PARQUET = "3dsrbench_v1-00000-of-00001.parquet"
REAL_SOURCE = "MS-COCO"
REQUIRED_COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "category", "image_source", "image_url")
# Paper column header -> (metric name, categories, rows the paper's numbers imply).
COLUMNS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "H.": ("Height", ("height_higher",), 350),
    "L.": ("Location", ("location_above", "location_closer_to_camera", "location_next_to"), 875),
    "O.": ("Orientation", ("orientation_in_front_of", "orientation_on_the_left", "orientation_viewpoint"), 525),
    "M.": ("MultiObject", ("multi_object_closer_to", "multi_object_facing", "multi_object_viewpoint_towards_object",
                           "multi_object_parallel", "multi_object_same_direction"), 875),
}  # fmt: skip
CATEGORY_TO_COLUMN = {category: header for header, (_, cats, _) in COLUMNS.items() for category in cats}
REAL_ROWS = sum(n for _, _, n in COLUMNS.values())  # 2,625
AVERAGE_KEY = "accuracy__3DSR-Accuracy"
CIRCULAR_KEY = "accuracy__3DSR-Circular"


def key(name: str) -> str:
    return f"accuracy__3DSR-{name}"


def present(value: Any) -> bool:
    """An option cell that holds an option (not None, NaN or blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip())


def base_question(qid: str) -> str:
    """The base question of a circular / flip variant id (`VIN6MS3J-flip-1` -> `VIN6MS3J`)."""
    return qid.split("-")[0]


class ThreeDSR(Benchmark):
    name = "3dsrbench"
    dataset_id = "3dsr-full"
    title = "3DSRBench (real)"
    directory = "3dsrbench"
    variant = "full"
    raw_files = (
        RawFile(PARQUET, "https://huggingface.co/datasets/ccvl/3DSRBench", "the real split = its MS-COCO rows"),
        RawFile("images/", "the COCO-2017 images named by image_url (3DSRBench's coco_images.zip, or COCO 2017)"),
    )
    max_new_tokens = 1
    columns = (*((header, key(name)) for header, (name, _, _) in COLUMNS.items()), ("Avg.", AVERAGE_KEY))
    licence = "CC-BY-4.0; images: COCO (Flickr terms)."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        path = self.require(raw_dir, PARQUET)
        rows = list(parquet_rows(path, self.title))
        missing = [c for c in REQUIRED_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise BenchmarkDataError(f"{self.title}: {path} has no column(s) {missing}; is it the right file?")
        real = [row for row in rows if row["image_source"] == REAL_SOURCE]
        log(f"[prepare] 3dsrbench: {len(real)} of {len(rows)} rows have MS-COCO images (the real split)")
        self.check_count(f"real ({REAL_SOURCE}) rows in {PARQUET}", len(real), REAL_ROWS, log)
        for header, (name, categories, expected) in COLUMNS.items():
            found = sum(row["category"] in categories for row in real)
            self.check_count(f"{name} ({header}) rows", found, expected, log)
        unknown = sorted({str(row["category"]) for row in real} - set(CATEGORY_TO_COLUMN))
        if unknown:
            log(f"[prepare] 3dsrbench: categories outside the paper's columns (scored in Avg only): {unknown}")
        records: Records = {}
        for row in real:
            qid = str(row["qid"]) if row.get("qid") is not None else str(row["index"])
            if qid in records:
                raise BenchmarkDataError(f"{self.title}: question id {qid} appears twice among the real rows.")
            options = [(letter, str(row[letter]).strip()) for letter in "ABCD" if present(row[letter])]
            answer = gold_letter(row["answer"], f"{self.title} question {qid}")
            given = [letter for letter, _ in options]
            if answer not in given or len(options) < 2:
                raise BenchmarkDataError(f"{self.title}: question {qid}: answer {answer!r} is not one of its "
                                         f"options {given}.")  # fmt: skip
            if not row["image_url"]:
                raise BenchmarkDataError(f"{self.title}: question {qid} has no image_url.")
            image = raw_dir / "images" / str(row["image_url"]).rstrip("/").rsplit("/", 1)[-1]
            records[qid] = {
                "example_id": qid,
                "index": row["index"],
                "question": str(row["question"]),
                "choices": [text for _, text in options],
                "answer": letters(len(options))[given.index(answer)],
                "category": str(row["category"]),
                "img_path": relative_to_root(image, data_root),
                "image_source": row["image_source"],
                "image_url": row["image_url"],
            }
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, multiple_choice_prompt(r["question"], r["choices"]), (r["img_path"],),
                     letters(len(r["choices"])))
            for qid, r in records.items()
        ]  # fmt: skip

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer"] for qid, r in records.items()}
        metrics = {AVERAGE_KEY: accuracy(list(correct.values()))}
        counts = {"3DSR": len(records)}
        for header, (name, categories, _) in COLUMNS.items():
            members = [qid for qid, r in records.items() if r["category"] in categories]
            if members:
                metrics[key(name)] = accuracy([correct[qid] for qid in members])
                counts[header] = len(members)
        for category in sorted({r["category"] for r in records.values()}):
            members = [qid for qid, r in records.items() if r["category"] == category]
            metrics[key(category)] = accuracy([correct[qid] for qid in members])
        notes = ["Primary metric: per-row (vanilla) accuracy; Avg. = micro average over all real rows."]
        groups: dict[str, list[bool]] = defaultdict(list)
        for qid in records:
            groups[base_question(qid)].append(correct[qid])
        if any(len(group) > 1 for group in groups.values()):
            metrics[CIRCULAR_KEY] = accuracy([all(group) for group in groups.values()])
            counts["base questions"] = len(groups)
            notes.append(f"Circular (secondary): a base question counts only if all its rows are right "
                         f"({len(groups)} base questions).")  # fmt: skip
        return Scores(metrics, counts, notes)
