"""Preemption and a dying rank, on real tiny runs of `scripts/pretrain.py` launched as a user (or a scheduler) would.

- A preemption signal (SIGTERM, SIGUSR1) at a random point, sent to the whole process group as Slurm does (data loader
  workers included) or to torchrun, which forwards it: the run finishes its step, writes a checkpoint, flushes its
  metrics and exits with `--preemption_exit_code`; `--resume auto` then continues, and the per-step losses equal an
  uninterrupted run's (bit-identical on one process, within the 2-process tolerance under torchrun).
- A rank killed with SIGKILL under `torchrun --max-restarts`: the survivor fails fast instead of hanging, torchrun
  restarts the group, `--resume auto` continues from the newest complete checkpoint, and the losses equal an
  uninterrupted run's within the 2-process tolerance.
- A rank that stops answering (SIGSTOP): the survivor's collective fails after `--collective_timeout_s`.

The signal points are drawn at random (the seed is in every failure message); whatever the point, the guarantees hold.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    TINY_RUN_STEPS,
    child_pids,
    losses,
    metric_rows,
    pretrain_command,
    run_pretrain,
    small_run_args,
)

from prismatic.training.checkpointing import CHECKPOINTS_DIR, RNG_DIR

SEED = int(os.environ.get("PREEMPTION_TEST_SEED", random.randrange(1_000_000)))
TWO_PROCESS_TOLERANCE = 1e-5  # tests/test_training.py: 2 processes (FSDP2) vs 1


def _start(args: list[str], nproc: int | None = None, torchrun_flags: tuple[str, ...] = ()) -> subprocess.Popen:
    """pretrain.py in a new session (so a signal can go to its whole process group, as Slurm sends it)."""
    command = pretrain_command(args, nproc)
    if nproc is not None:
        command = [command[0], *torchrun_flags, *command[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the run ended ({process.returncode}) before the signal point (seed {SEED}):\n"
                                 f"{err[-4000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for the signal point (seed {SEED})")
        time.sleep(0.02)


def _finish(process: subprocess.Popen, timeout: float = 180.0) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in child_pids(process.pid):
            os.kill(child, signal.SIGKILL)
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        raise AssertionError(f"the run did not end within {timeout} s (seed {SEED}):\n{err[-4000:]}") from None
    return process.returncode, err


def _checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / CHECKPOINTS_DIR
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*")) if root.is_dir() else []


def test_a_preemption_signal_checkpoints_the_step_and_resume_is_bit_identical(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    """One process, num_workers 1, signals to the whole process group: once while the run is set up, once mid-run."""
    rng = random.Random(SEED)
    args = small_run_args(tiny_data_root, tmp_path, "preempted", TINY_RUN_STEPS, "--save_interval", "100",
                          "--num_workers", "1", "--preemption_exit_code", "3", "--resume", "auto")  # fmt: skip
    run_dir = tmp_path / "preempted"

    # 1. SIGTERM while the model is being built: nothing trained, nothing saved, the requeue status.
    process = _start(args)
    _wait_for(lambda: (run_dir / "config.json").is_file(), process)
    time.sleep(rng.uniform(0.0, 1.0))
    os.killpg(process.pid, signal.SIGTERM)
    code, err = _finish(process)
    assert code == 3 and "preempted: SIGTERM received" in err and "Traceback" not in err, (SEED, err[-3000:])
    assert _checkpoint_steps(run_dir) == [] and _rows(run_dir) == 0

    # 2. SIGUSR1 to every process (the loader worker too) after a random step: that step's checkpoint, exit 3.
    target = rng.randint(1, TINY_RUN_STEPS - 3)
    process = _start(args)
    _wait_for(lambda: _rows(run_dir) >= target, process)
    os.killpg(process.pid, signal.SIGUSR1)
    code, err = _finish(process)
    done = _rows(run_dir)
    assert code == 3 and "preempted: SIGUSR1 received" in err and "Traceback" not in err, (SEED, err[-3000:])
    assert target <= done < TINY_RUN_STEPS and _checkpoint_steps(run_dir) == [done], (SEED, target, done)
    assert not (run_dir / "model.safetensors").exists()  # an unfinished run exports nothing

    # 3. --resume auto to the end: the losses of an uninterrupted run, bit for bit.
    run_pretrain(args)
    assert losses(run_dir) == losses(tiny_run_dir), (SEED, target, done)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_and_resume_continues(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    """torchrun forwards SIGTERM to its workers; the all-reduced flag stops both ranks after the same step."""
    target = random.Random(SEED).randint(1, TINY_RUN_STEPS - 3)
    args = small_run_args(tiny_data_root, tmp_path, "preempted-2", TINY_RUN_STEPS, "--save_interval", "100",
                          "--model.finetune_per_device_batch_size", "1", "--resume", "auto")  # fmt: skip
    run_dir = tmp_path / "preempted-2"
    process = _start(args, nproc=2)
    _wait_for(lambda: _rows(run_dir) >= target, process)
    process.send_signal(signal.SIGTERM)  # torchrun only: it forwards the signal and waits for its workers
    _, err = _finish(process)
    done = _rows(run_dir)
    assert err.count("preempted: SIGTERM received") == 2, (SEED, err[-4000:])  # each rank stopped cleanly
    assert target <= done < TINY_RUN_STEPS and _checkpoint_steps(run_dir) == [done], (SEED, target, done)
    checkpoint = run_dir / CHECKPOINTS_DIR / f"step-{done:06d}"
    assert sorted(p.name for p in (checkpoint / RNG_DIR).iterdir()) == ["rank-00000.json", "rank-00001.json"]

    run_pretrain(args, nproc=2)
    single, resumed = losses(tiny_run_dir), losses(run_dir)
    assert len(resumed) == TINY_RUN_STEPS
    assert max(abs(a - b) for a, b in zip(single, resumed)) < TWO_PROCESS_TOLERANCE, (SEED, single, resumed)


def _worker_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the torchrun child whose environment says RANK=<rank> (Linux /proc)."""
    for pid in child_pids(torchrun_pid):
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_restarted_by_torchrun_and_training_continues(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    args = small_run_args(tiny_data_root, tmp_path, "restarted", TINY_RUN_STEPS, "--save_interval", "2",
                          "--model.finetune_per_device_batch_size", "1", "--resume", "auto")  # fmt: skip
    run_dir = tmp_path / "restarted"
    target = random.Random(SEED).randint(2, TINY_RUN_STEPS - 2)  # after the first checkpoint (step 2)
    process = _start(args, nproc=2, torchrun_flags=("--max-restarts", "2"))
    ready = lambda: _rows(run_dir) >= target and _checkpoint_steps(run_dir) and _worker_pid(process.pid, 1)  # noqa: E731
    _wait_for(ready, process)  # a complete checkpoint exists (the one at step 2 may still be being written at row 2)
    victim = _worker_pid(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    code, err = _finish(process)
    assert code == 0, (SEED, err[-4000:])
    assert "restart" in err.lower(), (SEED, err[-4000:])  # torchrun restarted the group
    assert "Resumed from" in err, (SEED, err[-4000:])
    rows = metric_rows(run_dir)
    assert len(rows) == TINY_RUN_STEPS
    single, restarted = losses(tiny_run_dir), [row["loss"] for row in rows]
    assert max(abs(a - b) for a, b in zip(single, restarted)) < TWO_PROCESS_TOLERANCE, (SEED, single, restarted)
    assert (run_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_rank_that_stops_answering_makes_the_others_fail_within_the_collective_timeout(
    tiny_data_root: Path, tmp_path: Path
) -> None:
    args = small_run_args(tiny_data_root, tmp_path, "stuck", 40, "--save_interval", "100",
                          "--model.finetune_per_device_batch_size", "1", "--collective_timeout_s", "3")  # fmt: skip
    run_dir = tmp_path / "stuck"
    process = _start(args, nproc=2, torchrun_flags=("--max-restarts", "0", "--shutdown-timeout", "2"))
    _wait_for(lambda: _rows(run_dir) >= 2 and _worker_pid(process.pid, 1) is not None, process)
    victim = _worker_pid(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)  # alive but stuck: no connection closes, only the timeout can tell
    started = time.monotonic()
    while _worker_pid(process.pid, 0) is not None and time.monotonic() - started < 60:
        time.sleep(0.1)
    failed_after = time.monotonic() - started
    os.kill(victim, signal.SIGKILL)  # torchrun's own clean-up of a stopped process waits 30 s before SIGKILL
    code, err = _finish(process, timeout=90)
    assert code != 0 and failed_after < 30, (failed_after, err[-4000:])  # rank 0 gave up after ~3 s, not 60 min
    assert "Timed out waiting 3000ms" in err, err[-4000:]
    assert _rows(run_dir) < 40
