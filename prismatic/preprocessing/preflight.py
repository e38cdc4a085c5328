"""Preflight: find every bad sample of a LLaVA-format dataset before training starts, and apply the policy.

Checks, per sample: the record and conversation structure (roles, order, missing fields, empty); each image file
(missing, or unreadable / corrupt: opened, verified and fully decoded, on a thread pool since PIL releases the GIL
while decoding); more images than the vision backbone's frame slots; and the token budget (text + visual tokens
> llm_max_length). Lengths are bounded without a tokenizer first (bytes per turn), and only samples whose bound
exceeds the budget are tokenized for real, which keeps the pass over 665k samples short.

`run_preflight` returns a `PreflightReport` (counts per problem kind, the first examples as a table); `apply_policy`
raises a `DatasetError` under `on_bad_sample=error`, or logs every bad sample and returns the indices to drop under
`skip`. Reports can be cached as JSON keyed by the inputs, so a restarted run (and every rank) reuses the result.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.records import (
    BadSamplePolicy,
    DatasetError,
    Problem,
    ProblemKind,
    RecordKind,
    caption_conversation,
    check_policy,
    conversation_problem,
    image_relpaths,
    sample_id,
)
from prismatic.preprocessing.samples import IMAGE_CHECKS, ImageCheck, SampleTokenizer, image_problem

overwatch = initialize_overwatch(__name__)

CACHE_VERSION = 1


@dataclass
class PreflightReport:
    """Result of a preflight: one `Problem` per bad sample (the first found), over `num_samples` samples."""

    source: str
    num_samples: int
    num_image_files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[ProblemKind, int]:
        counts = Counter(problem.kind for problem in self.problems)
        return {kind: counts[kind] for kind in ProblemKind if counts[kind]}

    def bad_indices(self) -> set[int]:
        return {problem.index for problem in self.problems}

    def table(self, max_examples: int = 5) -> str:
        """A readable summary: counts per problem kind, then the first examples (index, id, file, problem)."""
        header = (
            f"Preflight of {self.source}: {self.num_samples} samples, {self.num_image_files} image files, "
            f"{len(self.problems)} bad sample(s)"
        )
        if self.ok:
            return header + "."
        lines = [header + ":", f"  {'problem':<24} {'count':>8}"]
        lines += [f"  {kind.value:<24} {count:>8}" for kind, count in self.counts().items()]
        examples = sorted(self.problems, key=lambda p: p.index)[:max_examples]
        rows = [(str(p.index), p.sample_id, p.file or "-", f"{p.kind.value}: {p.detail}") for p in examples]
        widths = [max(len(cells[i]) for cells in [("index", "id", "file", "problem"), *rows]) for i in range(3)]
        lines.append(f"  first {len(rows)} example(s):")
        for cells in [("index", "id", "file", "problem"), *rows]:
            lines.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells[:3])) + "  " + cells[3])
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "num_samples": self.num_samples, "num_image_files": self.num_image_files,
                "problems": [p.to_json() for p in self.problems]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreflightReport:
        problems = [Problem.from_json(p) for p in data["problems"]]
        return cls(data["source"], int(data["num_samples"]), int(data["num_image_files"]), problems)

    @classmethod
    def merge(cls, reports: Sequence[PreflightReport]) -> PreflightReport:
        """Combine the reports of disjoint shards (e.g. one per rank) into one."""
        problems = sorted((p for r in reports for p in r.problems), key=lambda p: p.index)
        files = sum(r.num_image_files for r in reports)
        return cls(reports[0].source, reports[0].num_samples, files, problems)


@dataclass(frozen=True)
class PreflightOptions:
    """What to check and how hard: image decoding depth, threads, progress cadence, and this process's shard."""

    check_images: ImageCheck = "load"
    num_threads: int | None = None
    progress_every: int = 20_000
    shard_index: int = 0
    num_shards: int = 1

    def __post_init__(self) -> None:
        if self.check_images not in IMAGE_CHECKS:
            raise ValueError(f"Unknown check_images={self.check_images!r}; valid values are {list(IMAGE_CHECKS)}.")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must be in [0, num_shards={self.num_shards}).")


class _Progress:
    """A log line every `every` items with rate and ETA, so long passes (665k samples) show they are alive."""

    def __init__(self, what: str, total: int, every: int) -> None:
        self.what, self.total, self.every, self.start = what, total, max(1, every), time.monotonic()

    def update(self, done: int, bad: int) -> None:
        if done % self.every and done != self.total:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        overwatch.info(
            f"preflight {self.what}: {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%), {rate:.0f}/s, "
            f"{bad} bad so far, ETA {eta:.0f}s"
        )


def run_preflight(
    records: Sequence[Any],
    image_dir: Path,
    source: Path,
    record_kind: RecordKind = "conversation",
    tokenizer: SampleTokenizer | None = None,
    max_images: int | None = None,
    options: PreflightOptions | None = None,
) -> PreflightReport:
    """Check every sample of this shard (records i with i % num_shards == shard_index); see the module docstring.

    Without `tokenizer` the token budget is not checked (e.g. when no LLM is at hand in `scripts/preprocess.py`).
    """
    options = options or PreflightOptions()
    image_dir = Path(image_dir)
    indices = range(options.shard_index, len(records), options.num_shards)
    problems: dict[int, Problem] = {}

    def flag(index: int, kind: ProblemKind, detail: str, file: str | None = None) -> None:
        problems.setdefault(index, Problem(index, sample_id(records[index], index), kind, detail, file))

    # Pass 1 (main thread): structure, image count, token budget. Collects the image files for pass 2.
    files: dict[str, list[int]] = {}
    progress = _Progress("conversations", len(indices), options.progress_every)
    for done, index in enumerate(indices, start=1):
        _check_record(records[index], index, record_kind, tokenizer, max_images, flag, files)
        progress.update(done, len(problems))

    # Pass 2 (thread pool): every distinct image file once, however many samples share it.
    if options.check_images != "none" and files:
        ordered = sorted(files)
        progress = _Progress("image files", len(ordered), options.progress_every)
        for done, (relpath, found) in enumerate(_check_files(ordered, image_dir, options), start=1):
            if found is not None:
                for index in files[relpath]:
                    flag(index, found[0], found[1], str(image_dir / relpath))
            progress.update(done, len(problems))

    return PreflightReport(str(source), len(records), len(files), sorted(problems.values(), key=lambda p: p.index))


def _check_record(
    record: Any,
    index: int,
    record_kind: RecordKind,
    tokenizer: SampleTokenizer | None,
    max_images: int | None,
    flag: Callable[..., None],
    files: dict[str, list[int]],
) -> None:
    structural = conversation_problem(record, record_kind)
    if structural is not None:
        flag(index, *structural)
        return
    relpaths = image_relpaths(record)
    if max_images is not None and len(relpaths) > max_images:
        flag(index, ProblemKind.TOO_MANY_IMAGES,
             f"{len(relpaths)} images, but the vision backbone takes at most {max_images} (its frame slots)")
        return
    if tokenizer is not None:
        conversation = caption_conversation(record) if record_kind == "caption" else record["conversations"]
        if not tokenizer.fits_without_tokenizing(conversation, bool(relpaths)):
            encoded = tokenizer.encode(conversation, bool(relpaths))
            if isinstance(encoded[0], ProblemKind):
                flag(index, *encoded)
                return
    for relpath in relpaths:
        files.setdefault(relpath, []).append(index)


def _check_files(
    relpaths: list[str], image_dir: Path, options: PreflightOptions
) -> Iterator[tuple[str, tuple[ProblemKind, str] | None]]:
    """Check files on a thread pool, in order, holding only a bounded window of pending work in memory."""
    workers = options.num_threads or min(32, 4 * (os.cpu_count() or 1))
    window = 64 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        for start in range(0, len(relpaths), window):
            chunk = relpaths[start : start + window]
            yield from zip(chunk, pool.map(lambda rel: image_problem(image_dir / rel, options.check_images), chunk))


# === Policy ===
def apply_policy(report: PreflightReport, on_bad_sample: BadSamplePolicy, log_all: bool = True) -> set[int]:
    """Raise a `DatasetError` (policy `error`) or log every bad sample and return the indices to drop (`skip`)."""
    on_bad_sample = check_policy(on_bad_sample)
    if report.ok:
        overwatch.info(report.table())
        return set()
    if on_bad_sample == "error":
        raise DatasetError(
            f"{report.table()}\nFix or remove these samples (the file and the problem are named above), or set "
            "on_bad_sample=skip to train without them (every skipped sample is counted and logged)."
        )
    overwatch.warning(report.table() + "\non_bad_sample=skip: dropping these samples.")
    if log_all:
        for problem in report.problems:
            overwatch.info(f"skipped {problem.describe()}")
    return report.bad_indices()


# === Cache ===
def fingerprint(json_path: Path, **settings: Any) -> dict[str, Any]:
    """What a cached report depends on: the JSON file's identity and every check setting."""
    stat = Path(json_path).stat()
    return {"version": CACHE_VERSION, "json": str(Path(json_path).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, **{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}}


def load_cached_report(cache_file: Path | None, key: dict[str, Any]) -> PreflightReport | None:
    if cache_file is None or not Path(cache_file).is_file():
        return None
    try:
        data = json.loads(Path(cache_file).read_text())
    except (OSError, json.JSONDecodeError):
        overwatch.warning(f"Ignoring unreadable preflight cache {cache_file}; re-running the preflight.")
        return None
    if data.get("key") != key:
        overwatch.info(f"Preflight cache {cache_file} was made with other inputs or settings; re-running.")
        return None
    overwatch.info(f"Reusing the preflight report cached in {cache_file}.")
    return PreflightReport.from_json(data["report"])


def save_report(cache_file: Path, key: dict[str, Any], report: PreflightReport) -> None:
    """Write atomically (temporary file, then rename), so a crash never leaves a half-written cache."""
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "report": report.to_json()}, indent=1))
    tmp.replace(cache_file)
