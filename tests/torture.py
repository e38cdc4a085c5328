"""Torture run: a tiny training run killed (SIGKILL) or preempted (SIGTERM) at random points, over and over, resumed
with `--resume auto` each time, then compared step by step with the same run uninterrupted.

    python tests/torture.py --events 20                  # one process (bit-identical losses expected), ~6 min
    python tests/torture.py --events 10 --nproc 2        # torchrun, 2 ranks (FSDP2): within 1e-5 expected

Opt-in (not part of `make test`). Each event: launch `scripts/pretrain.py` (or torchrun) in its own session, wait a
random time (from the first second of set-up to a few seconds into training), then either SIGKILL the whole process
group (a node dying; under torchrun a random rank is killed and the group fails) or SIGTERM it (a scheduler's
preemption notice: the run checkpoints the step and exits). It reports per event what was sent, the step reached,
the checkpoint the next launch resumed from and the steps lost, then whether the final per-step losses equal the
uninterrupted run's. Results: `--out/torture.json` and the summary printed at the end (docs/reliability.md quotes
one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import child_pids, pretrain_command, small_run_args, write_llava_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20, help="kills / preemptions to survive")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of the tiny run")
    parser.add_argument("--save_interval", type=int, default=5)
    parser.add_argument("--train_s", type=float, default=4.0, help="strikes land up to this long into training")
    parser.add_argument("--nproc", type=int, default=1, help="1: plain python; 2+: torchrun with that many ranks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/torture"))
    return parser.parse_args()


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def last_step(run_dir: Path, launched_at: float, resumed_from: int) -> int:
    """The last step this launch logged; until it rewrites metrics.jsonl (when training starts) the rows there are an
    earlier launch's, already counted, and this one has trained nothing past the checkpoint it resumes from."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.stat().st_mtime < launched_at:
        return resumed_from
    return max((row["step"] for row in rows(run_dir)), default=resumed_from)


def checkpoints(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*")) if root.is_dir() else []


def launch(args: list[str], nproc: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = pretrain_command(args, None if nproc == 1 else nproc)
    with open(log, "a") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=handle, start_new_session=True)


def strike(process: subprocess.Popen, kind: str, nproc: int, rng: random.Random) -> None:
    if kind == "SIGTERM":
        os.killpg(process.pid, signal.SIGTERM)  # torchrun forwards it to the workers
    elif nproc == 1:
        os.killpg(process.pid, signal.SIGKILL)
    else:  # one rank dies; torchrun (no restarts here) then stops the group
        workers = child_pids(process.pid)
        os.kill(rng.choice(workers) if workers else process.pid, signal.SIGKILL)


def wait(process: subprocess.Popen, timeout: float = 300.0) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in child_pids(process.pid):
            os.kill(pid, signal.SIGKILL)
        os.killpg(process.pid, signal.SIGKILL)
        raise SystemExit(f"a launch did not end within {timeout} s: hang (see the log)") from None


def main() -> int:
    opts = parse_args()
    rng = random.Random(opts.seed)
    shutil.rmtree(opts.out, ignore_errors=True)
    opts.out.mkdir(parents=True)
    data = write_llava_dataset(opts.out / "data", num_images=24, num_text=8)
    extra = ["--save_interval", str(opts.save_interval), "--model.finetune_per_device_batch_size", "1"]

    def run_args(run_id: str) -> list[str]:
        return small_run_args(data, opts.out, run_id, opts.steps, *extra, "--resume", "auto")

    print(f"[torture] uninterrupted reference: {opts.steps} steps on {opts.nproc} process(es)", flush=True)
    started, process = time.monotonic(), launch(run_args("reference"), opts.nproc, opts.out / "reference.log")
    while not rows(opts.out / "reference") and process.poll() is None:
        time.sleep(0.05)
    setup_s = time.monotonic() - started  # launch to the first logged step
    if wait(process) != 0:
        raise SystemExit(f"the reference run failed: {opts.out / 'reference.log'}")
    reference = [row["loss"] for row in rows(opts.out / "reference")]
    print(f"[torture] reference done in {time.monotonic() - started:.0f} s (set-up {setup_s:.1f} s)", flush=True)

    run_dir, events, launches = opts.out / "tortured", [], 0
    while True:
        resumed_from = checkpoints(run_dir)[-1] if checkpoints(run_dir) else 0
        launched_at = time.time()
        process = launch(run_args("tortured"), opts.nproc, opts.out / "tortured.log")
        launches += 1
        if len(events) >= opts.events:  # enough: let this launch finish the run
            if wait(process) != 0:
                raise SystemExit(f"the final launch failed: {opts.out / 'tortured.log'}")
            break
        kind = rng.choice(["SIGKILL", "SIGTERM"])
        time.sleep(rng.uniform(0.5, setup_s + opts.train_s))  # in set-up (imports, build, data) or training
        if process.poll() is not None:  # it finished before the strike: count a launch, not an event
            if (run_dir / "model.safetensors").is_file():
                break
            continue
        reached = last_step(run_dir, launched_at, resumed_from)
        strike(process, kind, opts.nproc, rng)
        code = wait(process)
        saved = checkpoints(run_dir)[-1] if checkpoints(run_dir) else 0
        # A negative code: ended by the signal itself (SIGTERM before the entry point installed its handler, during
        # Python's imports: nothing had started, so nothing is lost).
        event = {"event": len(events) + 1, "signal": kind, "resumed_from": resumed_from, "step_reached": reached,
                 "checkpoint_after": saved, "steps_lost": max(0, reached - saved), "exit_code": code}  # fmt: skip
        events.append(event)
        print(f"[torture] {json.dumps(event)}", flush=True)

    final = [row["loss"] for row in rows(run_dir)]
    worst = max((abs(a - b) for a, b in zip(final, reference)), default=float("inf"))
    summary = {
        "events": len(events), "sigkill": sum(e["signal"] == "SIGKILL" for e in events),
        "sigterm": sum(e["signal"] == "SIGTERM" for e in events), "launches": launches, "nproc": opts.nproc,
        "steps": opts.steps, "save_interval": opts.save_interval, "seed": opts.seed,
        "steps_lost_total": sum(e["steps_lost"] for e in events),
        "steps_lost_max_sigkill": max((e["steps_lost"] for e in events if e["signal"] == "SIGKILL"), default=0),
        "steps_lost_max_sigterm": max((e["steps_lost"] for e in events if e["signal"] == "SIGTERM"), default=0),
        "sigterm_clean_exits": sum(e["signal"] == "SIGTERM" and e["exit_code"] == 0 for e in events),
        "completed": len(final) == opts.steps and (run_dir / "model.safetensors").is_file(),
        "bit_identical": final == reference, "max_abs_loss_difference": worst,
    }  # fmt: skip
    (opts.out / "torture.json").write_text(json.dumps({"summary": summary, "events": events}, indent=1))
    print(f"[torture] {json.dumps(summary)}", flush=True)
    tolerance = 0.0 if opts.nproc == 1 else 1e-5
    return 0 if summary["completed"] and worst <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
