"""World-model training checkpoints: the framework's layout, checksums and atomic-complete rules, for the objective.

The framework's `CheckpointManager` (`training/checkpointing.py`) finds, resolves (`--resume auto`), verifies,
writes (`save_tensors`: checksums, a failed write -> CheckpointSaveError) and prunes checkpoints; only the state it
saves and restores is the objective's here:

- DCP shards + `.metadata`: the trainable weights (`model.unet.*`, sharded or not) and the optimizer state
  (`optim.*`), through `get_state_dict` like the framework (frozen VAE / CLIP are rebuilt from their source);
- `rng/rank-00000.json`: the rank's python / numpy / torch states plus its slot generators' states (`generators`);
- `trainer_state.json` (written last): step, epoch, scheduler, data position, world size, trainable names.

Written under `.tmp-step-N/` and renamed once complete; `keep_last` complete checkpoints are kept. A checkpoint with
damaged files is skipped by `--resume auto`, and its DCP metadata is checked before DCP unpickles it, as for the VLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LRScheduler

from prismatic.overwatch import initialize_overwatch
from prismatic.training.checkpointing import (
    RNG_DIR,
    TRAINER_STATE_FILE,
    CheckpointManager,
    TrainerState,
    _options,
    _quiet_single_process,
)
from prismatic.training.integrity import check_dcp_metadata
from prismatic.training.rng import restore_rng_state
from prismatic.world_model.svd_objective import SVDWorldModelObjective

overwatch = initialize_overwatch(__name__)


def trainable_names(objective: SVDWorldModelObjective) -> list[str]:
    return sorted(name for name, param in objective.named_parameters() if param.requires_grad)


def _generator_states(generators: list[torch.Generator]) -> list[list[int]]:
    return [generator.get_state().tolist() for generator in generators]


class WorldModelCheckpoints(CheckpointManager):
    """`CheckpointManager` (finding, `resume`, verifying, pruning, the save itself) for the objective, optimizer and
    generators."""

    def save_state(self, objective: SVDWorldModelObjective, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                   generators: list[torch.Generator], step: int, epoch: int, data: dict[str, Any]) -> Path:  # fmt: skip
        """Collective: every rank calls it. Returns the final checkpoint directory; a failed write raises
        CheckpointSaveError with the partial directory removed (`CheckpointManager.save_tensors`)."""
        model_state, optim_state = get_state_dict(objective, optimizer, options=_options())
        state = TrainerState(
            step=step,
            epoch=epoch,
            scheduler=scheduler.state_dict(),
            sampler=data,
            world_size=self.ctx.world_size,
            trainable_parameters=trainable_names(objective),
        )
        return self.save_tensors({"model": model_state, "optim": optim_state["state"]}, state,
                                 rng_extra={"generators": _generator_states(generators)})  # fmt: skip

    def load_state(self, checkpoint: Path, objective: SVDWorldModelObjective, optimizer: torch.optim.Optimizer,
                   scheduler: LRScheduler, generators: list[torch.Generator]) -> TrainerState:  # fmt: skip
        """Restore weights, optimizer, scheduler, this rank's RNG and generator states; returns the trainer state."""
        state = TrainerState(**json.loads((checkpoint / TRAINER_STATE_FILE).read_text()))
        if state.trainable_parameters != trainable_names(objective):
            raise ValueError(
                f"Checkpoint {checkpoint} was saved with other trainable parameters (train_vae / "
                "train_image_encoder or the SVD architecture differ); resume with that run's options."
            )
        check_dcp_metadata(checkpoint)  # before DCP unpickles anything of it
        model_state, optim_state = get_state_dict(objective, optimizer, options=_options())
        tensors = {"model": model_state, "optim": optim_state["state"]}
        with _quiet_single_process():
            dcp.load(tensors, checkpoint_id=str(checkpoint), no_dist=not self.ctx.is_distributed)
        set_state_dict(objective, optimizer, model_state_dict=tensors["model"],
                       optim_state_dict={"state": tensors["optim"], "param_groups": optim_state["param_groups"]},
                       options=_options())  # fmt: skip
        scheduler.load_state_dict(state.scheduler)
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # the learning rate of the next step, as it was when the checkpoint was taken
        self._restore_rng(checkpoint, generators, state.world_size)
        overwatch.info(f"Resumed from {checkpoint} at step {state.step} (epoch {state.epoch})")
        return state

    def _restore_rng(self, checkpoint: Path, generators: list[torch.Generator], saved_world_size: int) -> None:
        rng_file = checkpoint / RNG_DIR / f"rank-{self.ctx.rank:05d}.json"
        saved = json.loads(rng_file.read_text()) if rng_file.is_file() else {}
        states = saved.get("generators", [])
        if saved_world_size != self.ctx.world_size or len(states) != len(generators):
            overwatch.warning(
                f"Resuming a {saved_world_size}-rank checkpoint on {self.ctx.world_size} ranks (or with another "
                "batch layout): weights and optimizer are exact, the noise streams restart from their seeds."
            )
            return
        restore_rng_state(saved)
        for generator, values in zip(generators, states):
            generator.set_state(torch.tensor(values, dtype=torch.uint8))
