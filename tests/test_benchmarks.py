"""Every benchmark runs in smoke mode (tiny dimensions, 1 warm-up + 2 timed rounds) and writes its JSON and markdown
with the fields the README and results.md rely on, so the suite never rots. Results go to a temporary directory."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# `benchmarks/` is a top-level package of the repository, not of the installed `prismatic` distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Comparison, render_combined, time_alternately
from benchmarks.run_all import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]

# train_step first: data_pipeline reads its train-step rate from train_step.json in the same directory.
ORDER = ("train_step", "generative_encoder", "feature_cache", "generation", "data_pipeline", "eval_scoring",
         "encoder_zoo")
MACHINE_KEYS = {"cpu", "cpu_cores", "torch_threads", "device", "load_average_1_5_15", "versions"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_benchmark_smoke_run_writes_results(name: str, out_dir: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops on a shared, busy machine otherwise spend their time in thread hand-offs
        module.main(["--smoke", "--out", str(out_dir), "--device", "cpu", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    payload = json.loads((out_dir / f"{name}.json").read_text())
    assert payload["benchmark"] == name and set(payload["machine"]) >= MACHINE_KEYS
    assert {"torch", "transformers", "diffusers"} <= set(payload["machine"]["versions"])
    assert payload["settings"]["smoke"] is True and payload["dimensions"]
    markdown = (out_dir / f"{name}.md").read_text()
    if payload["skipped"]:  # only the feature cache may be absent from a checkout
        assert name == "feature_cache" and "Skipped" in markdown
        return
    assert payload["measurements"] and payload["comparisons"]
    for m in payload["measurements"]:
        assert len(m["times_s"]) == 2 and m["median_s"] > 0
        assert name == "data_pipeline" or len(m["cpu_times_s"]) == 2  # loader workers' CPU time is not ours
    for c in payload["comparisons"]:
        assert c["ratio"] > 0
        assert (c["goal"] is None and c["goal_met"] is None) or (
            c["goal"].split()[0] in ("<=", ">=") and isinstance(c["goal_met"], bool)
        )
        assert f"| {c['name']} |" in markdown
    assert "Machine:" in markdown and "Dimensions:" in markdown


@pytest.mark.slow
def test_combined_results_name_the_machine_and_every_benchmark(out_dir: Path) -> None:
    assert set(ORDER) == set(BENCHMARKS)
    text = render_combined(out_dir, BENCHMARKS).read_text()
    assert "Machine:" in text
    for name in ORDER:
        assert f"`{name}`" in text


def test_candidates_alternate_and_goals_compare() -> None:
    calls: list[str] = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_alternately(candidates, device=torch.device("cpu"), warmup=1, reps=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert all(len(t.wall) == len(t.cpu) == 3 for t in times.values())
    assert Comparison("x", "d", 0.85, "<= 0.9").goal_met and not Comparison("x", "d", 3.9, ">= 4").goal_met


@pytest.mark.slow
def test_gpu_shapes_smoke_runs_each_part_in_its_own_process_and_merges(tmp_path: Path) -> None:
    """The GPU benchmark (`benchmarks/gpu_shapes.py`) in smoke mode: tiny registry ids on CPU, the same code paths
    (FSDP2 over gloo, world size 1). Each part runs as its own `python -m` process, as `benchmarks/gpu_run.sh` runs them
    (the train part joins a process group, which must not leak into this process); both merge into one result."""
    for part in ("svd", "train"):
        command = [sys.executable, "-m", "benchmarks.gpu_shapes", "--smoke", "--only", part, "--device", "cpu",
                   "--threads", "1", "--peak-flops", "1e12", "--out", str(tmp_path)]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, timeout=600)
    payload = json.loads((tmp_path / "gpu_shapes.json").read_text())
    assert payload["benchmark"] == "gpu_shapes" and payload["settings"]["smoke"] is True
    assert {"torch", "transformers", "diffusers"} <= set(payload["machine"]["versions"])
    measured = {m["name"]: m for m in payload["measurements"]}
    expected = {"svd_b1", "svd_b2", "svd_b1_noise_given", "svd_b2_noise_given", "svd_b2_per_sample",
                "svd_noise_draws_b2", "train_b1", "train_b2", "train_b1_live_encoders"}  # fmt: skip
    assert set(measured) == expected, payload["notes"]
    assert not [note for note in payload["notes"] if "failed" in note.lower() or "skipped" in note]
    for name, m in measured.items():
        rate = m["extra"]["images_per_s" if name.startswith("svd") else "tokens_per_s"]
        assert len(m["times_s"]) == 2 and m["median_s"] > 0 and rate > 0
    for name in ("train_b1", "train_b2"):
        extra = measured[name]["extra"]
        assert extra["skipped_steps"] == 0 and extra["llm_mfu"] > 0 and extra["tokens_per_step"] == int(name[-1]) * 192
    assert payload["dimensions"]["train.visual_tokens"] == 144 and payload["dimensions"]["svd.tokens_per_image"] == 128
    goals = [c for c in payload["comparisons"] if c["goal"] is not None]
    assert [c["goal"] for c in goals] == [">= 0.4", ">= 0.4"] and all(c["name"].startswith("train:") for c in goals)
    markdown = (tmp_path / "gpu_shapes.md").read_text()
    assert "Machine:" in markdown and "| svd: b=2, per-sample / batched |" in markdown and "[train]" in markdown
