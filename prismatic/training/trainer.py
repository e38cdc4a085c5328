"""The training loop: epochs of global batches, gradient accumulation, metrics, checkpoints, early stop.

One optimizer step consumes one global batch of the sampler (`global_batch_size` samples over all ranks); each rank's
share arrives as `grad_accumulation` micro-batches of `per_device_batch_size`. After each step the sampler is told how
far training got, which is what a checkpoint records, so a resumed run continues with exactly the next batch.

Non-finite steps: a step whose gradient norm is not finite (NaN/inf loss or gradients) is skipped by the strategy (no
optimizer update; `prismatic.training.optimizer.step_unless_non_finite`) and logged with `skipped: true` and the running
`skipped_total`. No checkpoint is written right after a skipped step (a due save waits for the next good step), so
every checkpoint follows a real update. After `max_consecutive_skips` skipped steps in a row the run is diverging: the
trainer closes the metrics and raises `TrainingDiverged` without saving, so the newest complete checkpoint on disk is
the last good one. The decision uses the all-reduced loss / gradient norm, the same on every rank, so every rank
raises at the same step and none waits in a collective for the others.

Preemption (`prismatic.util.preemption`): when a preemption signal arrived on any rank (the flag is all-reduced after
every step, so all ranks agree on the step), the trainer finishes the step it is in, writes a checkpoint (unless that
step was just saved), closes the metrics and raises `Preempted`; `--resume auto` continues bit-exactly. A signal that
arrives before the first step stops the run before it trains. Once the first step is done the process group's
collective timeout drops from the setup's hour to `collective_timeout` (a rank stuck or gone makes the others fail
within it instead of hanging).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch.utils.data import DataLoader, Dataset

from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.sampler import DistributedResumableSampler
from prismatic.training.checkpointing import CheckpointManager
from prismatic.training.metrics import MetricsLogger
from prismatic.training.options import StageOptimization
from prismatic.training.strategies.base import StepResult, TrainingStrategy
from prismatic.training.throughput import ThroughputMeter
from prismatic.util.distributed import DistributedContext
from prismatic.util.preemption import Preemption, ignore_in_worker

overwatch = initialize_overwatch(__name__)

DEFAULT_MAX_CONSECUTIVE_SKIPS = 10


class TrainingDiverged(RuntimeError):
    """Raised when `max_consecutive_skips` optimizer steps in a row had a non-finite gradient norm (all skipped)."""


@dataclass(frozen=True)
class TrainingPlan:
    total_steps: int
    steps_per_epoch: int
    global_batch_size: int
    per_device_batch_size: int
    grad_accumulation: int  # micro-batches per rank per optimizer step


def plan_training(optimization: StageOptimization, steps_per_epoch: int, world_size: int) -> TrainingPlan:
    """Steps and accumulation for a stage. `max_steps`, when set, overrides `epochs` (and may span epochs)."""
    per_rank, remainder = divmod(optimization.global_batch_size, world_size * optimization.per_device_batch_size)
    if remainder or per_rank < 1:
        raise ValueError(
            f"global_batch_size={optimization.global_batch_size} must be a multiple of per_device_batch_size="
            f"{optimization.per_device_batch_size} x {world_size} process(es); change one of them."
        )
    total = optimization.max_steps if optimization.max_steps is not None else optimization.epochs * steps_per_epoch
    return TrainingPlan(total, steps_per_epoch, optimization.global_batch_size, optimization.per_device_batch_size,
                        per_rank)  # fmt: skip


class Trainer:
    def __init__(
        self,
        strategy: TrainingStrategy,
        dataset: Dataset,
        collator: object,
        sampler: DistributedResumableSampler,
        plan: TrainingPlan,
        checkpoints: CheckpointManager,
        metrics: MetricsLogger,
        ctx: DistributedContext,
        seed: int,
        save_interval: int | None = None,
        stop_after_step: int | None = None,
        num_workers: int = 0,
        throughput: ThroughputMeter | None = None,
        evaluate: Callable[[int], Mapping[str, float]] | None = None,
        eval_every: int | None = None,
        max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS,
        preemption: Preemption | None = None,
        collective_timeout: timedelta | None = None,
    ) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}.")
        self.strategy, self.dataset, self.collator, self.sampler = strategy, dataset, collator, sampler
        self.plan, self.checkpoints, self.metrics, self.ctx = plan, checkpoints, metrics, ctx
        self.seed, self.save_interval, self.stop_after_step = seed, save_interval, stop_after_step
        self.num_workers = num_workers
        self.throughput = throughput  # FLOPs, MFU and time shares per step, added to the metrics line
        # Held-out evaluation every `eval_every` steps and at the end (its metrics join that step's line as eval/*).
        self.evaluate, self.eval_every = evaluate, eval_every
        # Divergence guard: skipped steps in a row (reset by a good step), and how many may follow each other.
        self.max_consecutive_skips, self.consecutive_skips = max_consecutive_skips, 0
        self.preemption, self.collective_timeout = preemption, collective_timeout

    def _held_out(self, step: int) -> dict[str, float]:
        if self.evaluate is None or not self.eval_every:
            return {}
        if step % self.eval_every and step != self.plan.total_steps:
            return {}
        started = time.perf_counter()
        with self.strategy.inference_context():
            metrics = {f"eval/{key}": value for key, value in self.evaluate(step).items()}
        return {**metrics, "eval/seconds": time.perf_counter() - started}

    def _loader(self, epoch: int) -> DataLoader:
        # A private generator: creating the loader draws worker seeds from it, not from the global RNG, so the
        # global random streams (saved in checkpoints) do not depend on when loaders are created.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.plan.per_device_batch_size,
            sampler=self.sampler,
            collate_fn=self.collator,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.ctx.device.type == "cuda",
            generator=generator,
            persistent_workers=False,
            # A scheduler that signals every process of the job must not kill the workers mid-batch.
            worker_init_fn=(functools.partial(ignore_in_worker, signals=[s.name for s in self.preemption.signals])
                            if self.preemption is not None and self.num_workers > 0 else None),
        )  # fmt: skip

    def _save(self, step: int, epoch: int) -> None:
        self.checkpoints.save(self.strategy, step, epoch, self.sampler.state_dict())

    def _check_divergence(self, step: int, result: StepResult) -> None:
        """Count skipped steps in a row; at `max_consecutive_skips`, close the metrics (flushed, loss curve drawn)
        and raise TrainingDiverged, with nothing saved after the last good step."""
        self.consecutive_skips = self.consecutive_skips + 1 if result.skipped else 0
        if self.consecutive_skips < self.max_consecutive_skips:
            return
        first = step - self.consecutive_skips + 1
        self.metrics.close()
        complete = self.checkpoints.complete_checkpoints()
        newest = (f"The newest complete checkpoint is {complete[-1][1]} (step {complete[-1][0]})" if complete
                  else "No checkpoint of this run was saved yet")  # fmt: skip
        raise TrainingDiverged(
            f"Training diverged: {self.consecutive_skips} optimizer steps in a row (steps {first}-{step}) had a "
            f"non-finite loss or gradient norm (last loss {result.loss}, grad norm {result.grad_norm}); each was "
            f"skipped, and --max_consecutive_skips {self.max_consecutive_skips} stops the run here, saving nothing. "
            f"{newest}. Lower the learning rate (--model.finetune_learning_rate / --model.align_learning_rate) or "
            "raise the warmup, check the data of those steps (a corrupt or extreme sample) and the precision "
            "settings, then continue from the last good checkpoint with --resume auto (or start again without "
            "--resume)."
        )

    def _check_preemption(self, step: int, epoch: int, saved_at: int) -> None:
        """Collective (one all-reduce under torchrun). When any rank received a preemption signal: checkpoint the step
        just finished (unless saved already), flush the metrics and raise Preempted, on every rank."""
        if self.preemption is None or not self.preemption.agreed(self.ctx):
            return
        if step != saved_at:
            self._save(step, epoch)
        self.metrics.close()
        complete = self.checkpoints.complete_checkpoints()
        where = f"checkpoint {complete[-1][1]} (step {complete[-1][0]})" if complete else "no checkpoint (no step ran)"
        raise self.preemption.stop(f"stopped after step {step} of {self.plan.total_steps}; {where}; continue with "
                                   "--resume auto")  # fmt: skip

    def _after_first_step(self) -> None:
        # Setup collectives may wait an hour (a 7B model built on every rank); steps must not.
        if self.collective_timeout is not None:
            self.ctx.set_collective_timeout(self.collective_timeout)

    def run(self, start_step: int = 0) -> tuple[int, bool]:
        """Train from `start_step` (the sampler already positioned); returns (last step, finished the plan)."""
        step, saved_at = start_step, start_step
        save_due = False  # a save that fell on a skipped step waits for the next good step
        plan, sampler = self.plan, self.sampler
        epoch = sampler.epoch + int(sampler.consumed_samples >= sampler.samples_per_epoch)
        overwatch.info(
            f"Training {plan.total_steps} steps ({plan.steps_per_epoch} per epoch) from step {start_step}: global "
            f"batch {plan.global_batch_size} = {self.ctx.world_size} rank(s) x {plan.grad_accumulation} micro-batch(es) "
            f"x {plan.per_device_batch_size}"
        )
        self._check_preemption(step, epoch, saved_at)  # signalled while the run was being set up
        while step < plan.total_steps:
            sampler.set_epoch(epoch)
            steps_left = (sampler.samples_per_epoch - sampler.consumed_samples) // plan.global_batch_size
            batches = iter(self._loader(epoch))
            for _ in range(min(steps_left, plan.total_steps - step)):
                if self.throughput is not None:
                    self.throughput.start_step(step + 1)
                started = time.perf_counter()
                micro_batches = [next(batches) for _ in range(plan.grad_accumulation)]
                result = self.strategy.train_step(micro_batches)
                elapsed = time.perf_counter() - started
                sampler.advance(plan.global_batch_size)
                step += 1
                if step == start_step + 1:
                    self._after_first_step()
                extra = self.throughput.finish_step(micro_batches, elapsed) if self.throughput is not None else {}
                self.metrics.log_step(step, epoch, result, elapsed, {**extra, **self._held_out(step)})
                self._check_divergence(step, result)
                save_due = save_due or bool(self.save_interval and step % self.save_interval == 0)
                if save_due and not result.skipped:
                    self._save(step, epoch)
                    saved_at, save_due = step, False
                if self.stop_after_step is not None and step >= self.stop_after_step and step < plan.total_steps:
                    if saved_at != step:
                        self._save(step, epoch)
                    overwatch.info(f"Stopping after step {step} as asked (stop_after_step); resume with --resume auto")
                    return step, False
                if step < plan.total_steps:
                    self._check_preemption(step, epoch, saved_at)
            epoch += 1
        if saved_at != step:
            self._save(step, epoch - 1)
        return step, True
