"""SEED-Bench (v1), image questions only: the 4-way multiple-choice questions of evaluation dimensions 1-9
(`data_type == "image"`), the paper's "SeedBench" column (Tables 3/5/6). The video dimensions 10-12 are left out.

Raw files (`<data_root>/seed-bench/download/`), either source (the official one wins when both are there):
- the hub copy `lmms-lab/SEED-Bench` (https://huggingface.co/datasets/lmms-lab/SEED-Bench): its parquet files
  `data/test-*.parquet` (any `*.parquet` under the download folder is read, in sorted path order), with columns
  question_id, question, choice_a .. choice_d, answer (a letter), data_type, data_id, question_type_id and image (a list
  of {bytes, path} image structs). Reading parquet needs pyarrow (`pip install -e .[eval]`). `prepare` writes each
  image question's picture, its bytes unchanged, to `images/<question_id>.<jpg|png|...>` in the download folder (so
  the metadata names ordinary files); this is the most practical source: one download, images included.
- the official release `AILab-CVC/SEED-Bench` (https://huggingface.co/datasets/AILab-CVC/SEED-Bench):
  `SEED-Bench.json` ({"questions": [...], "question_type": {...}}, the same fields) and its images
  `SEED-Bench-image.zip` unzipped to `SEED-Bench-image/<data_id>`.

Count: 14,233 image questions, per dimension 3,158 / 1,831 / 4,649 / 978 / 2,447 / 657 / 97 / 331 / 85 (the
SEED-Bench paper's table, in the order Scene Understanding, Instance Identity, Instance Attributes, Instance Location,
Instances Counting, ...; they sum to 14,233). Unverified here against the downloaded files, although another public
fork of vlm-evaluation asserts the same 14,233 on `SEED-Bench.json`: the total goes through `check_count` (an error
unless counts may differ), a per-dimension difference is only logged.

Dimension names: a question carries only `question_type_id`. `SEED-Bench.json` ends with its own name -> id map
(`"question_type": {"Scene Understanding": 1, ...}`), which names the dimensions when present. Public copies of that
map disagree on ids 3 and 4: the repository's DATASET.md lists "Instance Location": 3, "Instance Attributes": 4, while
the SEED-Bench-2 release and loaders built on the hub data use "Instance Attributes": 3, "Instance Location": 4. The
latter is the default (`DIMENSIONS`, used for the hub parquet, which carries no map); per-dimension counts and metric
keys follow the names, so they stay right under either numbering when the official JSON is read.

Protocol: the wlm-eval fork's `seed-bench` harness is not public, so this follows vlm-evaluation's own multiple-choice
path (an assumption): `multiple_choice_prompt(question, [choice_a, .., choice_d])` (the question, "A. .." to "D. ..",
"Answer with the option's letter from the given choices directly." -- the same text lmms-eval's seedbench task
builds), closed form over the letters A-D at the first generated token, correct when the argmax letter equals
`answer`. Metrics: `accuracy__SEED-image-Accuracy` over all image questions (the paper's "SeedBench"), and per
dimension `accuracy__SEED-<dimension name with dashes>` (e.g. `accuracy__SEED-Scene-Understanding`).
No slim subset: every image question is asked, in raw order.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from prismatic.eval.benchmark import (
    Benchmark,
    BenchmarkDataError,
    EvalItem,
    Log,
    Prediction,
    RawFile,
    Record,
    Records,
    Scores,
    accuracy,
    letters,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.prompts import multiple_choice_prompt
from prismatic.eval.raw_formats import image_bytes, parquet_rows

SEED_IMAGE_QUESTIONS = 14233
# SEED-Bench's `question_type` map (dimensions 1-9 are the image ones) and the paper's per-dimension counts.
DIMENSIONS = {
    1: "Scene Understanding", 2: "Instance Identity", 3: "Instance Attributes", 4: "Instance Location",
    5: "Instances Counting", 6: "Spatial Relation", 7: "Instance Interaction", 8: "Visual Reasoning",
    9: "Text Understanding",
}  # fmt: skip
DIMENSION_COUNTS = {"Scene Understanding": 3158, "Instance Identity": 1831, "Instance Attributes": 4649,
                    "Instance Location": 978, "Instances Counting": 2447, "Spatial Relation": 657,
                    "Instance Interaction": 97, "Visual Reasoning": 331, "Text Understanding": 85}  # fmt: skip
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
CANDIDATES = letters(len(CHOICE_KEYS))  # "A" .. "D"
OFFICIAL_JSON, OFFICIAL_IMAGES, WRITTEN_IMAGES = "SEED-Bench.json", "SEED-Bench-image", "images"
HUB_URL = "https://huggingface.co/datasets/lmms-lab/SEED-Bench"
OFFICIAL_URL = "https://huggingface.co/datasets/AILab-CVC/SEED-Bench"
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def dimension_name(question_type_id: int, names: Mapping[int, str] | None = None) -> str:
    """A dimension's name: the raw file's own map first (`SEED-Bench.json`), else DIMENSIONS."""
    if names and question_type_id in names:
        return names[question_type_id]
    return DIMENSIONS.get(question_type_id, f"dimension {question_type_id}")


def dimension_key(name: str) -> str:
    return "accuracy__SEED-" + name.replace(" ", "-")


class SEEDBench(Benchmark):
    name = "seed-bench"
    dataset_id = "seed-bench"
    title = "SEED-Bench (image questions, dimensions 1-9)"
    directory = "seed-bench"
    variant = "full"
    raw_files = (
        RawFile("data/test-*.parquet", HUB_URL, "the hub copy, images embedded; needs pip install -e .[eval]"),
        RawFile(f"{OFFICIAL_JSON} + {OFFICIAL_IMAGES}/", OFFICIAL_URL,
                "or the official release: the JSON and SEED-Bench-image.zip unzipped"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (("SeedBench", "accuracy__SEED-image-Accuracy"),)
    licence = "SEED-Bench: CC BY-NC 4.0 (non-commercial); images: CC3M terms."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        if (raw_dir / OFFICIAL_JSON).is_file():
            records = self._from_official(raw_dir, data_root)
            log(f"[prepare] seed-bench: read {raw_dir / OFFICIAL_JSON}")
        else:
            parquet = sorted(raw_dir.rglob("*.parquet"))
            if not parquet:
                raise BenchmarkDataError(
                    f"{self.title}: no {OFFICIAL_JSON} and no parquet files in {raw_dir}. {self.download_help(raw_dir)}"
                )
            records = self._from_hub(parquet, raw_dir, data_root, log)
        self.check_count("image questions", len(records), SEED_IMAGE_QUESTIONS, log)
        for name, expected in DIMENSION_COUNTS.items():
            found = sum(r["dimension"] == name for r in records.values())
            if found != expected:
                log(f"[prepare] WARNING seed-bench: {found} questions of dimension {name!r}, the SEED-Bench paper "
                    f"lists {expected}.")  # fmt: skip
        return records

    def _record(
        self, row: Mapping[str, Any], image: Path, data_root: Path, names: Mapping[int, str] | None = None
    ) -> Record:
        answer = str(row["answer"]).strip()
        if answer not in CANDIDATES:
            raise BenchmarkDataError(f"{self.title}: question {row['question_id']} has answer {row['answer']!r}, "
                                     "not a letter A-D.")  # fmt: skip
        type_id = int(row["question_type_id"])
        return {
            "question_id": str(row["question_id"]),
            "question": row["question"],
            "choices": [str(row[key]) for key in CHOICE_KEYS],
            "answer": answer,
            "question_type_id": type_id,
            "dimension": dimension_name(type_id, names),
            "data_id": str(row.get("data_id") or ""),
            "img_path": relative_to_root(image, data_root),
        }

    def _add(self, records: Records, record: Record) -> None:
        if record["question_id"] in records:
            raise BenchmarkDataError(f"{self.title}: question id {record['question_id']} repeats in the raw files.")
        records[record["question_id"]] = record

    def _from_official(self, raw_dir: Path, data_root: Path) -> Records:
        payload = json.loads((raw_dir / OFFICIAL_JSON).read_text(encoding="utf-8"))
        rows = payload["questions"] if isinstance(payload, dict) else payload
        type_map = payload.get("question_type") if isinstance(payload, dict) else None
        names = {int(v): str(k) for k, v in type_map.items()} if isinstance(type_map, dict) else None
        records: Records = {}
        for row in rows:
            if row.get("data_type") == "image":
                image = raw_dir / OFFICIAL_IMAGES / str(row["data_id"])
                self._add(records, self._record(row, image, data_root, names))
        return records

    def _from_hub(self, parquet: list[Path], raw_dir: Path, data_root: Path, log: Log) -> Records:
        records: Records = {}
        folder = raw_dir / WRITTEN_IMAGES
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        rows = (row for path in parquet for row in parquet_rows(path, self.title, batch_size=256))
        for row in rows:
            if row.get("data_type") != "image":
                continue
            cell = row.get("image")
            if isinstance(cell, list):  # a list of {bytes, path} structs: the question's one image
                cell = cell[0] if cell else None
            data = image_bytes(cell, f"{self.title}, image question {row['question_id']}")
            with Image.open(io.BytesIO(data)) as opened:
                suffix = IMAGE_SUFFIXES.get(str(opened.format), ".img")
            path = folder / f"{row['question_id']}{suffix}"
            if not path.is_file() or path.stat().st_size != len(data):
                path.write_bytes(data)
                written += 1
            self._add(records, self._record(row, path, data_root))
        log(f"[prepare] seed-bench: read {len(parquet)} parquet file(s); wrote {written} image(s) to {folder}")
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, multiple_choice_prompt(r["question"], r["choices"]), (r["img_path"],), CANDIDATES)
            for qid, r in records.items()
        ]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer"] for qid, r in records.items()}
        metrics = {"accuracy__SEED-image-Accuracy": accuracy(list(correct.values()))}
        counts = {"SEED-image": len(records)}
        for type_id in sorted({int(r["question_type_id"]) for r in records.values()}):
            members = [qid for qid, r in records.items() if int(r["question_type_id"]) == type_id]
            name = records[members[0]].get("dimension") or dimension_name(type_id)
            metrics[dimension_key(name)] = accuracy([correct[qid] for qid in members])
            counts[name] = len(members)
        return Scores(metrics, counts)
