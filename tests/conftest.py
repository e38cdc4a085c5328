"""Test-wide settings: no hub access (a miss would retry for ~50 s), offline trackers, deterministic CPU math, and the
one tiny training run the whole session shares.

`tiny_run_dir` trains `dyva_siglip+tiny` once per session through the real CLI (`scripts/pretrain.py` in a
subprocess, fp32, one process, `helpers.small_run_args`: 6 steps of global batch 4 over the 16 samples of
`tiny_data_root`, 2 SVD frame slots, checkpoints at steps 3 and 6, MFU logged against `--peak_flops 5e11`). Tests
that only need a finished run directory use it instead of training their own; they must not modify it (copy it
first: `shutil.copytree(tiny_run_dir, ...)`).

`pytest -m "not slow" -n 2` is the fast loop for contributors (4-8 minutes on 2 CPU cores); `make test` runs all.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN_ID, TINY_RUN_PEAK_FLOPS, TINY_RUN_STEPS, run_pretrain, small_run_args, write_llava_dataset


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated LLaVA-format dataset of `helpers.write_llava_dataset`: 12 image rows + 4 text-only rows."""
    return write_llava_dataset(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny DyVA run directory (config.json, metrics.jsonl, model.safetensors, checkpoints/step-000003 and
    step-000006), trained once per session; read-only for tests."""
    runs = tmp_path_factory.mktemp("tiny-runs")
    run_pretrain(
        small_run_args(tiny_data_root, runs, TINY_RUN_ID, TINY_RUN_STEPS, "--peak_flops", str(TINY_RUN_PEAK_FLOPS))
    )
    return runs / TINY_RUN_ID


@pytest.fixture(scope="session")
def tiny_vlm(tiny_run_dir: Path):
    """`prismatic.load` of the shared tiny run (fp32, CPU, eval mode); read-only for tests."""
    from prismatic import load

    return load(tiny_run_dir)


@pytest.fixture(scope="session")
def tiny_fingerprint(tiny_run_dir: Path):
    from prismatic.eval.results import fingerprint_directory

    return fingerprint_directory(tiny_run_dir, str(tiny_run_dir))
