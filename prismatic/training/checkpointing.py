"""Training checkpoints with torch.distributed.checkpoint (DCP), atomic and pruned, plus the final weight export.

Layout of `<run_dir>/checkpoints/step-000500/`:
- DCP shards + `.metadata`: the trainable weights (`model.*`) and the optimizer state tensors (`optim.*`); frozen
  parameters are rebuilt from their sources and never saved. Only tensors go through DCP (its non-tensor entries
  would be pickled).
- `rng/rank-00000.json` ...: every rank's python / numpy / torch RNG states.
- `trainer_state.json`: step, epoch, scheduler, sampler position, world size, trainable names.
- `checksums/`: size and SHA-256 of every file above (`prismatic/training/integrity.py`), written with it.

A checkpoint is written under `.tmp-step-000500/` and renamed only once complete, so a crash leaves a `.tmp-*`
directory that resuming ignores (with a warning); the `keep_last` newest complete checkpoints are kept. At the end of
training, `export_weights` writes the trainable weights, unsharded, to `<run_dir>/model.safetensors`.

Damage after the fact (a truncated or altered file) is found by the checksums before anything is loaded: `--resume
auto` (or a run directory) skips a damaged checkpoint, naming its bad files, and resumes from the newest intact one;
an explicitly named damaged checkpoint is refused. A save that fails (disk full, an I/O error) removes its partial
directory and stops the run with `CheckpointSaveError`, leaving the earlier checkpoints as they were.

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
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from prismatic.overwatch import initialize_overwatch
from prismatic.training import integrity
from prismatic.training.integrity import DCP_METADATA_FILE, check_dcp_metadata
from prismatic.training.rng import capture_rng_state, restore_rng_state
from prismatic.training.strategies.base import TrainingStrategy
from prismatic.util.cli import UserError
from prismatic.util.distributed import DistributedContext
from prismatic.util.io import write_json_atomic

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

overwatch = initialize_overwatch(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_DIR = "rng"
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


class CheckpointSaveError(UserError):
    """Writing a checkpoint failed (disk full, an I/O error); the earlier checkpoints are untouched."""


def missing_parts(checkpoint: Path) -> list[str]:
    """What a checkpoint directory lacks to be complete (empty = complete); an unreadable trainer state counts."""
    missing = [name for name in (DCP_METADATA_FILE, TRAINER_STATE_FILE) if not (checkpoint / name).is_file()]
    if missing:
        return missing
    try:
        world_size = int(json.loads((checkpoint / TRAINER_STATE_FILE).read_text()).get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return [f"a readable {TRAINER_STATE_FILE}"]
    expected = [f"{RNG_DIR}/rank-{rank:05d}.json" for rank in range(world_size)]
    if integrity.has_checksums(checkpoint):
        expected += integrity.required_manifests(world_size)
    return [name for name in expected if not (checkpoint / name).is_file()]


def _is_write_failure(error: BaseException) -> bool:
    """A failed write to the file system. PyTorch's zip writer (`torch.save`, which DCP uses for every shard) turns a
    failed write (disk full, an I/O error) into a RuntimeError raised from its C++ `inline_container` with no errno
    ("unexpected pos 704 vs 598"), so that form counts too: seen on a full disk and on /dev/full."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and "inline_container" in str(error))


def _io_failures(error: CheckpointException) -> list[BaseException]:
    """The file-system errors among the per-rank failures DCP collected."""
    failures = [failure[0] if isinstance(failure, tuple) else failure for failure in error.failures.values()]
    return [failure for failure in failures if _is_write_failure(failure)]


def _free_space(path: Path) -> str:
    """Free space on the file system holding `path` (or its nearest existing parent), for error messages."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 2**30:.2f} GiB free on {path}"
    except OSError:
        return f"free space on {path} unknown"


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
        """`None`: start fresh. `auto`: the newest complete, intact checkpoint of this run, if any. Else a checkpoint
        directory (refused if damaged), or a run directory (its newest complete, intact checkpoint). Collective: the
        checksums are verified in shares over the ranks."""
        if resume is None:
            return None
        if resume == "auto":
            if not self.complete_checkpoints():
                overwatch.info(f"resume=auto: no complete checkpoint under {self.root}; starting from scratch")
                return None
            return self._newest_intact(self.root)
        path = Path(resume)
        if (path / CHECKPOINTS_DIR).is_dir():
            if not self.complete_checkpoints(path / CHECKPOINTS_DIR):
                raise FileNotFoundError(f"--resume {resume}: no complete checkpoint under {path / CHECKPOINTS_DIR}.")
            return self._newest_intact(path / CHECKPOINTS_DIR)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint or run directory; use auto or a path.")
        missing = missing_parts(path)
        if missing:
            raise ValueError(f"--resume {resume} is not a complete checkpoint (missing {', '.join(missing)}).")
        problems = self.verify(path)
        if problems:
            raise ValueError(
                f"--resume {resume} is damaged: {'; '.join(problems[:5])}. Resume from an intact checkpoint (a run "
                "directory or --resume auto picks the newest intact one) or restore this one from a copy."
            )
        return path

    def verify(self, checkpoint: Path) -> list[str]:
        """Collective: every problem the checksums find in `checkpoint` (each rank hashes its share of the files)."""
        if not integrity.has_checksums(checkpoint):
            overwatch.warning(f"{checkpoint} has no checksums (written by an older version): not verified")
            return []
        local = integrity.verify(checkpoint, self.ctx.rank, self.ctx.world_size)
        return [problem for problems in self.ctx.all_gather_object(local) for problem in problems]

    def _newest_intact(self, root: Path) -> Path:
        """The newest complete checkpoint under `root` whose files match their checksums; damaged ones are named
        and skipped. Every one damaged is an error (resuming from nothing would silently drop the run's progress)."""
        damaged = []
        for step, path in reversed(self.complete_checkpoints(root)):
            problems = self.verify(path)
            if not problems:
                if damaged:
                    overwatch.warning(f"Resuming from {path} (step {step}), the newest intact checkpoint")
                return path
            overwatch.warning(f"Skipping damaged checkpoint {path}: {'; '.join(problems[:5])}")
            damaged.append(str(path))
        raise ValueError(
            f"Every complete checkpoint under {root} is damaged ({', '.join(damaged)}; the log names the bad files), "
            "so there is nothing safe to resume from. Restore them from a copy, or move them away and start again "
            "without --resume."
        )

    # === Save ===
    def save(self, strategy: TrainingStrategy, step: int, epoch: int, sampler_state: dict[str, Any]) -> Path:
        """Collective: every rank calls it. Returns the final checkpoint directory (see `save_tensors`)."""
        model_state, optim_state = get_state_dict(strategy.model, strategy.optimizer, options=_options())
        state = TrainerState(
            step=step,
            epoch=epoch,
            scheduler=strategy.scheduler.state_dict(),
            sampler=sampler_state,
            world_size=self.ctx.world_size,
            trainable_parameters=trainable_names(strategy),
        )
        return self.save_tensors({"model": model_state, "optim": optim_state["state"]}, state)

    def save_tensors(
        self, tensors: dict[str, Any], state: TrainerState, rng_extra: dict[str, Any] | None = None
    ) -> Path:
        """Collective: one checkpoint in the layout above, for any training loop (the VLM trainer, the world model):
        `tensors` through DCP, each rank's RNG states (plus `rng_extra`), checksums, `state` last. A write that fails
        (disk full, an I/O error; also inside DCP's writers) removes the partial directory and raises
        CheckpointSaveError."""
        final = self.root / step_dir_name(state.step)
        tmp = self.root / (TMP_PREFIX + step_dir_name(state.step))
        try:
            return self._write(tensors, state, rng_extra or {}, tmp, final)
        except (OSError, RuntimeError, CheckpointException) as error:
            if isinstance(error, CheckpointException) and not _io_failures(error):
                raise  # not the file system: a bug, keep its traceback
            if not isinstance(error, CheckpointException) and not _is_write_failure(error):
                raise
            if self.ctx.is_rank_zero:
                shutil.rmtree(tmp, ignore_errors=True)
            complete = self.complete_checkpoints()
            kept = (f"the previous checkpoint {complete[-1][1]} (step {complete[-1][0]}) is intact" if complete
                    else "no earlier checkpoint of this run exists")  # fmt: skip
            causes = _io_failures(error) if isinstance(error, CheckpointException) else [error]
            cause = "; ".join(str(failure).strip() for failure in causes)
            raise CheckpointSaveError(
                f"Writing checkpoint step {state.step} to {tmp} failed ({cause}; {_free_space(self.root)}); its partial "
                f"files were removed and {kept}. Free disk space or fix the file system, then continue with "
                "--resume auto."
            ) from error

    def _write(self, tensors: dict[str, Any], state: TrainerState, rng_extra: dict[str, Any], tmp: Path,
               final: Path) -> Path:  # fmt: skip
        if self.ctx.is_rank_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / RNG_DIR).mkdir(parents=True)
            (tmp / integrity.CHECKSUMS_DIR).mkdir()
        self.ctx.barrier()

        with _quiet_single_process():
            dcp.save(tensors, checkpoint_id=str(tmp), no_dist=not self.ctx.is_distributed)
        rng_file = tmp / RNG_DIR / f"rank-{self.ctx.rank:05d}.json"
        write_json_atomic(rng_file, {**capture_rng_state(), **rng_extra}, indent=1)
        own_files = integrity.rank_files(tmp, self.ctx.rank, rng_file, with_metadata=self.ctx.is_rank_zero)
        integrity.write_manifest(tmp, integrity.rank_manifest_name(self.ctx.rank), own_files)
        self.ctx.barrier()

        if self.ctx.is_rank_zero:
            write_json_atomic(tmp / TRAINER_STATE_FILE, asdict(state), indent=1)
            integrity.write_manifest(tmp, integrity.TRAINER_STATE_DIGEST, [tmp / TRAINER_STATE_FILE])
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
        stored = check_dcp_metadata(checkpoint)  # before DCP unpickles anything of it
        model_state, optim_state = get_state_dict(strategy.model, strategy.optimizer, options=_options())
        _skip_buffers_not_stored(model_state, stored, strategy, checkpoint)
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


def _skip_buffers_not_stored(model_state: dict, stored: set[str], strategy: TrainingStrategy, checkpoint: Path) -> None:
    """A buffer the model gained after the checkpoint was written (e.g. a video encoder's empty-prompt embedding, a
    persistent buffer since 2026-12-04) keeps the value the model was built with (the run's own input file) instead
    of failing the resume; a missing trainable tensor still fails in DCP."""
    buffers = {name for name, _ in strategy.vlm.named_buffers()}
    skipped = sorted(key for key in model_state if f"model.{key}" not in stored and key in buffers)
    for key in skipped:
        del model_state[key]
    if skipped:
        overwatch.warning(f"{checkpoint} predates the buffers {skipped}: they keep the values the model was built with.")


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
