"""Every benchmark runs in smoke mode (tiny dimensions, 1 warm-up + 2 timed rounds) and writes its JSON and markdown
with the fields the README and results.md rely on, so the suite never rots. Results go to a temporary directory."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
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


def test_combined_lever_takes_each_setting_from_the_fastest_lever_that_beat_the_baseline() -> None:
    from benchmarks.gpu_parts_train import combined_lever

    def rates(**tokens_per_s: float) -> dict:
        return {name: {"tokens_per_s": value} for name, value in tokens_per_s.items()}

    picked = combined_lever(rates(baseline=100, ac_every2=110, ac_every4=116, loss_chunked=97, fsdp_no_reshard=101,
                                  fsdp_prefetch2=99, compile_blocks=123))  # fmt: skip
    assert picked is not None and picked.name == "combined"
    assert (picked.every, picked.loss_kernel, picked.reshard_after_forward, picked.prefetch, picked.compile_blocks) == (
        4, "plain", False, 0, True)
    assert picked.checkpointing and not picked.smaller_batch
    assert combined_lever(rates(baseline=100, compile_blocks=123, ac_every2=90)) is None  # one lever alone: nothing new
    assert combined_lever(rates(ac_every2=110, compile_blocks=123)) is None  # no baseline: nothing to beat


def test_step_clock_times_the_decode_steps_of_generate(tiny_vlm) -> None:
    """The GPU generate part's decode rate: one LLM forward start per new token (the prefill, then one per decode
    step), and a rate from the steps after the first."""
    from benchmarks.generation import ours
    from benchmarks.gpu_parts_infer import StepClock

    clock = StepClock(tiny_vlm.llm_backbone.llm, torch.device("cpu"))
    call = clock.timed("b2_n6", ours(tiny_vlm, 2, 6, 32))
    try:
        for _ in range(2):
            call()
    finally:
        clock.handle.remove()  # the session's shared model stays as it was
    assert [len(ticks) for ticks in clock.ticks["b2_n6"]] == [6, 6]
    assert all(ticks == sorted(ticks) for ticks in clock.ticks["b2_n6"])
    # 2 rows x the 4 decode steps after the first, over the time from step 1's start to the last step's start.
    expected = sorted(2 * 4 / (ticks[-1] - ticks[1]) for ticks in clock.ticks["b2_n6"])
    assert clock.decode_rate("b2_n6", 2) == pytest.approx(sum(expected) / 2)


def test_stage_clock_times_each_encoder_stage_once_per_call_and_only_inside_its_context() -> None:
    """The GPU encoder part's breakdown: one time per stage and call, from the first module's start to the last one's
    end, together less than the call; no hooks left once the context ends."""
    from benchmarks.gpu_parts_infer import StageClock
    from prismatic.models.backbones.vision.svd_config import TINY_SVD_CONFIG
    from prismatic.models.materialize import get_vision_backbone_and_transform

    encoder, _ = get_vision_backbone_and_transform("tiny-svd", svd_config=TINY_SVD_CONFIG)
    encoder.requires_grad_(False).eval()
    size = TINY_SVD_CONFIG.image_size
    pixels = {"svd": torch.randint(0, 256, (2, 1, 3, size, size), dtype=torch.uint8)}
    unet = encoder.unet
    clock = StageClock(torch.device("cpu"), {"vae": (encoder.vae.encoder, encoder.vae.encoder),
                                             "unet": (unet.conv_in, unet.down_blocks[-1])})  # fmt: skip
    calls = []
    for _ in range(2):
        with clock, torch.no_grad():
            start = time.perf_counter()
            encoder(pixels)
            calls.append(time.perf_counter() - start)
    encoder(pixels)  # outside the context: not timed
    assert {name: len(times) for name, times in clock.times.items()} == {"vae": 2, "unet": 2}
    for i, call in enumerate(calls):
        assert clock.times["vae"][i] > 0 and clock.times["unet"][i] > 0
        assert clock.times["vae"][i] + clock.times["unet"][i] < call
    assert not clock.handles and not unet.conv_in._forward_pre_hooks and not unet.down_blocks[-1]._forward_hooks
    assert set(clock.medians()) == {"vae", "unet"}
