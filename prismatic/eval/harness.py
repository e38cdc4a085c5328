"""One benchmark, end to end: metadata -> items -> answers (runner) -> scores -> results.json and results.md; and the
same from saved predictions only (`rescore`), without the model.

`scripts/evaluate.py` calls `evaluate_benchmark` per benchmark; training's `--eval_every` calls `evaluate_in_memory`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prismatic.eval.benchmark import Benchmark, BenchmarkDataError, Prediction, file_sha256
from prismatic.eval.predict import keyframe_slots
from prismatic.eval.registry import BENCHMARKS
from prismatic.eval.results import (
    MODEL_FILE,
    RUN_FILE,
    ModelFingerprint,
    results_payload,
    write_results,
    write_tables,
)
from prismatic.eval.runner import (
    PREDICTIONS,
    RunOptions,
    answer_batch,
    batches_of,
    count_truncated,
    read_prediction_rows,
    run_items,
)
from prismatic.eval.slim import slim_ids
from prismatic.util.distributed import DistributedContext
from prismatic.util.io import write_json_atomic
from prismatic.util.preemption import Preemption

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

Log = Callable[[str], None]


def run_description(
    benchmark: Benchmark, data_root: Path, options: RunOptions, slots: int | None, truncated: int, items: int
) -> dict[str, Any]:
    """What a benchmark's predictions depend on besides the model (a resumed run must match it)."""
    metadata = benchmark.metadata_path(data_root)
    return {
        "benchmark": benchmark.name,
        "metadata": {"path": str(metadata.resolve()), "sha256": file_sha256(metadata), "items": items},
        "options": {**asdict(options), "max_new_tokens": options.max_new_tokens or benchmark.max_new_tokens},
        "multi_image": {
            "keyframe_policy": options.keyframe_policy,
            "keyframe_slots": slots,
            "items_with_more_images_than_slots": truncated,
        },
    }


def check_resumable(folder: Path, run: dict[str, Any]) -> None:
    """Saved predictions in `folder` must come from the same metadata and options, or a resume would mix runs."""
    path = folder / RUN_FILE
    if not path.is_file() or not any(folder.glob("predictions*.jsonl")):
        return
    saved = json.loads(path.read_text())
    for key in ("metadata", "options", "multi_image"):
        if saved.get(key) != run[key]:
            raise BenchmarkDataError(
                f"{folder} holds predictions made with other {key} ({saved.get(key)} vs now {run[key]}); a resumed run "
                "must use the same. Use the same settings, another --results_dir, or delete that folder to start over."
            )


def evaluate_benchmark(
    vlm: PrismaticVLM,
    fingerprint: ModelFingerprint,
    benchmark: Benchmark,
    data_root: Path,
    results_dir: Path,
    ctx: DistributedContext,
    options: RunOptions,
    log: Log = print,
    preemption: Preemption | None = None,
) -> dict[str, float] | None:
    """Answer (resuming), score and write the results; rank 0 returns the metrics, other ranks None. A preemption
    signal stops it after the batch in progress, saved (`Preempted`)."""
    records = benchmark.load_records(data_root)
    items = benchmark.items(records)
    model_folder = Path(results_dir) / fingerprint.tag
    folder = model_folder / benchmark.name
    slots = keyframe_slots(vlm)
    run = run_description(benchmark, data_root, options, slots, count_truncated(items, slots), len(items))
    if ctx.is_rank_zero:
        folder.mkdir(parents=True, exist_ok=True)
        check_resumable(folder, run)
        write_json_atomic(model_folder / MODEL_FILE, fingerprint.to_json(), indent=2)
        write_json_atomic(folder / RUN_FILE, {**run, "model": fingerprint.to_json()}, indent=2)
        truncated = run["multi_image"]["items_with_more_images_than_slots"]
        if truncated:
            log(f"[evaluate] {benchmark.name}: {truncated} items have more images than the {slots} keyframe slots; "
                f"policy {options.keyframe_policy!r} picks which to keep")  # fmt: skip
    ctx.barrier()
    max_new_tokens = options.max_new_tokens or benchmark.max_new_tokens
    predictions = run_items(vlm, items, data_root, folder, ctx, options, max_new_tokens, log, preemption)
    if predictions is None:
        return None
    return score_folder(benchmark, records, predictions, folder, log)


def score_folder(
    benchmark: Benchmark, records: dict[str, Any], predictions: dict[str, Prediction], folder: Path, log: Log
) -> dict[str, float]:
    """Score saved predictions and write results.json and the model's results.md."""
    run = json.loads((folder / RUN_FILE).read_text())
    scores = benchmark.score(records, predictions)
    write_results(folder, results_payload(benchmark, scores, run["model"], run))
    tables = write_tables(folder.parent, {name: cls() for name, cls in BENCHMARKS.items()})
    summary = ", ".join(f"{k} {v:.2f}" for k, v in scores.metrics.items() if k.startswith("accuracy__"))
    log(f"[evaluate] {benchmark.name}: {summary} -> {folder / 'results.json'}; tables in {tables}")
    return scores.metrics


def rescore(benchmark: Benchmark, model_folder: Path, data_root: Path | None = None, log: Log = print) -> dict:
    """Recompute a benchmark's metrics from its saved predictions and metadata, without the model."""
    folder = Path(model_folder) / benchmark.name
    if not (folder / PREDICTIONS).is_file():
        raise BenchmarkDataError(
            f"{folder / PREDICTIONS} not found: --rescore reads the predictions of a finished run (evaluate first)."
        )
    run = json.loads((folder / RUN_FILE).read_text())
    metadata = benchmark.metadata_path(data_root) if data_root is not None else Path(run["metadata"]["path"])
    if not metadata.is_file() or file_sha256(metadata) != run["metadata"]["sha256"]:
        raise BenchmarkDataError(
            f"{metadata} is missing or differs from the metadata the predictions were made on (sha256 "
            f"{run['metadata']['sha256'][:16]}...); pass the --data_root that holds that file."
        )
    records = json.loads(metadata.read_text(encoding="utf-8"))
    return score_folder(benchmark, records, read_prediction_rows(folder), folder, log)


def evaluate_in_memory(
    vlm: PrismaticVLM,
    benchmark: Benchmark,
    data_root: Path,
    batch_size: int,
    max_items: int | None,
    synced_gpus: bool = False,
) -> dict[str, float]:
    """Metrics of a benchmark (or of a fixed seeded subset of `max_items`, vlm-evaluation's slim rule) with nothing
    written: training's held-out check. Every rank answers every item in the same batches, so a model sharded over
    the ranks runs the same forward passes on all of them (`synced_gpus` keeps their generate loops in step)."""
    records = benchmark.load_records(data_root)
    if max_items is not None and max_items < len(records):
        records = {qid: records[qid] for qid in slim_ids(list(records), max_items)}
    items = benchmark.items(records)
    options = RunOptions(batch_size)
    predictions: dict[str, Prediction] = {}
    for batch in batches_of(items, batch_size):
        rows = answer_batch(vlm, batch, data_root, options, benchmark.max_new_tokens, synced_gpus)
        predictions |= {p.id: p for p in rows}
    return benchmark.score(records, predictions).metrics
