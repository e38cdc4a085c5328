"""What a benchmark family is to the harness: how to prepare it from the files a user downloads, which items to ask,
and how to score the answers. One family = one file in `prismatic/eval/benchmarks/` + one line in the registry.

The layout follows TRI-ML/vlm-evaluation (whose fork produced the paper's numbers):
    <data_root>/<directory>/download/...             the raw files, as downloaded (or `--raw_dir` elsewhere)
    <data_root>/<directory>/metadata-<variant>.json  `prepare` writes it: {qid: record}, image paths relative to
                                                      <data_root> (absolute when the raw files live elsewhere)
Evaluation reads only the metadata file and the images it names: nothing is downloaded at evaluation time.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prismatic.util.io import write_json_atomic

Log = Callable[[str], None]
Record = dict[str, Any]
Records = dict[str, Record]  # qid -> metadata record, in metadata order


class BenchmarkDataError(ValueError):
    """The raw or prepared files of a benchmark are missing or not what the protocol expects."""


@dataclass(frozen=True)
class RawFile:
    """A file (or folder) `prepare` reads, relative to the raw directory, and where to get it."""

    path: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class EvalItem:
    """One question: the protocol's user message (before the model's prompt builder wraps it), its images (relative
    to the data root, in dataset order) and, for closed-form scoring, the candidate strings."""

    id: str
    message: str
    images: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()  # () = open form (greedy generation)


@dataclass(frozen=True)
class Prediction:
    """A saved answer: the text (the argmax candidate for closed-form items) and the candidates' probabilities."""

    id: str
    answer: str
    probabilities: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "answer": self.answer, "probabilities": self.probabilities}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Prediction:
        return cls(str(row["id"]), str(row["answer"]), row.get("probabilities"))


@dataclass
class Scores:
    """Metrics (vlm-evaluation's key names, values in percent), per-category item counts, and notes for the report."""

    metrics: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Benchmark(ABC):
    """A benchmark family. Subclasses set the class attributes and implement `build_records`, `items` and `score`."""

    name: ClassVar[str]  # registry key and CLI name, e.g. "vsr"
    dataset_id: ClassVar[str]  # vlm-evaluation's dataset id, e.g. "vsr-full"
    title: ClassVar[str]
    directory: ClassVar[str]  # folder under the data root
    variant: ClassVar[str] = "full"  # metadata-<variant>.json ("full", "slim-1024", ...)
    raw_files: ClassVar[tuple[RawFile, ...]] = ()
    max_new_tokens: ClassVar[int] = 128  # open-form items (vlm-evaluation's default)
    # (column header, metric key) of the paper-style table, in order.
    columns: ClassVar[tuple[tuple[str, str], ...]] = ()
    licence: ClassVar[str] = ""
    # True for benchmarks whose image release is known to be incomplete (SpatialMM): `prepare` drops the items whose
    # images are missing and logs how many, instead of failing. Off by default: a missing image is an error.
    skip_missing_images: ClassVar[bool] = False

    def __init__(self, strict_counts: bool = True) -> None:
        # False for other versions of the raw files (and for tests with a handful of records): count mismatches are
        # then reported, not fatal.
        self.strict_counts = strict_counts

    # === Preparation ===
    def raw_dir(self, data_root: Path) -> Path:
        return Path(data_root) / self.directory / "download"

    def metadata_path(self, data_root: Path) -> Path:
        return Path(data_root) / self.directory / f"metadata-{self.variant}.json"

    @abstractmethod
    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        """Read the raw files, check the protocol's counts, select the subset; records keyed by qid."""

    def prepare(self, data_root: Path, raw_dir: Path | None = None, log: Log = print) -> Path:
        """Write the metadata file from the raw files; returns its path."""
        data_root = Path(data_root)
        raw_dir = Path(raw_dir) if raw_dir is not None else self.raw_dir(data_root)
        records = self.build_records(raw_dir, data_root, log)
        if self.skip_missing_images:
            records = self.drop_missing_images(records, data_root, log)
        missing = [p for r in records.values() for p in record_images(r) if not resolve_image(data_root, p).is_file()]
        if missing:
            raise BenchmarkDataError(
                f"{self.title}: {len(missing)} image(s) named by the selected items are missing, e.g. "
                f"{resolve_image(data_root, missing[0])}. {self.download_help(raw_dir)}"
            )
        path = self.metadata_path(data_root)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, records)
        log(f"[prepare] {self.name}: {len(records)} items -> {path} (sha256 {file_sha256(path)[:16]})")
        return path

    def drop_missing_images(self, records: Records, data_root: Path, log: Log) -> Records:
        """The records whose images all exist (`skip_missing_images`); the dropped ones are counted in the log. Dropping
        every record is still an error (the images folder is probably not where it should be)."""
        kept = {qid: r for qid, r in records.items()
                if all(resolve_image(data_root, p).is_file() for p in record_images(r))}  # fmt: skip
        dropped = [qid for qid in records if qid not in kept]
        if dropped and not kept:
            return records  # let `prepare` report the missing images
        if dropped:
            log(f"[prepare] {self.name}: skipped {len(dropped)} of {len(records)} items whose image is missing "
                f"(e.g. {dropped[:3]}); {len(kept)} items remain.")  # fmt: skip
        return kept

    def download_help(self, raw_dir: Path) -> str:
        files = "; ".join(f"{f.path} from {f.source}" + (f" ({f.note})" if f.note else "") for f in self.raw_files)
        return f"Put the raw files in {raw_dir}: {files}. docs/evaluation.md lists them per benchmark."

    def require(self, raw_dir: Path, relative: str) -> Path:
        """A raw file that must exist, or an error naming it and where to get it."""
        path = raw_dir / relative
        if not path.exists():
            raise BenchmarkDataError(f"{self.title}: {path} is missing. {self.download_help(raw_dir)}")
        return path

    def check_count(self, what: str, found: int, expected: int, log: Log) -> None:
        """The protocol's count of `what`: an error when it differs (a warning with `strict_counts=False`)."""
        if found == expected:
            return
        message = (
            f"{self.title}: found {found} {what}, the protocol expects {expected}: the raw file is another version "
            "than the one the paper used (docs/evaluation.md names the exact file)"
        )
        if self.strict_counts:
            raise BenchmarkDataError(f"{message}. Pass --allow_other_counts to prepare it anyway.")
        log(f"[prepare] WARNING {message}; continuing (--allow_other_counts).")

    def load_records(self, data_root: Path) -> Records:
        path = self.metadata_path(data_root)
        if not path.is_file():
            raise BenchmarkDataError(
                f"{self.title}: {path} not found. Prepare it once from the downloaded files: "
                f"python scripts/prepare_benchmarks.py --benchmarks {self.name} --data_root {data_root}"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    # === Asking and scoring ===
    @abstractmethod
    def items(self, records: Records) -> list[EvalItem]:
        """The questions to ask, one per record, in metadata order."""

    @abstractmethod
    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        """Metrics from saved predictions (a record without a prediction is an error: see `require_predictions`)."""


# === Helpers shared by the families ===
def record_images(record: Mapping[str, Any]) -> list[str]:
    """A record's image paths: `img_path` (one path or a list) or `img_paths`."""
    value = record.get("img_paths", record.get("img_path"))
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def resolve_image(data_root: Path, path: str) -> Path:
    return Path(path) if os.path.isabs(path) else Path(data_root) / path


def relative_to_root(path: Path, data_root: Path) -> str:
    """An image path as the metadata stores it: relative to the data root when under it, else absolute."""
    path, root = Path(path).resolve(), Path(data_root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def require_predictions(records: Records, predictions: Mapping[str, Prediction]) -> None:
    missing = [qid for qid in records if qid not in predictions]
    if missing:
        raise BenchmarkDataError(
            f"{len(missing)} of {len(records)} items have no prediction (e.g. {missing[:3]}); finish the run "
            "(scripts/evaluate.py resumes where it stopped) before scoring."
        )


def accuracy(correct: Sequence[bool]) -> float:
    """Percent correct (0 for no items)."""
    return 100.0 * sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def letters(count: int) -> tuple[str, ...]:
    return tuple(chr(ord("A") + i) for i in range(count))
