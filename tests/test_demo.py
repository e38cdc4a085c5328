"""The main job, `scripts/demo.py` (what `make demo` runs), end to end at a tiny size: the falling world, the world
model's pretraining (autoencoder phase, U-Net, export, sample clips), the feature cache under torchrun, three VLMs
through scripts/pretrain.py, scoring through the evaluation harness and the report; a rerun reuses every finished stage;
then the study (`--study`) on the same directory: learning-rate selection on the validation split, sizes x seeds,
tables, the plot. Steps are far too few to learn anything, so no accuracy is asserted, only that every stage ran and
what it wrote."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZES = ["--num_world_clips", "40", "--pool_per_type", "4", "--val_per_type", "2", "--eval_per_type", "2",
         "--steps", "4", "--world_model_steps", "3", "--autoencoder_steps", "3"]  # fmt: skip


def load_demo_script():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def modification_times(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_short_demo_and_study_run_every_stage_and_reruns_reuse_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo = load_demo_script()
    out = tmp_path / "demo"
    argv = ["--out", str(out), *SIZES, "--per_type", "2"]
    summary = demo.main(argv)
    printed = capsys.readouterr().out
    for header in ("1 data", "2 world model", "3 features", "4 train", "5 evaluate", "6 report"):
        assert f"=== {header}" in printed, header

    world = out / "world-model"
    assert (world / "world_model" / "model_index.json").is_file()
    assert (world / "autoencoder").is_dir()
    assert (world / "samples" / "samples.png").is_file() and list((world / "samples").glob("*.gif"))
    assert any("val/loss" in json.loads(line) for line in (world / "metrics.jsonl").read_text().splitlines())

    assert set(summary["models"]) == {"dyva-wm", "dyva-random", "siglip"}
    for run_id in summary["runs"]:
        run = out / "vlm" / run_id
        assert (run / "model.safetensors").is_file(), run_id
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    # The two DyVAs differ only in the SVD stream's weights: the world model's directory, or random ones.
    configs = {r.split("-n")[0]: json.loads((out / "vlm" / r / "config.json").read_text()) for r in summary["runs"]}
    assert configs["dyva-wm"]["model"]["svd_model_id"] == str(world / "world_model")
    assert configs["dyva-random"]["model"]["svd_model_id"] is None

    report = (out / "results.md").read_text()
    for question_type in ("count", "floor-count", "red-stop", "motion-direction", "mean future"):
        assert f"| {question_type} |" in report or f"| **{question_type}** |" in report, question_type
    assert "DyVA + world model %" in report and "SigLIP only %" in report
    assert json.loads((out / "results.json").read_text())["models"] == summary["models"]

    # A rerun trains nothing again: world model, features and runs are reused as they are.
    before = modification_times(out / "vlm") | {f"wm/{k}": v for k, v in modification_times(world).items()}
    again = demo.main(argv)
    assert again["models"] == summary["models"]
    after = modification_times(out / "vlm") | {f"wm/{k}": v for k, v in modification_times(world).items()}
    assert {k: v for k, v in after.items() if k in before} == before

    # The study on the same directory: selection on validation, then sizes x seeds; tables, targets and the plot.
    # (The main job's runs are the study's seed-0 cells: same size, seed and learning rate, so they are reused and only
    # the validation and held-out scoring runs; the statistics over several seeds are tested below, without training.)
    capsys.readouterr()
    result = demo.main(["--out", str(out), *SIZES, "--study", "--sizes", "2", "--seeds", "0", "--lr_grid", "5e-4"])
    assert result["learning_rates"] == {"dyva-wm": 5e-4, "dyva-random": 5e-4, "siglip": 5e-4}
    assert all(len(rows) == 1 for rows in result["scores"].values()) and len(result["scores"]) == 3
    assert {k: v for k, v in modification_times(out / "vlm").items() if k in before} == {
        k: v for k, v in before.items() if not k.startswith("wm/")}  # fmt: skip
    study = (out / "study.md").read_text()
    assert "future (chance 25.0%)" in study and "examples per type" in study
    assert "- future questions, 2 examples per type" in study
    assert (out / "study.png").is_file() and (out / "study-selection.md").is_file()
    assert json.loads((out / "study.json").read_text())["seeds"] == [0]


def test_world_model_config_parses_and_says_how_to_run_it() -> None:
    import draccus

    spec = importlib.util.spec_from_file_location("train_world_model", REPO / "scripts" / "train_world_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = REPO / "configs" / "demo-world-model.yaml"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Run:") and "scripts/train_world_model.py" in lines[0]
    assert any(line.startswith("# Produces:") for line in lines[:6])
    cfg = draccus.parse(module.TrainWorldModelConfig, config_path=str(path), args=["--max_steps", "7"])
    cfg.validate()
    assert (cfg.max_steps, cfg.svd_model_id, cfg.num_frames, cfg.image_size) == (7, "tiny", 4, 64)


def test_legacy_flag_runs_the_earlier_random_encoder_demo() -> None:
    import subprocess

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--legacy", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "usage: demo_random_encoder.py" in result.stdout and "--train_scenes" in result.stdout


def test_study_statistics_and_tables() -> None:
    from prismatic.demo.report import group_scores, study_table, summarize

    stats = summarize([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(0.975, 2 df) = 4.303
    assert (stats.mean, stats.std, stats.n) == (2.0, 1.0, 3)
    assert stats.low == pytest.approx(2 - 4.303 / 3**0.5) and stats.high == pytest.approx(2 + 4.303 / 3**0.5)
    assert summarize([5.0]).cell() == "5.0"
    metrics = {"accuracy__DemoWorld-floor-count": 40.0, "accuracy__DemoWorld-red-stop": 60.0,
               "accuracy__DemoWorld-count": 90.0}  # fmt: skip
    scores = group_scores(metrics)
    assert scores["future"] == 50.0 and scores["static"] == 90.0 and "motion" not in scores
    table = study_table({("dyva-wm", 50): [scores, {**scores, "future": 70.0}]}, {"dyva-wm": "DyVA + WM"}, "future")
    assert "| 50 | 60.0 ± 14.1 [-67.1, 187.1] |" in table and "future (chance 25.0%)" in table
