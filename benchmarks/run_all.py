"""Run every benchmark (each in its own process, so memory baselines and thread pools start fresh), then write the
combined `results.md`. What `make bench` runs.

    python -m benchmarks.run_all [--smoke] [--out DIR] [--only train_step generation ...] [extra flags for each]

Benchmark 1 runs first: benchmark 5 reads its train-step rate from `train_step.json` in the same directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import RESULTS_DIR, render_combined

BENCHMARKS: tuple[str, ...] = (
    "train_step", "generative_encoder", "feature_cache", "generation", "data_pipeline", "eval_scoring", "encoder_zoo"
)
REPO = Path(__file__).resolve().parents[1]


def run(name: str, out: Path, smoke: bool, extra: Sequence[str]) -> tuple[int, float]:
    """One benchmark as `python -m benchmarks.<name>`; returns (exit code, seconds)."""
    command = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(out), *(["--smoke"] if smoke else []), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    print(f"[bench] {name}: {' '.join(command[1:])}  (load average {os.getloadavg()[0]:.2f})", flush=True)
    code = subprocess.call(command, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    print(f"[bench] {name}: {'done' if code == 0 else f'FAILED ({code})'} in {seconds:.0f} s", flush=True)
    return code, seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args, extra = parser.parse_known_args(argv)
    failed = []
    for name in (n for n in BENCHMARKS if n in args.only):
        code, _ = run(name, args.out, args.smoke, extra)
        if code != 0:
            failed.append(name)
    path = render_combined(args.out, BENCHMARKS)
    print(f"[bench] results: {path}" + (f"; FAILED: {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
