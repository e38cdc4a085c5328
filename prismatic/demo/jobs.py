"""Child processes of the demo scripts: run a few commands at a time, one CPU core each, echoing their output.

The demo drives the framework's own entry points (`scripts/train_world_model.py`, `cache_features.py`, `pretrain.py`,
`evaluate.py`) as separate processes, as a user would, so what it shows is what those commands do. Progress-bar
redraws are thinned to one line per `PROGRESS_EVERY_S` per job so the console stays readable.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROGRESS_EVERY_S = 20.0  # a progress-bar line of a child process is echoed at most this often


@dataclass
class Job:
    name: str
    argv: list[str]
    threads: int = 1
    log: list[str] = field(default_factory=list)


def _echo(job: Job, line: str, last: dict[str, float]) -> None:
    """Print a child's line with its name; progress-bar redraws (tqdm) at most every PROGRESS_EVERY_S."""
    line = line.strip()
    if not line:
        return
    job.log.append(line)
    if re.search(r"\d+/\d+ \[", line):  # tqdm
        now = time.monotonic()
        if now - last.get(job.name, 0.0) < PROGRESS_EVERY_S:
            return
        last[job.name] = now
    print(f"[{job.name}] {line}", flush=True)


def run_jobs(jobs: Sequence[Job], parallel: int, cwd: Path) -> None:
    """Run the jobs, `parallel` at a time, streaming their output; raise if any fails (with its last lines)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "WANDB_MODE": "offline"}  # fmt: skip
    last: dict[str, float] = {}
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            env = {**environment, "OMP_NUM_THREADS": str(job.threads)}
            process = subprocess.Popen(job.argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

            def pump(job: Job = job, process: subprocess.Popen = process) -> None:
                buffer = b""
                while chunk := process.stdout.read1(4096):  # type: ignore[union-attr]
                    buffer += chunk
                    *lines, buffer = re.split(rb"[\r\n]", buffer)
                    for line in lines:
                        _echo(job, line.decode(errors="replace"), last)
                _echo(job, buffer.decode(errors="replace"), last)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            running.append((job, process, reader))
        time.sleep(0.2)
        for entry in list(running):
            job, process, reader = entry
            if process.poll() is not None:
                reader.join()
                running.remove(entry)
                if process.returncode != 0:
                    for _, other, _ in running:
                        other.kill()
                    tail = "\n".join(job.log[-25:])
                    raise SystemExit(f"{job.name} failed (exit {process.returncode}): {' '.join(job.argv)}\n{tail}")


def stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def done(start: float) -> None:
    print(f"    ({time.perf_counter() - start:.0f}s)", flush=True)
