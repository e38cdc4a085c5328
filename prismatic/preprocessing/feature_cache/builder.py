"""Building the frozen-feature cache: each distinct image (or multi-image group) of a dataset goes through the frozen
encoders once, sharded over ranks, resumable (the format is described in `store`).

Work list: the distinct image-path tuples of the dataset's records in first-seen order (LLaVA-665k: ~624k images for
665k samples), plus the image of the masked dummy row that text-only micro-batches get (so those never run the
encoders either). Rank r of W takes items r, r + W, ...; data loader workers read, transform and hash them; the main
process encodes the streams whose key is not cached yet and appends them to its own chunk files. Everything already
indexed (by any earlier, possibly interrupted, build of the same encoder) is skipped, so a rerun finishes the job.

Samples are encoded one at a time with `encode_rows` in `frozen_encoder_context`, the exact computation the training
forward runs for a frozen encoder (`prismatic.models.vlms.visual_features`), at the dtype training will store the
encoder in: cached features are bitwise what live encoding gives on the same device type and library versions. The
generative encoder is the one training builds (`get_vision_backbone_and_transform`), whose U-Net mid and up blocks are
dropped in release mode: the feature pass cannot run them.

One build per cache directory at a time: a starting build deletes the orphan chunks a crashed one left behind.

Preemption: on a preemption signal (`prismatic.util.preemption`) each rank finishes the item it is encoding, commits
its open chunks (nothing encoded is lost) and raises `Preempted`; the same command finishes the job later.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from prismatic.models.backbones.vision.base_vision import ImageTransform, PixelValues, VisionBackbone
from prismatic.models.backbones.vision.base_vision import collate_pixel_values as collate
from prismatic.models.vlms.visual_features import encode_rows, frozen_encoder_context
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.collator import dummy_image
from prismatic.preprocessing.feature_cache.identity import content_key, stream_identities
from prismatic.preprocessing.feature_cache.store import (
    ChunkWriter,
    StorageDtype,
    StreamIndex,
    prepare_stream_dir,
    remove_damaged_chunks,
    remove_orphans,
    storage_dtype,
    to_storage,
)
from prismatic.preprocessing.records import image_relpaths
from prismatic.preprocessing.samples import PIL_READ_ERRORS, load_rgb
from prismatic.util.distributed import DistributedContext
from prismatic.util.preemption import Preemption, ignore_in_worker

overwatch = initialize_overwatch(__name__)

DUMMY_ITEM: tuple[str, ...] = ()  # the work item of the dummy row's image (no file)


@dataclass(frozen=True)
class BuildOptions:
    storage_dtype: StorageDtype = "auto"  # auto = the encoder's compute dtype (exact)
    chunk_size: int = 256  # entries per chunk file (the unit a crash can lose)
    num_workers: int = 2  # image reading / transform / hashing processes per rank
    log_every_s: float = 30.0
    verify: bool = False  # first check every stored entry's checksum; damaged chunks are deleted and re-encoded


@dataclass
class BuildReport:
    items: int = 0  # work items of this rank
    encoded: Counter[str] = field(default_factory=Counter)  # entries written per stream
    already_cached: int = 0  # items whose every stream was cached before
    bad: list[str] = field(default_factory=list)  # unreadable images (skipped; training applies its own policy)
    encode_seconds: float = 0.0
    seconds: float = 0.0


def image_groups(records: Sequence[Any]) -> list[tuple[str, ...]]:
    """Distinct image-path tuples of the records, in first-seen order (text-only and malformed records skipped)."""
    groups: dict[tuple[str, ...], None] = {}
    for record in records:
        try:
            relpaths = tuple(image_relpaths(record)) if isinstance(record, dict) else ()
        except ValueError:
            continue
        if relpaths:
            groups.setdefault(relpaths, None)
    return list(groups)


class _WorkItems(Dataset):
    """Reads, transforms and hashes one work item: (item, pixel dict | None, {stream: key}, error | None)."""

    def __init__(
        self, items: list[tuple[str, ...]], image_dir: Path, transform: ImageTransform, keys: dict[str, tuple[str, ...]]
    ) -> None:
        self.items, self.image_dir, self.transform, self.keys = items, Path(image_dir), transform, keys

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[tuple[str, ...], PixelValues | None, dict[str, str], str | None]:
        item = self.items[index]
        try:
            images = [load_rgb(self.image_dir / rel) for rel in item] if item else [dummy_image()]
        except FileNotFoundError:
            return item, None, {}, "missing file"
        except PIL_READ_ERRORS as error:
            return item, None, {}, f"unreadable ({type(error).__name__}: {error})"
        pixels = self.transform(images[0] if len(images) == 1 else images)
        return item, pixels, {name: content_key(pixels, keys) for name, keys in self.keys.items()}, None


def _unbatched(batch: list[Any]) -> Any:
    return batch[0]


class _Progress:
    def __init__(self, total: int, every_s: float) -> None:
        self.total, self.every_s = total, every_s
        self.started = self.last = time.perf_counter()

    def maybe_log(self, done: int, report: BuildReport) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        overwatch.info(
            f"Feature cache: {done}/{self.total} items of this rank ({rate:.1f}/s, ETA {eta / 60:.1f} min); "
            f"encoded {dict(report.encoded)}, already cached {report.already_cached}, unreadable {len(report.bad)}"
        )


def build_feature_cache(
    items: list[tuple[str, ...]],
    image_dir: Path,
    transform: ImageTransform,
    backbone: VisionBackbone,
    root: Path,
    ctx: DistributedContext,
    streams: list[str] | None = None,
    options: BuildOptions | None = None,
    preemption: Preemption | None = None,
) -> BuildReport:
    """Encode this rank's share of `items` (plus the dummy image on rank 0) into the cache at `root`.

    `backbone` must already be frozen, in the dtype and on the device training will encode with. Collective: every
    rank of `ctx` calls it."""
    options = options or BuildOptions()
    started = time.perf_counter()
    identities = stream_identities(backbone, streams)
    if ctx.is_rank_zero:
        for identity in identities.values():
            directory = prepare_stream_dir(root, identity)
            removed = remove_orphans(directory)
            if removed:
                overwatch.info(f"Removed {removed} orphan file(s) of an interrupted build from {identity.dirname}")
            if options.verify:
                damaged = remove_damaged_chunks(directory)
                overwatch.info(f"Verified {identity.dirname}: {len(damaged)} damaged chunk(s) deleted, to be re-encoded"
                               + (f" ({', '.join(p.name for p in damaged)})" if damaged else ""))  # fmt: skip
    ctx.barrier()
    directories = {name: Path(root) / identity.dirname for name, identity in identities.items()}
    indexes = {name: StreamIndex.load(directory) for name, directory in directories.items()}
    compute_dtype = next(backbone.parameters()).dtype
    dtype = storage_dtype(options.storage_dtype, compute_dtype)
    build_id = uuid.uuid4().hex[:8]
    writers = {
        name: ChunkWriter(directory, f"chunk-{build_id}-r{ctx.rank:04d}", options.chunk_size)
        for name, directory in directories.items()
    }
    shard = ([DUMMY_ITEM] if ctx.is_rank_zero else []) + list(items[ctx.rank :: ctx.world_size])
    overwatch.info(
        f"Building the feature cache at {root}: streams {list(identities)} (entries so far: "
        f"{ {n: len(i) for n, i in indexes.items()} }), {len(items)} image items over {ctx.world_size} rank(s), "
        f"stored as {dtype} (encoder computes in {compute_dtype})"
    )

    report = BuildReport(items=len(shard))
    written: dict[str, set[str]] = {name: set() for name in identities}
    loader = DataLoader(
        _WorkItems(shard, image_dir, transform, {n: i.pixel_keys for n, i in identities.items()}),
        batch_size=1, num_workers=options.num_workers, collate_fn=_unbatched,
        worker_init_fn=(functools.partial(ignore_in_worker, signals=[s.name for s in preemption.signals])
                        if preemption is not None and options.num_workers > 0 else None),
    )  # fmt: skip
    progress = _Progress(len(shard), options.log_every_s)
    device = next(backbone.parameters()).device
    done = 0
    try:
        for done, (item, pixels, keys, error) in enumerate(loader, start=1):
            if pixels is None:
                report.bad.append(f"{'+'.join(item)}: {error}")
                overwatch.warning_all(f"Skipping image item {item} under {image_dir}: {error}")
            else:
                _encode_missing(backbone, pixels, keys, indexes, written, writers, dtype, device, report)
            progress.maybe_log(done, report)
            if preemption is not None and preemption.requested:
                break
    finally:
        for writer in writers.values():
            writer.close()
    if preemption is not None and preemption.requested:
        raise preemption.stop(f"rank {ctx.rank} stored {sum(report.encoded.values())} new entries ({done} of "
                              f"{len(shard)} items looked at); the same command finishes the cache")  # fmt: skip
    report.seconds = time.perf_counter() - started
    per_image = report.encode_seconds / max(1, max(report.encoded.values(), default=0))
    overwatch.info_all(
        f"Feature cache rank done in {report.seconds:.1f} s: {report.items} items, encoded {dict(report.encoded)} "
        f"({per_image * 1000:.1f} ms per item in the encoders), already cached {report.already_cached}, "
        f"unreadable {len(report.bad)}"
    )
    ctx.barrier()
    return report


def _encode_missing(
    backbone: VisionBackbone,
    pixels: PixelValues,
    keys: dict[str, str],
    indexes: dict[str, StreamIndex],
    written: dict[str, set[str]],
    writers: dict[str, ChunkWriter],
    dtype: torch.dtype,
    device: torch.device,
    report: BuildReport,
) -> None:
    """Encode and store the streams of one sample that neither the cache nor this build holds yet."""
    missing = [name for name, key in keys.items() if key not in indexes[name] and key not in written[name]]
    if not missing:
        report.already_cached += 1
        return
    batch = {key: value.to(device) for key, value in collate([pixels]).items()}
    started = time.perf_counter()
    with frozen_encoder_context(backbone):
        features = encode_rows(backbone, batch, missing, per_sample=True)
    report.encode_seconds += time.perf_counter() - started
    for name in missing:
        writers[name].add(keys[name], to_storage(features[name][0], dtype))
        written[name].add(keys[name])
        report.encoded[name] += 1
