"""The main job, `scripts/demo.py` (what `make demo` runs), end to end at a small size: the demo world, the feature
cache under torchrun, training through scripts/pretrain.py, scoring on both held-out splits, the report and infer.py.
A short DyVA run must learn above chance on the single-image split."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_demo_script():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_demo_run_learns_above_chance_on_single_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    demo = load_demo_script()
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--data_dir", str(tmp_path / "data"), "--steps", "400", "--train_scenes", "800",
            "--train_clips", "100", "--eval_scenes", "90", "--eval_clips", "30", "--models", "dyva"]  # fmt: skip
    summary = demo.main(argv)

    single, chance = summary["models"]["dyva"]["mean_single-image"], summary["chance_single-image"]
    assert single >= chance + 0.2, summary  # chance is 31.7%
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss.png"):
        assert (out / "dyva" / name).is_file(), name
    rows = [json.loads(line) for line in (out / "dyva" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((out / "results.json").read_text())["models"]["dyva"]["mean_single-image"] == single
    printed = capsys.readouterr().out
    assert "| count | 25.0 |" in printed and "single-image mean" in printed
    assert "[infer rocket] A:" in printed and "[infer eval-motion-" in printed
    # A rerun reuses the data, the feature cache and the finished run: no step is trained again.
    again = demo.main(argv)
    assert again["models"] == summary["models"]
    assert len((out / "dyva" / "metrics.jsonl").read_text().splitlines()) == 400
