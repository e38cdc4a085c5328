"""What a resume checks before it trusts a training checkpoint: the checksums of its files, written with it, and that
DCP's pickled index can only name tensors (`check_dcp_metadata`, see prismatic/training/checkpointing.py).

A checkpoint directory can be damaged after it was written (disk trouble, a copy cut short, a file altered): DCP would
then fail deep inside with a low-level error, or, worse, load altered numbers. So every file of a checkpoint is
listed with its size and SHA-256 in `checksums/`:

- `checksums/rank-00000.json` ...: written by each rank for the files it wrote (its DCP shard files `__<rank>_*.distcp`,
  its RNG state; rank 0 also DCP's `.metadata`), hashed right after writing, in parallel over the ranks;
- `checksums/trainer_state.json`: rank 0's digest of `trainer_state.json`, written after it.

`verify` checks a share of the listed files (entry i on rank i mod world size, so a resume on N ranks hashes each file
once) and returns what is wrong, naming each file: missing, a size that differs (truncated or grown), or content
that differs. A checkpoint written before checksums existed has no `checksums/` and is accepted as it is (with a
warning). SHA-256 through `hashlib.file_digest` runs at about 1-2 GB/s per process: a few seconds per rank for a 7B
model's optimizer state.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint.metadata as dcp_metadata

from prismatic.util.io import write_json_atomic

DCP_METADATA_FILE = ".metadata"
CHECKSUMS_DIR = "checksums"
TRAINER_STATE_DIGEST = "trainer_state.json"  # under CHECKSUMS_DIR


def rank_manifest_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of one file."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"bytes": Path(path).stat().st_size, "sha256": digest}


def write_manifest(checkpoint: Path, name: str, files: list[Path]) -> None:
    """List `files` (paths inside `checkpoint`) with their digests in `checksums/<name>`."""
    entries = {str(path.relative_to(checkpoint)): file_digest(path) for path in sorted(files)}
    write_json_atomic(Path(checkpoint) / CHECKSUMS_DIR / name, entries, indent=1)


def rank_files(checkpoint: Path, rank: int, rng_file: Path, with_metadata: bool) -> list[Path]:
    """The files one rank wrote into a checkpoint: its DCP shards, its RNG state (and DCP's index on rank 0)."""
    files = [*Path(checkpoint).glob(f"__{rank}_*.distcp"), rng_file]
    return [*files, Path(checkpoint) / DCP_METADATA_FILE] if with_metadata else files


def required_manifests(world_size: int) -> list[str]:
    return [f"{CHECKSUMS_DIR}/{rank_manifest_name(rank)}" for rank in range(world_size)] + [
        f"{CHECKSUMS_DIR}/{TRAINER_STATE_DIGEST}"
    ]


def has_checksums(checkpoint: Path) -> bool:
    return (Path(checkpoint) / CHECKSUMS_DIR).is_dir()


def _entries(checkpoint: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Every listed (file, digest), sorted, and the problems of manifests that cannot be read."""
    entries, problems = [], []
    for manifest in sorted((Path(checkpoint) / CHECKSUMS_DIR).glob("*.json")):
        try:
            listed = json.loads(manifest.read_text())
            entries += [(name, {"bytes": int(d["bytes"]), "sha256": str(d["sha256"])}) for name, d in listed.items()]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            problems.append(f"{manifest}: unreadable checksum list ({type(error).__name__}: {error})")
    return sorted(entries), problems


def verify(checkpoint: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """This rank's share of the checks of `checkpoint` (all of them on one process): one line per problem."""
    checkpoint = Path(checkpoint)
    entries, unreadable = _entries(checkpoint)
    problems = unreadable if rank == 0 else []  # every rank reads the lists; one reports them
    for index, (name, expected) in enumerate(entries):
        if index % world_size != rank:
            continue
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{path}: {size} bytes, {expected['bytes']} when it was written (truncated or grown)")
        elif file_digest(path)["sha256"] != expected["sha256"]:
            problems.append(f"{path}: content differs from what was written (SHA-256 mismatch)")
    return problems


# Globals a DCP `.metadata` pickle of tensors references (besides the classes of torch's DCP metadata module and torch
# dtypes, allowed by kind below). Only classes and one pure lookup function: unpickling may call them.
_METADATA_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
})  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals a DCP metadata index of tensors needs; any other global (a function such as
    `os.system`, any other class) raises UnpicklingError before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _METADATA_GLOBALS
        if module == dcp_metadata.__name__:
            allowed = isinstance(getattr(dcp_metadata, name, None), type)
        elif module == "torch" and name != "Size":
            allowed = isinstance(getattr(torch, name, None), torch.dtype)
        if not allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a DCP metadata file")
        return super().find_class(module, name)


def check_dcp_metadata(checkpoint: Path) -> set[str]:
    """Refuse a checkpoint whose DCP metadata could run code when DCP loads it: every `*.metadata` file must unpickle
    with `_MetadataUnpickler` into DCP Metadata whose entries are all tensors (a "bytes" entry is an arbitrary pickle
    that DCP would load with weights_only=False). Raises ValueError naming the file and what to do; returns the keys
    the checkpoint stores (e.g. "model.projector.fc1.weight")."""
    stored: set[str] = set()
    for file in sorted(Path(checkpoint).glob("*" + DCP_METADATA_FILE)):
        try:
            with file.open("rb") as stream:
                metadata = _MetadataUnpickler(stream).load()
            if not isinstance(metadata, dcp_metadata.Metadata):
                raise pickle.UnpicklingError(f"it holds a {type(metadata).__name__}, not DCP Metadata")
            other = sorted(key for key, entry in metadata.state_dict_metadata.items()
                           if not isinstance(entry, dcp_metadata.TensorStorageMetadata))  # fmt: skip
            if other:
                raise pickle.UnpicklingError(f"entries {other[:5]} are pickled objects, not tensors")
            stored.update(metadata.state_dict_metadata)
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
            raise ValueError(
                f"Refusing to load checkpoint {checkpoint}: {file} is not the metadata of a plain tensor checkpoint "
                f"({error}), and loading it could run code. Resume only from checkpoints written by "
                "scripts/pretrain.py (e.g. --resume auto for this run's own), or start without --resume."
            ) from error
    return stored
