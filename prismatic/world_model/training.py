"""The world model's training loop: global batches of clips through the SVD objective, with validation and checkpoints.

One optimizer step = one global batch (`batches.py`: slots, deterministic order, per-slot generators). Each rank's
gradient is sum(its per-sample losses) x world_size / G, and DDP / FSDP2 average over ranks, so the update is the
gradient of the global batch's mean loss whatever the layout. Then: clip to `max_grad_norm` (the step is skipped when
the norm is not finite), AdamW step, schedule step. Every step logs loss, lr, grad_norm and samples/s through the
framework's `MetricsLogger`; every `val_every` steps and at the last step the validation loss per sigma bin on fixed
held-out clips with fixed noise (`SVDWorldModelObjective.validation_loss_by_sigma_bin`) is added to that step's line
as `val/loss_sigma_<sigma>` and `val/loss` (their mean). Checkpoints every `save_interval` steps (and at a requested
early stop) make `--resume auto` continue bit-exactly on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from prismatic.overwatch import initialize_overwatch
from prismatic.training.metrics import MetricsLogger
from prismatic.training.optimizer import step_unless_non_finite
from prismatic.training.strategies.base import StepResult
from prismatic.util.distributed import DistributedContext
from prismatic.world_model.batches import BatchLayout, ClipsWithFps, SlotBatchSampler, collate_clips, steps_per_epoch
from prismatic.world_model.checkpoint import WorldModelCheckpoints
from prismatic.world_model.parallel import ParallelObjective

overwatch = initialize_overwatch(__name__)


@dataclass(frozen=True)
class LoopOptions:
    max_steps: int
    max_grad_norm: float
    seed: int
    save_interval: int | None = None  # checkpoint every N steps (None: only at a requested early stop)
    stop_after_step: int | None = None  # checkpoint and stop after this step (to test or split a run)
    val_every: int | None = None  # validation every N steps; always at the last step when there is a val set
    num_workers: int = 0


@dataclass
class ValidationSet:
    """Fixed held-out micro-batches and the fixed sigmas to evaluate them at (each batch b uses noise seed seed + b)."""

    batches: list[dict]
    sigmas: list[float]
    seed: int

    @classmethod
    def from_clips(cls, clips: ClipsWithFps, max_clips: int, batch_size: int, sigmas: list[float],
                   seed: int) -> ValidationSet:  # fmt: skip
        count = min(len(clips), max_clips)
        batches = [collate_clips([clips[i] for i in range(start, min(start + batch_size, count))])
                   for start in range(0, count, batch_size)]  # fmt: skip
        return cls(batches, sigmas, seed)


def sigma_key(sigma: float) -> str:
    return f"val/loss_sigma_{sigma:.3g}"


def validate(parallel: ParallelObjective, validation: ValidationSet) -> dict[str, float]:
    """Mean per-sample loss at each sigma over the validation clips, and their mean. Every rank computes all of it
    (FSDP2 needs every rank in each U-Net call), so the numbers do not depend on the world size."""
    objective, device = parallel.objective, parallel.ctx.device
    was_training = objective.training
    objective.eval()
    totals = torch.zeros(len(validation.sigmas), dtype=torch.float64)
    count = 0
    with parallel.autocast():
        for index, batch in enumerate(validation.batches):
            losses = objective.validation_loss_by_sigma_bin(batch["frames"].to(device), validation.sigmas,
                                                            seed=validation.seed + index, fps=batch["fps"])  # fmt: skip
            totals += losses.double().sum(dim=1).cpu()
            count += losses.shape[1]
    objective.train(was_training)
    means = (totals / max(count, 1)).tolist()
    metrics = {sigma_key(sigma): value for sigma, value in zip(validation.sigmas, means)}
    metrics["val/loss"] = sum(means) / len(means)
    return metrics


class WorldModelTrainer:
    def __init__(self, parallel: ParallelObjective, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                 generators: list[torch.Generator], layout: BatchLayout, dataset: ClipsWithFps,
                 checkpoints: WorldModelCheckpoints, metrics: MetricsLogger, options: LoopOptions,
                 validation: ValidationSet | None) -> None:  # fmt: skip
        self.parallel, self.optimizer, self.scheduler = parallel, optimizer, scheduler
        self.generators, self.layout, self.dataset = generators, layout, dataset
        self.checkpoints, self.metrics, self.options, self.validation = checkpoints, metrics, options, validation
        self.ctx: DistributedContext = parallel.ctx
        self.steps_per_epoch = steps_per_epoch(len(dataset), layout.global_batch_size)

    def data_state(self, step: int) -> dict[str, int]:
        """The data position a checkpoint records (the order itself is a function of seed and epoch)."""
        return {"step": step, "epoch": step // self.steps_per_epoch, "global_batch_size": self.layout.global_batch_size}

    def resume(self, resume: str | None) -> int:
        """Load the checkpoint `resume` names (None / auto / a path); returns the step to start from."""
        checkpoint = self.checkpoints.resolve_resume(resume)
        if checkpoint is None:
            return 0
        state = self.checkpoints.load_state(checkpoint, self.parallel.objective, self.optimizer, self.scheduler,
                                            self.generators)  # fmt: skip
        if state.sampler.get("global_batch_size") != self.layout.global_batch_size:
            raise ValueError(f"{checkpoint} was trained with global_batch_size={state.sampler.get('global_batch_size')}"
                             "; resume with the same --global_batch_size (the data order depends on it).")  # fmt: skip
        return state.step

    def _loader(self, start_step: int) -> DataLoader:
        sampler = SlotBatchSampler(len(self.dataset), self.layout, self.ctx.rank, self.options.seed, start_step,
                                   self.options.max_steps)  # fmt: skip
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_clips,
                          num_workers=self.options.num_workers)  # fmt: skip

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        parallel, device = self.parallel, self.ctx.device
        scale = self.ctx.world_size / self.layout.global_batch_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for index, (batch, generator) in enumerate(zip(micro_batches, self.generators)):
            with parallel.sync_context(is_last_micro_batch=index == len(micro_batches) - 1), parallel.autocast():
                losses, _ = parallel.forward_module(batch["frames"].to(device), generator, fps=batch["fps"])
            (losses.sum() * scale).backward()
            loss_sum += losses.detach().double().sum()
        global_loss = float(self.ctx.all_reduce_sum(loss_sum)) / self.layout.global_batch_size
        lr = float(self.optimizer.param_groups[0]["lr"])
        grad_norm = parallel.clip_grad_norm(self.options.max_grad_norm)
        skipped = step_unless_non_finite(self.optimizer, self.scheduler, grad_norm)
        return StepResult(global_loss, grad_norm, lr, 0, 0, self.layout.global_batch_size, skipped)

    def _wants_validation(self, step: int) -> bool:
        every = self.options.val_every
        return self.validation is not None and (step == self.options.max_steps or bool(every and step % every == 0))

    def run(self, start_step: int) -> tuple[int, bool]:
        """Train from `start_step`; returns (last step, finished all max_steps)."""
        options, accumulation = self.options, self.layout.accumulation
        self.parallel.objective.train()
        self.metrics.begin(options.max_steps, start_step)
        step, pending = start_step, []
        started = time.perf_counter()
        for micro_batch in self._loader(start_step):
            pending.append(micro_batch)
            if len(pending) < accumulation:
                continue
            result = self.train_step(pending)
            pending, step = [], step + 1
            extra = validate(self.parallel, self.validation) if self._wants_validation(step) else None
            if extra is not None:
                overwatch.info(f"Step {step}: validation loss {extra['val/loss']:.4f}")
            self.metrics.log_step(step, (step - 1) // self.steps_per_epoch, result, time.perf_counter() - started,
                                  extra)  # fmt: skip
            started = time.perf_counter()
            stop = options.stop_after_step is not None and options.stop_after_step <= step < options.max_steps
            if stop or (options.save_interval and step % options.save_interval == 0):
                self.checkpoints.save_state(self.parallel.objective, self.optimizer, self.scheduler, self.generators,
                                            step, step // self.steps_per_epoch, self.data_state(step))  # fmt: skip
            if stop:
                overwatch.info(f"Stopping after step {step} as asked (stop_after_step); resume with --resume auto")
                return step, False
        return step, step >= options.max_steps
