"""Shared test helpers: generated LLaVA-format data (finetune conversations and align captions), the tiny DyVA run's
flags, and launching `scripts/pretrain.py` as a user would (plain python or torchrun), plus reading its metrics.

Imported by the test modules (`from helpers import ...`; pytest puts `tests/` on `sys.path`) and by `conftest.py`,
whose session fixtures `tiny_data_root` / `tiny_run_dir` train the shared tiny run with these flags.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "scripts" / "pretrain.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}

# The shared tiny run (`tiny_run_dir`): `small_run_args(..., "tiny", TINY_RUN_STEPS)` (1.5 epochs of 4 steps) plus
# `--peak_flops TINY_RUN_PEAK_FLOPS`, so its metrics carry MFU too (the flag changes nothing else).
TINY_RUN_ID = "tiny"
TINY_RUN_STEPS = 6
TINY_RUN_FRAMES = 2
TINY_RUN_PEAK_FLOPS = 5e11


def write_llava_dataset(
    root: Path, num_images: int = 12, num_text: int = 4, json_name: str = "finetune.json", image_prefix: str = ""
) -> Path:
    """LLaVA-format finetune data: colour questions on solid images (answers of varied length) + text-only rows.
    Images go to `root/images/`; the JSON names them `image_prefix + "<i>.png"`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num_images):
        name = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", (32, 32), COLORS[name]).save(root / "images" / f"{i}.png")
        answer = f"The image is {name}." + " It is a plain square." * (i % 3)
        turns = [{"from": "human", "value": "<image>\nWhat color is the image?"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"img-{i}", "image": f"{image_prefix}{i}.png", "conversations": turns})
    for i in range(num_text):
        turns = [{"from": "human", "value": f"What is {i} plus {i}?"}, {"from": "gpt", "value": f"{i} + {i} = {2 * i}."}]
        records.append({"id": f"text-{i}", "conversations": turns})
    (root / json_name).write_text(json.dumps(records))
    return root


def write_caption_dataset(root: Path, num_images: int = 8, json_name: str = "align.json") -> Path:
    """LLaVA align-format caption data (LAION-558k's shape): one image and a 2-turn conversation per record, a generic
    instruction then the caption. Images go to `root/images/cap-<i>.png`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num_images):
        name = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", (32, 32), COLORS[name]).save(root / "images" / f"cap-{i}.png")
        caption = f"A plain {name} square." + " Nothing else is in the picture." * (i % 2)
        turns = [{"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                 {"from": "gpt", "value": caption}]  # fmt: skip
        records.append({"id": f"cap-{i}", "image": f"cap-{i}.png", "conversations": turns})
    (root / json_name).write_text(json.dumps(records))
    return root


def data_args(data_root: Path) -> list[str]:
    components = "[finetune.json, images]"
    return ["--dataset.type", "llava-custom", "--dataset.dataset_root_dir", str(data_root),
            "--dataset.finetune_stage_components", components]  # fmt: skip


def small_run_args(
    data_root: Path, run_root: Path, run_id: str, steps: int, *extra: str, model_type: str = "dyva_siglip+tiny"
) -> list[str]:
    """A tiny fp32 DyVA run (2 SVD frame slots): global batch 4 (16 samples = 4 steps per epoch), checkpoints every 3
    steps. `extra` flags come last (they override); `model_type` picks another tiny model."""
    flags = (
        f"--model.type {model_type} --num_frames {TINY_RUN_FRAMES} --run_id {run_id} "
        f"--model.finetune_max_steps {steps} --model.finetune_global_batch_size 4 "
        "--model.finetune_per_device_batch_size 2 --num_workers 0 --save_interval 3"
    )
    return [*shlex.split(flags), *data_args(data_root), "--run_root_dir", str(run_root), *extra]


def pretrain_command(args: list[str], nproc: int | None = None) -> list[str]:
    """scripts/pretrain.py as a user launches it: plain python, or torchrun with `nproc` processes."""
    if nproc is None:
        return [sys.executable, str(PRETRAIN), *args]
    return [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), str(PRETRAIN), *args]


def launch_pretrain(
    args: list[str], nproc: int | None = None, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run scripts/pretrain.py to completion and return the finished process, whatever its exit code."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(pretrain_command(args, nproc), cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def run_pretrain(args: list[str], nproc: int | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    """Launch scripts/pretrain.py as a user would: plain python, or torchrun with `nproc` processes; must succeed."""
    result = launch_pretrain(args, nproc, env, timeout)
    if result.returncode != 0:
        command = shlex.join(pretrain_command(args, nproc))
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def metric_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, checked to be steps 1, 2, ... in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, len(rows) + 1))
    return rows


def metric(run_dir: Path, key: str = "loss") -> list[float]:
    return [row[key] for row in metric_rows(run_dir)]


def losses(run_dir: Path) -> list[float]:
    return metric(run_dir, "loss")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc): e.g. torchrun's workers, which run in process groups of their own."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
