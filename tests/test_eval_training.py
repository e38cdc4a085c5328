"""Held-out evaluation during training (`--eval_every`): the harness's metrics land in metrics.jsonl as eval/* at the
chosen steps and at the end, equal what the harness computes on the exported model, and leave training untouched
(bit-identical losses); under 2-process FSDP2 (greedy generation with synced ranks) they equal one process."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import write_vsr_raw
from helpers import TINY_RUN_ID, TINY_RUN_PEAK_FLOPS, TINY_RUN_STEPS, metric, metric_rows, run_pretrain, small_run_args

from prismatic.demo import build_demo_dataset
from prismatic.eval.benchmarks.demo_world import DemoWorld
from prismatic.eval.benchmarks.vsr import VSR
from prismatic.eval.harness import evaluate_in_memory

QUIET = {"log": lambda _: None}


def eval_flags(benchmark: str, data_root: Path, every: int = 3, max_items: int = 6) -> list[str]:
    return ["--eval_every", str(every), "--eval_benchmark", benchmark, "--eval_data_root", str(data_root),
            "--eval_max_items", str(max_items), "--eval_batch_size", "4"]  # fmt: skip


def test_eval_every_logs_harness_metrics_and_leaves_training_unchanged(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    eval_root = tmp_path / "eval-data"
    write_vsr_raw(eval_root, count=9)
    VSR(strict_counts=False).prepare(eval_root, **QUIET)
    args = small_run_args(tiny_data_root, tmp_path, TINY_RUN_ID, TINY_RUN_STEPS, "--peak_flops",
                          str(TINY_RUN_PEAK_FLOPS), *eval_flags("vsr", eval_root, every=4))  # fmt: skip
    run_pretrain(args)
    run_dir = tmp_path / TINY_RUN_ID
    assert metric(run_dir) == metric(tiny_run_dir)  # evaluating changed nothing in training
    rows = metric_rows(run_dir)
    key = "eval/accuracy__VSR-ExactMatch"
    assert [row["step"] for row in rows if key in row] == [4, 6]  # every 4 steps, and at the end
    from prismatic import load

    expected = evaluate_in_memory(load(run_dir), VSR(), eval_root, batch_size=4, max_items=6)
    assert rows[-1][key] == pytest.approx(expected["accuracy__VSR-ExactMatch"])
    assert rows[-1]["eval/auroc__VSR"] == pytest.approx(expected["auroc__VSR"], abs=1e-6)


def test_eval_every_needs_a_prepared_benchmark(tiny_data_root: Path, tmp_path: Path) -> None:
    from helpers import launch_pretrain

    args = small_run_args(tiny_data_root, tmp_path, "no-eval-data", 2, *eval_flags("vsr", tmp_path / "nowhere"))
    result = launch_pretrain(args)
    assert result.returncode != 0 and "prepare_benchmarks.py --benchmarks vsr" in result.stderr


@pytest.mark.slow
def test_eval_every_under_fsdp2_equals_one_process(tiny_data_root: Path, tmp_path: Path) -> None:
    demo = build_demo_dataset(tmp_path / "demo", seed=0, num_train_scenes=4, num_train_clips=4, num_eval_scenes=6,
                              num_eval_clips=6)  # fmt: skip
    eval_root = tmp_path / "eval-data"
    DemoWorld().prepare(eval_root, raw_dir=demo.root, **QUIET)
    flags = [*eval_flags("demo-world", eval_root, every=3, max_items=8), "--model.finetune_train_strategy",
             "fsdp-full-shard"]  # fmt: skip
    run_pretrain(small_run_args(tiny_data_root, tmp_path, "one", 6, *flags))
    run_pretrain(small_run_args(tiny_data_root, tmp_path, "two", 6, *flags), nproc=2)
    one, two = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 1e-5
    for step in (3, 6):
        evaluated = {k: v for k, v in one[step - 1].items() if k.startswith("eval/accuracy")}
        assert evaluated and evaluated == {k: two[step - 1][k] for k in evaluated}
