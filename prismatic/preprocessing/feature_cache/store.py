"""The frozen-feature cache on disk: encoder outputs keyed by image content and encoder identity, the chunk writer,
and the memory-mapped reader `FeatureCache`.

Layout of a cache root (written by `builder.build_feature_cache` through `scripts/cache_features.py`, read by training
with `--feature_cache_dir`):

    <root>/<stream>-<fingerprint>/          one directory per stream and encoder identity (`StreamIdentity`)
        encoder.json                        the full description the fingerprint hashes (for humans, checked on open)
        chunk-<build>-r<rank>-<n>.bin       raw feature bytes, entries 64-byte aligned
        chunk-<build>-r<rank>-<n>.json      its index: [[key, offset, shape, dtype, crc32], ...]

A chunk exists only once its index is written: the .bin is written and fsynced first, then the .json through a
temporary file and an atomic rename. A crash mid-chunk leaves an orphan .bin that readers never see and the next build
deletes; a rerun skips every key already indexed, so builds resume where they stopped. Keys are the 128-bit content
hashes of `identity.content_key`; the fingerprint in the directory name covers the encoder (config, weights, dtype,
library versions), so a changed encoder looks in another directory and finds nothing: a miss, never a stale read.

Damage after the fact never reaches training: a chunk whose data file is shorter than its index says (a copy cut
short) or whose index does not parse is ignored when the cache is opened, and every entry carries the CRC-32 of its
bytes, checked on each read; a mismatch is logged with the chunk's file name and the entry counts as a miss, so the
sample's features are encoded live. `scripts/cache_features.py --verify` checks every entry and deletes the damaged
chunks, so the same build re-encodes what they held. (Entries of caches written before checksums existed carry none
and are read unchecked.)

Reads map each chunk file once per process with `torch.from_file` (a private, lazily paged mapping that holds no file
descriptor) and return views into it: an entry costs the pages it touches, never a read of the whole file. The index
of all chunks is held as sorted numpy arrays (about 32 bytes per entry), shared copy-on-write by forked loader workers.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from prismatic.models.backbones.vision.base_vision import PixelValues, VisionBackbone, feature_key
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.feature_cache.identity import (
    CACHE_FORMAT_VERSION,
    StreamIdentity,
    content_key,
    describe_difference,
    stream_identities,
)
from prismatic.util.io import write_json_atomic

overwatch = initialize_overwatch(__name__)

StorageDtype = Literal["auto", "float32", "bfloat16", "float16"]
STORAGE_DTYPE_NAMES: tuple[str, ...] = get_args(StorageDtype)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
ENCODER_FILE = "encoder.json"
_ALIGN = 64


# === Writing ===
def storage_dtype(name: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype entries are stored in: `auto` = the encoder's compute dtype (exact), else the named one."""
    if name not in STORAGE_DTYPE_NAMES:
        raise ValueError(f"Unknown storage dtype {name!r}; valid values are {list(STORAGE_DTYPE_NAMES)}.")
    dtype = compute_dtype if name == "auto" else DTYPES[name]
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"Cannot store {dtype} features; pick --storage_dtype from {list(DTYPES)}.")
    return dtype


def to_storage(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast features for storage on the CPU, refusing a cast that overflows (float16 tops out at 65504)."""
    stored = features.detach().to(device="cpu", dtype=dtype).contiguous()
    if dtype == torch.float16 and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(features).all()):
        peak = float(features.detach().abs().max())
        raise ValueError(
            f"Features reach |x| = {peak:.4g}, beyond float16's range (65504): use --storage_dtype bfloat16 or float32."
        )
    return stored


class ChunkWriter:
    """Appends one stream's entries to chunk files of at most `chunk_size` entries, committing each atomically."""

    def __init__(self, directory: Path, prefix: str, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.directory, self.prefix, self.chunk_size = Path(directory), prefix, chunk_size
        self.committed_chunks = 0
        self.written = 0
        self._handle: Any = None
        self._entries: list[list[Any]] = []
        self._offset = 0

    def _bin_name(self) -> str:
        return f"{self.prefix}-{self.committed_chunks:06d}.bin"

    def add(self, key: str, features: torch.Tensor) -> None:
        if features.dtype not in DTYPE_NAMES:
            raise TypeError(f"Cannot store {features.dtype} features; cast them with to_storage() first.")
        if self._handle is None:
            self._handle = open(self.directory / self._bin_name(), "wb")  # noqa: SIM115 (kept open across adds)
            self._offset = 0
        padding = (-self._offset) % _ALIGN
        data = features.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._handle.write(b"\0" * padding + data.tobytes())
        offset = self._offset + padding
        self._entries.append([key, offset, list(features.shape), DTYPE_NAMES[features.dtype], zlib.crc32(data)])
        self._offset = offset + data.nbytes
        self.written += 1
        if len(self._entries) >= self.chunk_size:
            self.commit()

    def commit(self) -> None:
        """Make the current chunk visible: fsync its data, then write its index atomically."""
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        if self._entries:
            bin_name = self._bin_name()
            payload = {"format": CACHE_FORMAT_VERSION, "file": bin_name, "entries": self._entries}
            write_json_atomic(self.directory / bin_name.replace(".bin", ".json"), payload)
            self.committed_chunks += 1
        self._entries = []

    close = commit


def prepare_stream_dir(root: Path, identity: StreamIdentity) -> Path:
    """Create a stream's directory with its encoder.json, or check an existing one describes the same encoder."""
    directory = Path(root) / identity.dirname
    directory.mkdir(parents=True, exist_ok=True)
    encoder_file = directory / ENCODER_FILE
    if encoder_file.is_file():
        saved = json.loads(encoder_file.read_text())
        if json.dumps(saved, sort_keys=True, default=str) != identity.canonical:
            raise RuntimeError(
                f"{encoder_file} describes another encoder than its fingerprint says (differences: "
                f"{describe_difference(saved, identity.description)}); delete {directory} and rebuild it."
            )
    else:
        write_json_atomic(encoder_file, identity.description)
    return directory


def remove_orphans(directory: Path) -> int:
    """Delete what a crashed build left behind: chunk data without an index, and temporary index files."""
    removed = 0
    for path in Path(directory).iterdir():
        orphan_bin = path.suffix == ".bin" and not path.with_suffix(".json").exists()
        if orphan_bin or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_damaged_chunks(directory: Path) -> list[Path]:
    """Check every entry of every chunk against its CRC-32 and delete the chunks that fail, or whose index or data
    is unreadable or short (index first, so a crash midway leaves an orphan, not a damaged chunk), so that a build
    re-encodes what they held. Returns the index files deleted."""
    removed = []
    for index_file in sorted(Path(directory).glob("chunk-*.json")):
        chunk = read_chunk_index(index_file)
        intact = chunk is not None and _chunk_intact(Path(directory) / chunk["file"], chunk["entries"])
        if not intact:
            data_file = index_file.with_suffix(".bin") if chunk is None else Path(directory) / chunk["file"]
            index_file.unlink()
            data_file.unlink(missing_ok=True)
            removed.append(index_file)
    return removed


def _chunk_intact(data_file: Path, entries: list[list[Any]]) -> bool:
    mapped = torch.from_file(str(data_file), shared=False, size=data_file.stat().st_size, dtype=torch.uint8)
    for _, offset, shape, dtype, *crc in entries:
        nbytes = int(np.prod(shape)) * DTYPES[dtype].itemsize
        if crc and not entry_intact(mapped[offset : offset + nbytes], int(crc[0])):
            return False
    return True


# === Reading ===
def _is_power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** (len(str(n)) - 1) == n


def _split_key(key: str) -> tuple[int, int]:
    return int(key[:16], 16), int(key[16:32], 16)


def read_chunk_index(index_file: Path) -> dict[str, Any] | None:
    """A chunk's index, or None (with a warning naming the file) when it cannot be read, is of another format, or
    its data file is missing or shorter than the entries need (a copy cut short): its entries are then encoded live."""
    data_file = None
    try:
        chunk = json.loads(Path(index_file).read_text())
        data_file = Path(index_file).parent / chunk["file"]
        size = data_file.stat().st_size if data_file.is_file() else -1
        needed = max((int(entry[1]) + int(np.prod(entry[2])) * DTYPES[entry[3]].itemsize
                      for entry in chunk["entries"]), default=0)  # fmt: skip
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        overwatch.warning_all(f"Ignoring feature chunk {index_file}: its index is unreadable ({error}); its entries "
                              "are encoded live (scripts/cache_features.py --verify rebuilds it)")  # fmt: skip
        return None
    if chunk.get("format") != CACHE_FORMAT_VERSION or size < needed:
        problem = "of another format" if chunk.get("format") != CACHE_FORMAT_VERSION else (
            f"missing its data {data_file}" if size < 0 else f"{data_file} is {size} bytes, its index needs {needed}")
        overwatch.warning_all(f"Ignoring feature chunk {index_file}: {problem}; its entries are encoded live "
                              "(scripts/cache_features.py --verify rebuilds them)")  # fmt: skip
        return None
    return chunk


def entry_intact(data: torch.Tensor, checksum: int) -> bool:
    """Whether an entry's bytes match the CRC-32 written with them (an entry without one, -1, is taken as it is)."""
    return checksum < 0 or zlib.crc32(data.numpy()) == checksum


@dataclass
class StreamIndex:
    """Every committed entry of one stream directory, as sorted arrays (lookup by binary search)."""

    directory: Path
    files: list[str]
    key_hi: np.ndarray  # uint64, sorted
    key_lo: np.ndarray  # uint64
    file_ids: np.ndarray  # int32
    offsets: np.ndarray  # int64
    layout_ids: np.ndarray  # int32 into `layouts`
    checksums: np.ndarray  # int64: the entry's CRC-32, -1 for entries written before checksums existed
    layouts: list[tuple[tuple[int, ...], str]]

    @classmethod
    def load(cls, directory: Path) -> StreamIndex:
        files: list[str] = []
        rows: list[tuple[int, int, int, int, int]] = []
        checksums: list[int] = []
        layouts: dict[tuple[tuple[int, ...], str], int] = {}
        for index_file in sorted(Path(directory).glob("chunk-*.json")) if Path(directory).is_dir() else []:
            chunk = read_chunk_index(index_file)
            if chunk is None:
                continue
            files.append(chunk["file"])
            for key, offset, shape, dtype, *crc in chunk["entries"]:
                layout = layouts.setdefault((tuple(shape), dtype), len(layouts))
                rows.append((*_split_key(key), len(files) - 1, offset, layout))
                checksums.append(int(crc[0]) if crc else -1)
        table = np.array(rows, dtype=np.uint64).reshape(-1, 5)
        order = np.lexsort((table[:, 1], table[:, 0]))  # by (hi, lo); stable, so the first chunk's copy comes first
        table = table[order]
        return cls(
            Path(directory), files, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].astype(np.int32),
            table[:, 3].astype(np.int64), table[:, 4].astype(np.int32), np.array(checksums, dtype=np.int64)[order],
            list(layouts),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.key_hi)

    def position(self, key: str) -> int | None:
        hi, lo = _split_key(key)
        start = int(np.searchsorted(self.key_hi, np.uint64(hi), side="left"))
        for i in range(start, len(self.key_hi)):
            if int(self.key_hi[i]) != hi:
                break
            if int(self.key_lo[i]) == lo:
                return i
        return None

    def __contains__(self, key: str) -> bool:
        return self.position(key) is not None


class FeatureCache:
    """Read side: `attach(pixel_values)` adds `features:<stream>` tensors (views of the mapped chunks) for every
    stream whose entry exists. Picklable for data loader workers (mappings are reopened per process)."""

    def __init__(self, root: Path, identities: dict[str, StreamIdentity]) -> None:
        self.root, self.identities = Path(root), identities
        self.indexes = {name: StreamIndex.load(self.root / ident.dirname) for name, ident in identities.items()}
        self.stats: Counter[str] = Counter()
        self._maps: dict[tuple[str, int], torch.Tensor] = {}
        self._reported: set[tuple[str, int]] = set()  # chunk files whose damage was logged

    @classmethod
    def open(cls, root: Path, backbone: VisionBackbone, streams: list[str] | None = None) -> FeatureCache:
        """The cache of `backbone`'s streams (all, or `streams`) under `root`, for the encoder exactly as it is now
        (weights, dtype): call it after training has cast the encoder. Logs what it found, and why a stream finds
        nothing when another encoder config has entries."""
        if not Path(root).is_dir():
            raise FileNotFoundError(
                f"Feature cache directory {root} does not exist; build it with scripts/cache_features.py (same model "
                "and dataset flags as the training run) or drop --feature_cache_dir."
            )
        encoders = backbone.stream_encoders()
        trainable = sorted(n for n in (streams or encoders) if any(p.requires_grad for p in encoders[n].parameters()))
        if trainable:
            raise ValueError(
                f"Stream(s) {trainable} come from encoders that train in this stage, so cached features would go "
                "stale; the feature cache serves frozen encoders only. Drop --feature_cache_dir for this stage."
            )
        cache = cls(Path(root), stream_identities(backbone, streams))
        for name, identity in cache.identities.items():
            count = len(cache.indexes[name])
            overwatch.info(f"Feature cache {root}: {count} cached {name!r} entries ({identity.dirname})")
            if count == 0:
                cache._explain_miss(identity)
        return cache

    def _explain_miss(self, identity: StreamIdentity) -> None:
        others = []
        for encoder_file in sorted(self.root.glob(f"{identity.stream}-*/{ENCODER_FILE}")):
            differences = describe_difference(json.loads(encoder_file.read_text()), identity.description)
            others.append(f"{encoder_file.parent.name} (differs in {', '.join(differences[:6])})")
        detail = f" Entries exist for other {identity.stream!r} encoders: {'; '.join(others)}." if others else ""
        overwatch.warning(
            f"No cached {identity.stream!r} features for this encoder configuration, so they are encoded live.{detail} "
            "Build the cache with scripts/cache_features.py and this run's model/dataset flags."
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # mappings are per process (workers map the files themselves)

    def __len__(self) -> int:
        return sum(len(index) for index in self.indexes.values())

    # === Lookups ===
    def _mapped(self, stream: str, file_id: int) -> torch.Tensor:
        mapped = self._maps.get((stream, file_id))
        if mapped is None:
            path = self.indexes[stream].directory / self.indexes[stream].files[file_id]
            mapped = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
            self._maps[(stream, file_id)] = mapped
        return mapped

    def read(self, stream: str, key: str) -> torch.Tensor | None:
        """One entry as a tensor viewing the mapped chunk file, or None when the key is absent or its bytes no longer
        match their checksum (logged once per chunk file; the caller then encodes the sample live)."""
        index = self.indexes[stream]
        position = index.position(key)
        if position is None:
            return None
        shape, dtype_name = index.layouts[int(index.layout_ids[position])]
        dtype = DTYPES[dtype_name]
        offset, nbytes = int(index.offsets[position]), int(np.prod(shape)) * dtype.itemsize
        file_id = int(index.file_ids[position])
        data = self._mapped(stream, file_id)[offset : offset + nbytes]
        if not entry_intact(data, int(index.checksums[position])):
            self.stats[f"{stream}:damaged"] += 1
            if (stream, file_id) not in self._reported:
                self._reported.add((stream, file_id))
                overwatch.warning_all(
                    f"Feature cache entry {key} in {index.directory / index.files[file_id]} does not match its "
                    "checksum (the file was altered after it was written): encoding it live; rerun "
                    "scripts/cache_features.py with --verify to rebuild the damaged chunks"
                )
            return None
        return data.view(dtype).view(shape)

    def lookup(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        """The cached features of one (uncollated) sample, for every stream that has them."""
        found = {}
        for name, identity in self.identities.items():
            features = self.read(name, content_key(pixel_values, identity.pixel_keys))
            self.stats[f"{name}:{'hit' if features is not None else 'miss'}"] += 1
            if features is not None:
                found[name] = features
        self.stats["lookups"] += 1
        if _is_power_of_ten(self.stats["lookups"]):  # a few lines per process, from loader workers too
            overwatch.info(f"Feature cache (pid {os.getpid()}) after {self.stats['lookups']} samples: {self.summary()}")
        return found

    def attach(self, pixel_values: PixelValues) -> PixelValues:
        """The sample's pixel dict plus `features:<stream>` for every cached stream (pixels kept for misses)."""
        return {**pixel_values, **{feature_key(name): value for name, value in self.lookup(pixel_values).items()}}

    def summary(self) -> str:
        parts = [f"{n}: {self.stats[f'{n}:hit']} hits / {self.stats[f'{n}:miss']} misses" for n in self.identities]
        parts += [f"{n}: {self.stats[f'{n}:damaged']} damaged" for n in self.identities if self.stats[f"{n}:damaged"]]
        return "; ".join(parts)
