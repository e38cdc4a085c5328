"""Where results go and what they say: the model's fingerprint, one JSON per model x benchmark, and the tables.

    <results_dir>/<model tag>/model.json                 the fingerprint (weights sha256, config identity)
    <results_dir>/<model tag>/<benchmark>/run.json       what the predictions were made with (checked on resume)
    <results_dir>/<model tag>/<benchmark>/predictions.jsonl
    <results_dir>/<model tag>/<benchmark>/results.json   metrics (schema RESULTS_SCHEMA_VERSION)
    <results_dir>/<model tag>/results.md                 paper-style tables of every benchmark scored so far

The model tag is `<name>-<first 12 hex digits of the weights' sha256>`, so two checkpoints with the same name never
share (or overwrite) results, and the same weights always land in the same folder.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prismatic.eval.benchmark import Benchmark, Scores, file_sha256
from prismatic.eval.paper import paper_numbers
from prismatic.util.io import write_json_atomic, write_text_atomic

RESULTS_SCHEMA_VERSION = 1
MODEL_FILE, RUN_FILE, RESULTS_FILE, TABLES_FILE = "model.json", "run.json", "results.json", "results.md"
# Weight files, in the order they are looked for: our run directories, then the authors' release layout.
WEIGHT_FILES = ("model.safetensors", "checkpoints/latest-checkpoint.pt")


@dataclass(frozen=True)
class ModelFingerprint:
    name: str
    model_id: str  # the config's model id (a released id for the authors' checkpoints)
    source: str  # the run directory or released id as given
    weights: str  # the weight file read
    weights_sha256: str

    @property
    def tag(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.name).strip("_") or "model"
        return f"{safe}-{self.weights_sha256[:12]}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "model_id": self.model_id, "source": self.source, "weights": self.weights,
                "weights_sha256": self.weights_sha256}  # fmt: skip


def fingerprint_directory(directory: Path, source: str) -> ModelFingerprint:
    """The fingerprint of a run directory or a release-layout directory (its config.json and weight file)."""
    directory = Path(directory)
    weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{directory} has no weights ({' or '.join(WEIGHT_FILES)}); is it a finished run?")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    model_id = str(config.get("model", {}).get("model_id", directory.name))
    name = directory.name if directory.name not in ("", ".") else model_id
    return ModelFingerprint(name, model_id, source, str(weights.resolve()), file_sha256(weights))


def code_version() -> dict[str, str]:
    """The package version and, from a git checkout, the commit (with `+dirty` when files differ from it)."""
    try:
        package = version("dyva-worldlm")
    except PackageNotFoundError:
        package = "unknown"
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"package": package, "git_commit": commit}


def results_payload(
    benchmark: Benchmark,
    scores: Scores,
    fingerprint: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "benchmark": benchmark.name,
        "dataset_id": benchmark.dataset_id,
        "title": benchmark.title,
        "model": fingerprint,
        "metadata": run["metadata"],
        "options": run["options"],
        "multi_image": run.get("multi_image"),
        "code": code_version(),
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": scores.metrics,
        "counts": scores.counts,
        "notes": scores.notes,
    }


def write_results(folder: Path, payload: dict[str, Any]) -> Path:
    path = Path(folder) / RESULTS_FILE
    write_json_atomic(path, payload, indent=2)
    return path


# === Tables ===
def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def benchmark_table(benchmark: Benchmark, metrics: dict[str, float], model_label: str, model_id: str) -> str:
    """A Markdown table laid out like the paper's: our row, and the paper's row for a released model."""
    columns = benchmark.columns or tuple((key, key) for key in metrics)
    header = "| Model | " + " | ".join(label for label, _ in columns) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in columns) + " |"
    rows = [f"| {model_label} (ours) | " + " | ".join(_cell(metrics.get(key)) for _, key in columns) + " |"]
    # A released model is known by its config's model id, or (a local copy of the release) by its folder's name.
    released = next((key for key in (model_id, model_label) if paper_numbers(key, benchmark.name)), None)
    if released is not None:
        reported = paper_numbers(released, benchmark.name)
        rows.append(f"| {released} (paper) | " + " | ".join(_cell(reported.get(label)) for label, _ in columns) + " |")
    return "\n".join([f"**{benchmark.title}**", "", header, rule, *rows])


def multi_image_notes(payload: dict[str, Any]) -> list[str]:
    multi = payload.get("multi_image") or {}
    affected = multi.get("items_with_more_images_than_slots", 0)
    if not affected:
        return []
    return [f"{affected} item(s) had more images than the {multi['keyframe_slots']} keyframe slots; the "
            f"{multi['keyframe_policy']!r} policy chose which to keep."]  # fmt: skip


def write_tables(model_folder: Path, benchmarks: dict[str, Benchmark]) -> Path:
    """results.md of a model folder: one table per benchmark that has a results.json there."""
    sections = []
    for name, benchmark in benchmarks.items():
        results_path = Path(model_folder) / name / RESULTS_FILE
        if not results_path.is_file():
            continue
        payload = json.loads(results_path.read_text())
        model = payload["model"]
        table = benchmark_table(benchmark, payload["metrics"], model["name"], model["model_id"])
        counts = ", ".join(f"{k} {v}" for k, v in payload.get("counts", {}).items())
        notes = "".join(f"\n- {note}" for note in [*payload.get("notes", []), *multi_image_notes(payload)])
        sections.append(f"{table}\n\nItems: {counts}.{notes}")
    path = Path(model_folder) / TABLES_FILE
    write_text_atomic(path, "\n\n".join(sections) + "\n")
    return path
