"""Non-finite steps and divergence, on real tiny runs of `scripts/pretrain.py` (in-process, `pretrain(cfg)` with a
draccus-parsed config): a step whose loss turns NaN is skipped and counted (`skipped`, `skipped_total` in
metrics.jsonl) and training goes on; a loss that stays NaN stops the run with TrainingDiverged after
`--max_consecutive_skips` skipped steps, saving nothing after the last good checkpoint, and `--resume auto` continues
from that checkpoint.

The NaN is injected by monkeypatching the strategy's loss (`TrainingStrategy._forward_loss_sum`) for chosen steps of
this process: the loss and therefore every gradient become NaN, as an overflow would make them. Product code has no
test hook.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import draccus
import pytest
from helpers import PRETRAIN, REPO, TORCHRUN, metric_rows, small_run_args, write_llava_dataset

from prismatic.conf.pretrain import PretrainConfig
from prismatic.training.checkpointing import CHECKPOINTS_DIR, EXPORTED_WEIGHTS_FILE
from prismatic.training.strategies.base import TrainingStrategy
from prismatic.training.trainer import TrainingDiverged


def _pretrain_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "scripts" / "pretrain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(args: list[str]) -> Path:
    """scripts/pretrain.py's `pretrain(cfg)`, in this process, on the config its CLI would parse from `args`."""
    return _pretrain_script().pretrain(draccus.parse(PretrainConfig, args=args))


def _inject_nan_loss(monkeypatch: pytest.MonkeyPatch, nan_at: Callable[[int], bool]) -> None:
    """Make the training loss NaN in the optimizer steps `nan_at(step)` selects (1-based, counted in this process)."""
    train_step, forward_loss_sum = TrainingStrategy.train_step, TrainingStrategy._forward_loss_sum
    steps = {"current": 0}

    def counting_train_step(self: TrainingStrategy, micro_batches):
        steps["current"] += 1
        return train_step(self, micro_batches)

    def nan_loss_sum(self: TrainingStrategy, batch):
        loss = forward_loss_sum(self, batch)
        return loss * float("nan") if nan_at(steps["current"]) else loss

    monkeypatch.setattr(TrainingStrategy, "train_step", counting_train_step)
    monkeypatch.setattr(TrainingStrategy, "_forward_loss_sum", nan_loss_sum)


def _run_args(data_root: Path, run_root: Path, run_id: str, *extra: str) -> list[str]:
    """A 4-step tiny run of the prismatic baseline (no SVD stream: the fastest tiny model to build and train)."""
    return small_run_args(data_root, run_root, run_id, 4, *extra, model_type="prism_siglip+tiny")


def _checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(entry.name for entry in (run_dir / CHECKPOINTS_DIR).iterdir())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llava_dataset(tmp_path_factory.mktemp("divergence-data"))


def test_a_nan_loss_step_is_skipped_counted_and_training_goes_on(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject_nan_loss(monkeypatch, lambda step: step == 2)
    run_dir = _train(_run_args(data_root, tmp_path, "one-nan", "--save_interval", "2"))  # saves due at steps 2, 4

    rows = metric_rows(run_dir)
    assert len(rows) == 4
    assert [row["skipped"] for row in rows] == [False, True, False, False]
    assert [row["skipped_total"] for row in rows] == [0, 1, 1, 1]
    assert math.isnan(rows[1]["loss"]) and not math.isfinite(rows[1]["grad_norm"])
    assert math.isfinite(rows[0]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])
    later = [row["loss"] for row in rows[2:]]
    assert all(math.isfinite(loss) for loss in later), later
    # The save due at the skipped step 2 waits for the next good step; the run finishes and exports.
    assert _checkpoint_names(run_dir) == ["step-000003", "step-000004"]
    assert (run_dir / EXPORTED_WEIGHTS_FILE).is_file()


def test_a_loss_that_stays_nan_stops_the_run_and_resume_auto_continues_from_the_last_good_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _run_args(data_root, tmp_path, "diverges", "--save_interval", "1")
    with monkeypatch.context() as patch:
        _inject_nan_loss(patch, lambda step: step >= 2)
        with pytest.raises(TrainingDiverged) as raised:
            _train([*args, "--max_consecutive_skips", "2"])
    run_dir = tmp_path / "diverges"
    message = str(raised.value)
    assert "2 optimizer steps in a row (steps 2-3)" in message
    assert str(run_dir / CHECKPOINTS_DIR / "step-000001") in message
    assert "learning rate" in message and "check the data" in message and "--resume auto" in message

    # Nothing of the diverged state was saved: the newest complete checkpoint is the last good step's.
    assert _checkpoint_names(run_dir) == ["step-000001"]
    assert not (run_dir / EXPORTED_WEIGHTS_FILE).exists()
    # The metrics were flushed and closed: every step up to the divergence, the loss curve drawn.
    rows = metric_rows(run_dir)
    assert [row["skipped"] for row in rows] == [False, True, True]
    assert [row["skipped_total"] for row in rows] == [0, 1, 2]
    assert (run_dir / "loss.png").is_file()

    # The cause gone (e.g. a lower learning rate, fixed data), --resume auto trains from step 1 to the end.
    resumed = _train([*args, "--resume", "auto"])
    rows = metric_rows(resumed)
    assert len(rows) == 4 and not any(row["skipped"] for row in rows)
    assert [row["skipped_total"] for row in rows] == [0] * 4
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) for row in rows)
    assert (resumed / EXPORTED_WEIGHTS_FILE).is_file()


def test_max_consecutive_skips_must_be_positive(tmp_path: Path, data_root: Path) -> None:
    args = _run_args(data_root, tmp_path, "bad", "--max_consecutive_skips", "0")
    cfg = draccus.parse(PretrainConfig, args=args)
    cfg.resolve()
    with pytest.raises(ValueError, match="--max_consecutive_skips must be >= 1"):
        cfg.validate(world_size=1)


# Under torchrun the loss and the gradient norm are all-reduced, so every rank sees the same NaN, skips the same steps
# and raises at the same step: the job ends (no rank waits in a collective for another) with the same checkpoints.
NAN_FROM_STEP_2 = f"""
import os, pathlib, runpy, sys
from prismatic.training.strategies.base import TrainingStrategy
from prismatic.training.trainer import TrainingDiverged

train_step, forward_loss_sum, steps = TrainingStrategy.train_step, TrainingStrategy._forward_loss_sum, [0]

def counting_train_step(self, micro_batches):
    steps[0] += 1
    return train_step(self, micro_batches)

def nan_loss_sum(self, batch):
    loss = forward_loss_sum(self, batch)
    return loss * float("nan") if steps[0] >= 2 else loss

TrainingStrategy.train_step, TrainingStrategy._forward_loss_sum = counting_train_step, nan_loss_sum
sys.argv[0] = {str(PRETRAIN)!r}
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except TrainingDiverged as error:  # this rank got there: say so, then fail as the script would
    pathlib.Path(os.environ["DIVERGED_DIR"], "rank-" + os.environ["RANK"]).write_text(str(error))
    raise
"""


def test_under_torchrun_every_rank_stops_at_the_same_step_without_hanging(data_root: Path, tmp_path: Path) -> None:
    launcher = tmp_path / "pretrain_with_nan.py"
    launcher.write_text(NAN_FROM_STEP_2)
    args = _run_args(data_root, tmp_path, "diverges-ddp", "--save_interval", "1", "--max_consecutive_skips", "2",
                     "--model.finetune_per_device_batch_size", "1")  # fmt: skip
    command = [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc-per-node", "2", str(launcher), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "DIVERGED_DIR": str(tmp_path)}  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)

    assert result.returncode != 0 and "Training diverged" in result.stderr, result.stderr[-4000:]
    # Each rank raised the error itself, at the same step (a rank stuck in a collective would leave no file).
    for rank in (0, 1):
        assert "2 optimizer steps in a row (steps 2-3)" in (tmp_path / f"rank-{rank}").read_text()
    run_dir = tmp_path / "diverges-ddp"
    assert _checkpoint_names(run_dir) == ["step-000001"]
    assert [row["skipped_total"] for row in metric_rows(run_dir)] == [0, 1, 2]
