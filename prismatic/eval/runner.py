"""Running a benchmark: batched, data-parallel under torchrun, resumable, with every answer saved as it is made.

The items are cut into fixed batches (item order, `batch_size`); batch b runs on rank b % world_size. So a batch holds
the same items whatever the number of processes or however often the run was interrupted, and the answers (and
probabilities) are the ones a single uninterrupted process computes. Each rank appends its batches' answers to
`predictions.rank<r>.jsonl` and flushes them per batch; a restarted run (any world size) reads every prediction file
in the folder, skips batches whose items are all answered, and recomputes the rest. When all are done, rank 0 merges
them into `predictions.jsonl` (metadata order) and removes the per-rank files. On a preemption signal
(`prismatic.util.preemption`) each rank finishes and saves the batch it is answering and raises `Preempted`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from prismatic.eval.benchmark import EvalItem, Prediction, resolve_image
from prismatic.eval.predict import (
    KeyframePolicy,
    RowImages,
    candidate_token_ids,
    first_token_logits,
    generate_answers,
    keyframe_slots,
    select_keyframes,
    wrap_prompts,
)
from prismatic.util.distributed import DistributedContext
from prismatic.util.io import write_text_atomic
from prismatic.util.preemption import Preemption

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

PREDICTIONS = "predictions.jsonl"
RANK_PREDICTIONS = "predictions.rank{rank}.jsonl"
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 8
    keyframe_policy: KeyframePolicy = "subsample"
    max_new_tokens: int | None = None  # None = the benchmark's own

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")


# === Saved predictions ===
def read_prediction_rows(folder: Path) -> dict[str, Prediction]:
    """Every answer saved in `folder` (merged file and per-rank files). A line cut short by a kill (the last one of a
    file) is ignored: its batch is recomputed."""
    predictions: dict[str, Prediction] = {}
    for path in sorted(Path(folder).glob("predictions*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                prediction = Prediction.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            predictions[prediction.id] = prediction
    return predictions


def merge_predictions(folder: Path, items: Sequence[EvalItem]) -> dict[str, Prediction]:
    """Write `predictions.jsonl` in item order from all saved answers, drop the per-rank files; returns them."""
    saved = read_prediction_rows(folder)
    missing = [item.id for item in items if item.id not in saved]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no saved prediction in {folder} (e.g. {missing[:3]}).")
    ordered = {item.id: saved[item.id] for item in items}
    write_text_atomic(folder / PREDICTIONS, "".join(json.dumps(p.to_json()) + "\n" for p in ordered.values()))
    for path in folder.glob("predictions.rank*.jsonl"):
        path.unlink()
    return ordered


# === Answering one batch ===
def open_images(data_root: Path, item: EvalItem, limit: int | None, policy: KeyframePolicy) -> RowImages:
    """The item's images as the model takes them: None, one image, or the (selected) list for the keyframe slots."""
    paths = [item.images[i] for i in select_keyframes(len(item.images), limit, policy)]
    images = [Image.open(resolve_image(data_root, p)).convert("RGB") for p in paths]
    if not images:
        return None
    return images[0] if len(item.images) == 1 else images


def answer_batch(
    vlm: PrismaticVLM, batch: Sequence[EvalItem], data_root: Path, options: RunOptions, max_new_tokens: int,
    synced_gpus: bool = False,
) -> list[Prediction]:
    """Closed-form rows in one forward pass (each row softmaxed over its own candidates), open-form rows by greedy
    generation."""
    limit = keyframe_slots(vlm)
    images = [open_images(data_root, item, limit, options.keyframe_policy) for item in batch]
    prompts = wrap_prompts(vlm, [item.message for item in batch])
    answers: dict[int, Prediction] = {}
    closed = [i for i, item in enumerate(batch) if item.candidates]
    if closed:
        import torch

        logits = first_token_logits(vlm, [images[i] for i in closed], [prompts[i] for i in closed])
        tokenizer = vlm.llm_backbone.tokenizer
        for row, i in enumerate(closed):
            candidates = batch[i].candidates
            probabilities = torch.softmax(logits[row, candidate_token_ids(tokenizer, candidates)], dim=-1).tolist()
            best = max(range(len(candidates)), key=lambda c: probabilities[c])  # first on ties, like argmax
            answers[i] = Prediction(batch[i].id, candidates[best], dict(zip(candidates, probabilities)))
    open_rows = [i for i, item in enumerate(batch) if not item.candidates]
    if open_rows:
        texts = generate_answers(vlm, [images[i] for i in open_rows], [prompts[i] for i in open_rows], max_new_tokens,
                                 synced_gpus)  # fmt: skip
        answers |= {i: Prediction(batch[i].id, text) for i, text in zip(open_rows, texts)}
    return [answers[i] for i in range(len(batch))]


def batches_of(items: Sequence[EvalItem], size: int) -> list[Sequence[EvalItem]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def count_truncated(items: Iterable[EvalItem], limit: int | None) -> int:
    """Items with more images than the model has keyframe slots (the keyframe policy chose which to keep)."""
    return 0 if limit is None else sum(len(item.images) > limit for item in items)


# === The run ===
def run_items(
    vlm: PrismaticVLM,
    items: Sequence[EvalItem],
    data_root: Path,
    folder: Path,
    ctx: DistributedContext,
    options: RunOptions,
    max_new_tokens: int,
    log: Callable[[str], None] = print,
    preemption: Preemption | None = None,
) -> dict[str, Prediction] | None:
    """Answer every item not yet saved in `folder`; rank 0 returns all predictions (item order), other ranks None."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = read_prediction_rows(folder)
    batches = batches_of(items, options.batch_size)
    todo = [b for b in range(len(batches)) if any(item.id not in saved for item in batches[b])]
    mine = [b for b in todo if b % ctx.world_size == ctx.rank]
    if ctx.is_rank_zero:
        log(f"[evaluate] {len(items)} items, {len(batches) - len(todo)} of {len(batches)} batches already answered; "
            f"{len(todo)} to go on {ctx.world_size} process(es)")  # fmt: skip
    path = folder / RANK_PREDICTIONS.format(rank=ctx.rank)
    start, last_log = time.perf_counter(), 0.0
    with open(path, "a", encoding="utf-8") as handle:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            handle.write("\n")  # end a line a kill cut short, so the next answer starts a line of its own
        for done, b in enumerate(mine, start=1):
            rows = answer_batch(vlm, batches[b], data_root, options, max_new_tokens)
            handle.write("".join(json.dumps(p.to_json()) + "\n" for p in rows))
            handle.flush()
            os.fsync(handle.fileno())
            elapsed = time.perf_counter() - start
            if elapsed - last_log >= LOG_EVERY_S or done == len(mine):
                rate = sum(len(batches[x]) for x in mine[:done]) / max(elapsed, 1e-9)
                log(f"[evaluate] rank {ctx.rank}: {done}/{len(mine)} batches ({rate:.2f} items/s)")
                last_log = elapsed
            if preemption is not None and preemption.requested and done < len(mine):
                raise preemption.stop(f"rank {ctx.rank} saved {done} of its {len(mine)} batches to {path}; the same "
                                      "command answers the rest")  # fmt: skip
    ctx.barrier()
    predictions = merge_predictions(folder, items) if ctx.is_rank_zero else None
    ctx.barrier()
    return predictions
