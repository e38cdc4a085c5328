"""Training metrics: a jsonl file (always), Weights & Biases (when asked), a console progress bar, a loss-curve PNG.

Everything is written by rank 0 only. One jsonl line per optimizer step: step, epoch, loss, lr, grad_norm,
samples_per_s, tokens_per_s, time (seconds since this process started training), a few counts, `skipped` (this step's
optimizer update was skipped: non-finite gradients) and `skipped_total` (skipped steps so far in the run's history,
resumed parts included), and what the trainer's
throughput meter adds (`prismatic.training.throughput`: flops_per_sample, tflops_per_s, mfu when the device's peak is
known, and the shares of step time spent in the encoders, the projector and the LLM). On resume, lines
after the resumed step (written by the interrupted run after its last checkpoint) are dropped, so the file always
holds one line per step of the run's single history. Secrets never reach a tracker: the config handed to wandb is the
same sanitised one that is saved in the run directory.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from tqdm import tqdm

from prismatic.overwatch import initialize_overwatch

if TYPE_CHECKING:  # the strategies import the model code; the config layer reads TRACKERS without it
    from prismatic.training.strategies.base import StepResult

overwatch = initialize_overwatch(__name__)

Tracker = Literal["jsonl", "wandb"]
TRACKERS: tuple[str, ...] = get_args(Tracker)
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Create it early (trackers fail fast, before any model is built), then `begin()` once the plan is known."""

    def __init__(
        self,
        run_dir: Path,
        trackers: Sequence[Tracker],
        is_rank_zero: bool,
        run_id: str,
        config: dict[str, Any],
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = is_rank_zero
        self.trackers = tuple(trackers)
        self.start_time = time.perf_counter()
        self._wandb_run: Any = None
        self._bar: tqdm | None = None
        self._file: Any = None
        self._closed = False
        self.skipped_total = 0  # skipped steps in the run's history up to the last logged step
        if self.enabled and "wandb" in self.trackers:
            self._wandb_run = _init_wandb(self.run_dir, run_id, config, wandb_project, wandb_entity)

    def begin(self, total_steps: int, start_step: int) -> None:
        """Open the jsonl (dropping lines after `start_step`, left by an interrupted run) and the progress bar."""
        self.start_time = time.perf_counter()
        if not self.enabled:
            return
        kept = self._truncate_after(start_step)
        self.skipped_total = sum(bool(row.get("skipped", False)) for row in kept)
        self._file = self.path.open("a")
        self._bar = tqdm(
            total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
        )

    def _truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep the lines up to `step` (the resumed history) and return them."""
        kept = [row for row in read_metrics(self.path) if row["step"] <= step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        return kept

    def log_step(
        self, step: int, epoch: int, result: StepResult, step_seconds: float, extra: Mapping[str, float] | None = None
    ) -> None:
        """One jsonl line (and tracker entry) for an optimizer step; `extra` adds keys (e.g. the throughput meter's
        flops_per_sample, tflops_per_s, mfu and time shares)."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError("MetricsLogger.begin() must be called before log_step().")
        seconds = max(step_seconds, 1e-9)
        self.skipped_total += int(result.skipped)
        row = {
            "step": step,
            "epoch": epoch,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "samples_per_s": result.samples / seconds,
            "tokens_per_s": result.tokens / seconds,
            "time": time.perf_counter() - self.start_time,
            "step_time": step_seconds,
            "samples": result.samples,
            "tokens": result.tokens,
            "label_tokens": result.label_tokens,
            "skipped": result.skipped,
            "skipped_total": self.skipped_total,
            **(extra or {}),
        }
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            # Held-out metrics arrive as eval/<key> and keep that name; everything else is train/<key>.
            self._wandb_run.log({k if k.startswith("eval/") else f"train/{k}": v for k, v in row.items() if k != "step"},
                                step=step)  # fmt: skip
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(
                loss=f"{result.loss:.4f}",
                lr=f"{result.lr:.2e}",
                samples_s=f"{row['samples_per_s']:.1f}",
                tokens_s=f"{row['tokens_per_s']:.0f}",
                **({"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {}),
                refresh=False,
            )

    def close(self) -> None:
        """Close the trackers and draw the loss curve of the whole run (resumed parts included). Idempotent: the
        trainer closes them itself before raising TrainingDiverged."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        plot_loss_curve(self.path, self.run_dir / LOSS_PLOT_FILE)


def _wandb_id(run_id: str) -> str:
    # A stable id, so a resumed run continues the same wandb run; wandb ids avoid "/" and other separators.
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:128]


def _init_wandb(run_dir: Path, run_id: str, config: dict[str, Any], project: str | None, entity: str | None) -> Any:
    import wandb  # imported only when asked for: it is slow to import and starts a service process

    try:
        return wandb.init(
            project=project,
            entity=entity,
            name=run_id,
            id=_wandb_id(run_id),
            resume="allow",
            dir=str(run_dir),
            config=config,
        )
    except Exception as error:  # wandb raises several types (usage, auth, network); all mean the same to the user
        raise RuntimeError(
            f"Could not start Weights & Biases ({type(error).__name__}: {error}). Run `wandb login`, or set "
            "WANDB_MODE=offline to log locally (sync later with `wandb sync`), or drop --wandb_project / 'wandb' "
            "from --trackers."
        ) from error


def plot_loss_curve(metrics_path: Path, output: Path) -> None:
    """Loss (and a smoothed loss) against step, learning rate on a second axis; matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        overwatch.warning(f"No metrics in {metrics_path}; no loss curve drawn.")
        return
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    window = max(1, len(losses) // 20)
    smoothed = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                for i in range(len(losses))]  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    ax.plot(steps, smoothed, color="tab:blue", linewidth=2, label=f"loss (mean of {window})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per label token)")
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [row["lr"] for row in rows], color="tab:orange", linewidth=1, label="lr")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right")
    ax.set_title(f"{metrics_path.parent.name}: {len(rows)} steps, last loss {losses[-1]:.4f}")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
