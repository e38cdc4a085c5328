"""Build the training dataset and collator for a stage: read the JSON, run the preflight, apply the policy.

`get_dataset_and_collator` is what `scripts/pretrain.py` calls. The align stage reads the dataset config's align
components into an `AlignDataset`; every other stage (`Stage.recipe` is FINETUNE) reads the finetune components into a
`FinetuneDataset`. It needs the LLM's `ConversationTokenizer` (`llm_backbone.conversation_tokenizer()`), not the LLM.

Under torch.distributed every rank preflights its own shard of the samples and the reports are gathered, so the
pass costs 1/W of the time and every rank drops the same samples. With `preflight_cache`, the report is saved (by rank
0) and reused while the JSON file and the settings are unchanged; a resumed run then trains on the same samples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from prismatic.models.backbones.llm.conversation import ConversationTokenizer
from prismatic.models.backbones.vision.base_vision import ImageTransform, PixelValues
from prismatic.models.stages import Stage, parse_stage
from prismatic.models.vlms.splice import PaddingSide
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.collator import PaddedCollator, filler_pixel_values
from prismatic.preprocessing.datasets import AlignDataset, FinetuneDataset, LLaVADataset
from prismatic.preprocessing.preflight import (
    PreflightOptions,
    PreflightReport,
    apply_policy,
    fingerprint,
    load_cached_report,
    run_preflight,
    save_report,
)
from prismatic.preprocessing.records import BadSamplePolicy, check_policy, image_relpaths, load_records
from prismatic.preprocessing.samples import ImageCheck, SampleTokenizer

overwatch = initialize_overwatch(__name__)


class DatasetLayout(Protocol):
    """Where a dataset's files are (a `prismatic.conf.datasets.DatasetConfig` is one): (json_file, image_dir) of a
    stage."""

    def components(self, stage: Stage) -> tuple[Path, Path]: ...


def infer_max_images(image_transform: ImageTransform) -> int | None:
    """The most images one sample may carry: the SVD transform's frame slots (None when nothing limits it).

    Walks merged transforms (`.transforms`) and reads `max_images` of the members that keep every frame.
    """
    limits: list[int] = []
    pending: list[Any] = [image_transform]
    while pending:
        transform = pending.pop()
        limit = getattr(transform, "max_images", None)
        if isinstance(limit, int) and not getattr(transform, "first_only", False):
            limits.append(limit)
        pending.extend(getattr(transform, "transforms", None) or [])
    return min(limits) if limits else None


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(value: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def preflight_dataset(
    records: list[Any],
    image_dir: Path,
    json_path: Path,
    dataset_cls: type[LLaVADataset],
    tokenizer: SampleTokenizer,
    max_images: int | None,
    check_images: ImageCheck = "load",
    preflight_cache: Path | None = None,
    num_threads: int | None = None,
) -> PreflightReport:
    """Run (or reuse from cache) the preflight, sharded over ranks when torch.distributed is initialised."""
    rank, world_size = _distributed()
    key = fingerprint(
        json_path,
        image_dir=str(Path(image_dir).resolve()),
        record_kind=dataset_cls.record_kind,
        llm=tokenizer.conversation.identifier,  # the LLM registry id
        llm_max_length=tokenizer.llm_max_length,
        num_visual_tokens=tokenizer.num_visual_tokens,
        truncate_long_samples=tokenizer.truncate_long_samples,
        max_images=max_images,
        check_images=check_images,
    )
    cached = load_cached_report(preflight_cache, key)
    # Decided together: a rank that missed the cache must not be left alone in the gathers below.
    if all(_gather(cached is not None, world_size)):
        return cached  # type: ignore[return-value]
    options = PreflightOptions(check_images=check_images, num_threads=num_threads, shard_index=rank,
                               num_shards=world_size)
    overwatch.info(f"Preflight of {json_path} ({len(records)} samples, images under {image_dir}, {world_size} shard(s))")
    report = PreflightReport.merge(_gather(
        run_preflight(records, image_dir, json_path, dataset_cls.record_kind, tokenizer, max_images, options),
        world_size,
    ))
    if preflight_cache is not None and rank == 0:
        save_report(preflight_cache, key, report)
    return report


def get_dataset_and_collator(
    stage: Stage | str,
    dataset_cfg: DatasetLayout,
    image_transform: ImageTransform,
    tokenizer: ConversationTokenizer,
    num_visual_tokens: int,
    padding_side: PaddingSide = "right",
    on_bad_sample: BadSamplePolicy = "error",
    *,
    attach_features: Callable[[PixelValues], PixelValues] | None = None,
    fill_text_only_batches: bool = False,
    max_images: int | None = None,
    truncate_long_samples: bool = False,
    preflight: bool = True,
    check_images: ImageCheck = "load",
    preflight_cache: Path | None = None,
    num_threads: int | None = None,
) -> tuple[LLaVADataset, PaddedCollator]:
    """Dataset + collator for `stage` (align -> captions; every other stage -> conversations).

    `tokenizer` is the LLM's (`llm_backbone.conversation_tokenizer()`); its `max_length` is the sequence budget, which
    image rows must fit together with the VLM's `num_visual_tokens`. `max_images` defaults to the transform's frame
    slots. `on_bad_sample` applies to the preflight (error: raise a `DatasetError` naming the files and problems;
    skip: drop, count and log them) and to files that go bad later. `truncate_long_samples` cuts over-long samples to
    fit (as the released recipe did) instead of treating them as bad. `preflight=False` skips the pass (bad samples
    then surface one at a time during training). `attach_features` (e.g. `FeatureCache.attach`) adds cached encoder
    features to every image item. `fill_text_only_batches` (training) gives a batch without any image row one masked
    dummy image row, so every rank runs the vision path (see `prismatic.preprocessing.collator`).
    """
    stage = parse_stage(stage)
    on_bad_sample = check_policy(on_bad_sample)
    dataset_cls: type[LLaVADataset] = AlignDataset if stage.recipe is Stage.ALIGN else FinetuneDataset
    json_path, image_dir = dataset_cfg.components(stage.recipe)
    if max_images is None:
        max_images = infer_max_images(image_transform)

    records = load_records(json_path)
    if not Path(image_dir).is_dir() and any(isinstance(r, dict) and r.get("image") for r in records):
        overwatch.warning(f"Image directory {image_dir} does not exist; every image sample will be missing its file.")
    source_indices = list(range(len(records)))
    report = None
    if preflight:
        checker = SampleTokenizer(tokenizer, num_visual_tokens, truncate_long_samples=truncate_long_samples)
        report = preflight_dataset(
            records, image_dir, json_path, dataset_cls, checker, max_images, check_images, preflight_cache, num_threads
        )
        source_indices = _kept_indices(report, on_bad_sample, len(records))
        records = [records[i] for i in source_indices]

    dataset = dataset_cls(
        records,
        image_dir,
        image_transform,
        tokenizer,
        num_visual_tokens,
        source=json_path,
        on_bad_sample=on_bad_sample,
        max_images=max_images,
        truncate_long_samples=truncate_long_samples,
        source_indices=source_indices,
        attach_features=attach_features,
    )
    dataset.preflight_report = report
    _log_summary(dataset, records)
    filler = filler_pixel_values(image_transform, attach_features) if fill_text_only_batches else None
    collator = PaddedCollator(
        tokenizer.pad_token_id, padding_side=padding_side, model_max_length=tokenizer.max_length,
        filler_pixel_values=filler,
    )
    return dataset, collator


def _kept_indices(report: PreflightReport, on_bad_sample: BadSamplePolicy, num_records: int) -> list[int]:
    """The samples to train on: all of them, or (under `skip`) those the preflight found nothing wrong with."""
    bad = apply_policy(report, on_bad_sample)
    return [i for i in range(num_records) if i not in bad]


def _log_summary(dataset: LLaVADataset, records: list[Any]) -> None:
    counts = {"image": 0, "multi-image": 0, "text-only": 0}
    for record in records:
        try:
            n = len(image_relpaths(record)) if isinstance(record, dict) else 0
        except ValueError:
            n = 0
        counts["text-only" if n == 0 else "image" if n == 1 else "multi-image"] += 1
    overwatch.info(
        f"{type(dataset).__name__} from {dataset.source}: {len(dataset)} samples ("
        + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"
    )
