"""Training checkpoints with torch.distributed.checkpoint (DCP), atomic and pruned, plus the final weight export.

Layout of `<run_dir>/checkpoints/step-000500/`:
- DCP shards + `.metadata`: the trainable weights (`model.*`) and the optimizer state tensors (`optim.*`); frozen
  parameters are rebuilt from their sources and never saved. Only tensors go through DCP (its non-tensor entries
  would be pickled).
- `rng/rank-00000.json` ...: every rank's python / numpy / torch RNG states.
- `trainer_state.json` (written last): step, epoch, scheduler, sampler position, world size, trainable names.

A checkpoint is written under `.tmp-step-000500/` and renamed only once complete, so a crash leaves a `.tmp-*`
directory that resuming ignores (with a warning); the `keep_last` newest complete checkpoints are kept. At the end of
training, `export_weights` writes the trainable weights, unsharded, to `<run_dir>/model.safetensors`.

Nothing from a checkpoint can run code on load: JSON, safetensors, and DCP tensors (which DCP reads with
`torch.load(weights_only=True)`). DCP's own `.metadata` index is a pickle that DCP reads with a plain `pickle.load`,
and a non-tensor ("bytes") entry would be read with `torch.load(weights_only=False)`: so before DCP touches a
checkpoint, `check_dcp_metadata` unpickles its metadata with an allowlist of DCP's metadata classes, torch dtypes and
sizes, and requires every entry to be a tensor; anything else is refused with a ValueError. Other files dropped into
a checkpoint directory (e.g. a `.pt`) are never opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as dcp_metadata
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from prismatic.overwatch import initialize_overwatch
from prismatic.training.rng import capture_rng_state, restore_rng_state
from prismatic.training.strategies.base import TrainingStrategy
from prismatic.util.distributed import DistributedContext
from prismatic.util.io import write_json_atomic

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

overwatch = initialize_overwatch(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_DIR = "rng"
DCP_METADATA_FILE = ".metadata"
EXPORTED_WEIGHTS_FILE = "model.safetensors"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainerState:
    """The non-tensor training state, stored as JSON next to the DCP shards."""

    step: int  # optimizer steps completed
    epoch: int  # the epoch the next step belongs to
    scheduler: dict[str, Any]
    sampler: dict[str, Any]
    world_size: int
    trainable_parameters: list[str]
    format_version: int = FORMAT_VERSION


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def missing_parts(checkpoint: Path) -> list[str]:
    """What a checkpoint directory lacks to be complete (empty = complete)."""
    missing = [name for name in (DCP_METADATA_FILE, TRAINER_STATE_FILE) if not (checkpoint / name).is_file()]
    if not missing:
        world_size = json.loads((checkpoint / TRAINER_STATE_FILE).read_text()).get("world_size", 1)
        missing += [
            f"{RNG_DIR}/rank-{rank:05d}.json"
            for rank in range(world_size)
            if not (checkpoint / RNG_DIR / f"rank-{rank:05d}.json").is_file()
        ]
    return missing


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


def check_dcp_metadata(checkpoint: Path) -> None:
    """Refuse a checkpoint whose DCP metadata could run code when DCP loads it: every `*.metadata` file must unpickle
    with `_MetadataUnpickler` into DCP Metadata whose entries are all tensors (a "bytes" entry is an arbitrary pickle
    that DCP would load with weights_only=False). Raises ValueError naming the file and what to do."""
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
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
            raise ValueError(
                f"Refusing to load checkpoint {checkpoint}: {file} is not the metadata of a plain tensor checkpoint "
                f"({error}), and loading it could run code. Resume only from checkpoints written by "
                "scripts/pretrain.py (e.g. --resume auto for this run's own), or start without --resume."
            ) from error


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns on every single-process save/load that it "assumes" one process; here that is the intent.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def trainable_names(strategy: TrainingStrategy) -> list[str]:
    return sorted(name for name, param in strategy.vlm.named_parameters() if param.requires_grad)


def _options() -> StateDictOptions:
    # strict=False: frozen parameters are deliberately absent (DCP itself fails on a missing trainable tensor).
    return StateDictOptions(ignore_frozen_params=True, strict=False)


class CheckpointManager:
    def __init__(self, run_dir: Path, ctx: DistributedContext, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS_DIR
        self.ctx = ctx
        self.keep_last = keep_last

    # === Finding checkpoints ===
    def complete_checkpoints(self, root: Path | None = None) -> list[tuple[int, Path]]:
        """Complete checkpoints under `root` (default: this run's), oldest first; warns about partial ones."""
        root = self.root if root is None else Path(root)
        found: list[tuple[int, Path]] = []
        if not root.is_dir():
            return found
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(TMP_PREFIX):
                overwatch.warning(f"Ignoring partial checkpoint {entry} (left by an interrupted save).")
                continue
            match = _STEP_DIR.match(entry.name)
            if match is None or not entry.is_dir():
                continue
            missing = missing_parts(entry)
            if missing:
                overwatch.warning(f"Ignoring incomplete checkpoint {entry}: missing {', '.join(missing)}.")
                continue
            found.append((int(match.group(1)), entry))
        return sorted(found)

    def resolve_resume(self, resume: str | None) -> Path | None:
        """`None`: start fresh. `auto`: the newest complete checkpoint of this run, if any. Else a checkpoint
        directory, or a run directory (its newest complete checkpoint)."""
        if resume is None:
            return None
        if resume == "auto":
            found = self.complete_checkpoints()
            if not found:
                overwatch.info(f"resume=auto: no complete checkpoint under {self.root}; starting from scratch")
                return None
            return found[-1][1]
        path = Path(resume)
        if (path / CHECKPOINTS_DIR).is_dir():
            found = self.complete_checkpoints(path / CHECKPOINTS_DIR)
            if not found:
                raise FileNotFoundError(f"--resume {resume}: no complete checkpoint under {path / CHECKPOINTS_DIR}.")
            return found[-1][1]
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint or run directory; use auto or a path.")
        missing = missing_parts(path)
        if missing:
            raise ValueError(f"--resume {resume} is not a complete checkpoint (missing {', '.join(missing)}).")
        return path

    # === Save ===
    def save(self, strategy: TrainingStrategy, step: int, epoch: int, sampler_state: dict[str, Any]) -> Path:
        """Collective: every rank calls it. Returns the final checkpoint directory."""
        final = self.root / step_dir_name(step)
        tmp = self.root / (TMP_PREFIX + step_dir_name(step))
        if self.ctx.is_rank_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / RNG_DIR).mkdir(parents=True)
        self.ctx.barrier()

        model_state, optim_state = get_state_dict(strategy.model, strategy.optimizer, options=_options())
        with _quiet_single_process():
            dcp.save(
                {"model": model_state, "optim": optim_state["state"]},
                checkpoint_id=str(tmp),
                no_dist=not self.ctx.is_distributed,
            )
        write_json_atomic(tmp / RNG_DIR / f"rank-{self.ctx.rank:05d}.json", capture_rng_state(), indent=1)
        self.ctx.barrier()

        if self.ctx.is_rank_zero:
            state = TrainerState(
                step=step,
                epoch=epoch,
                scheduler=strategy.scheduler.state_dict(),
                sampler=sampler_state,
                world_size=self.ctx.world_size,
                trainable_parameters=trainable_names(strategy),
            )
            write_json_atomic(tmp / TRAINER_STATE_FILE, asdict(state), indent=1)
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        self.ctx.barrier()
        overwatch.info(f"Saved checkpoint {final}")
        return final

    def _prune(self) -> None:
        for _, path in self.complete_checkpoints()[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    # === Load ===
    def load(self, checkpoint: Path, strategy: TrainingStrategy) -> TrainerState:
        """Restore weights, optimizer, scheduler and this rank's RNG states; returns the trainer state."""
        raw = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
        state = TrainerState(**raw)
        current = trainable_names(strategy)
        if state.trainable_parameters != current:
            extra = sorted(set(state.trainable_parameters) - set(current))[:5]
            absent = sorted(set(current) - set(state.trainable_parameters))[:5]
            raise ValueError(
                f"Checkpoint {checkpoint} was saved with another set of trainable parameters (only in the checkpoint: "
                f"{extra}; only in this model: {absent}); resume with the model config and stage of that run."
            )
        check_dcp_metadata(checkpoint)  # before DCP unpickles anything of it
        model_state, optim_state = get_state_dict(strategy.model, strategy.optimizer, options=_options())
        tensors = {"model": model_state, "optim": optim_state["state"]}
        with _quiet_single_process():
            dcp.load(tensors, checkpoint_id=str(checkpoint), no_dist=not self.ctx.is_distributed)
        set_state_dict(
            strategy.model,
            strategy.optimizer,
            model_state_dict=tensors["model"],
            optim_state_dict={"state": tensors["optim"], "param_groups": optim_state["param_groups"]},
            options=_options(),
        )
        strategy.scheduler.load_state_dict(state.scheduler)
        for group, lr in zip(strategy.optimizer.param_groups, strategy.scheduler.get_last_lr()):
            group["lr"] = lr  # the learning rate of the next step, as it was when the checkpoint was taken

        rng_file = checkpoint / RNG_DIR / f"rank-{self.ctx.rank:05d}.json"
        if rng_file.is_file():
            restore_rng_state(json.loads(rng_file.read_text()))
        else:
            overwatch.warning_all(f"No RNG state for rank {self.ctx.rank} in {checkpoint}; random streams differ.")
        if state.world_size != self.ctx.world_size:
            overwatch.warning(
                f"Resuming a {state.world_size}-rank checkpoint on {self.ctx.world_size} ranks: weights and optimizer "
                "are exact, but per-rank random streams and reduction order differ."
            )
        overwatch.info(f"Resumed from {checkpoint} at step {state.step} (epoch {state.epoch})")
        return state


def export_weights(strategy: TrainingStrategy, path: Path, ctx: DistributedContext, metadata: dict[str, str]) -> None:
    """Collective: gather the trainable weights unsharded (on CPU) and write them, from rank 0, as safetensors."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(strategy.model, options=options)
    if ctx.is_rank_zero:
        # clone(): tied weights share storage, which safetensors refuses; each key gets its own copy.
        tensors = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in state.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors creates owner-only files; a run directory is meant to be shared
        os.replace(tmp, path)
        overwatch.info(f"Exported {len(tensors)} trainable tensors to {path}")
    ctx.barrier()


def load_pretrained_projector(vlm: PrismaticVLM, path: Path) -> None:
    """Initialise the projector from an earlier stage's export (a run directory or its model.safetensors)."""
    file = path / EXPORTED_WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"No exported weights at {file}; did the align run finish (it writes them at the end)?")
    prefix = "projector."
    tensors = {k[len(prefix) :]: v for k, v in load_file(str(file)).items() if k.startswith(prefix)}
    if not tensors:
        raise ValueError(f"{file} holds no projector weights (keys starting with {prefix!r}).")
    vlm.projector.load_state_dict(tensors, strict=True)
    overwatch.info(f"Loaded the pretrained projector ({len(tensors)} tensors) from {file}")
