"""User errors at the entry points (prismatic/util/cli.py): `error: <message>` on stderr, exit status 2 and no
traceback, for each class of user error (a bad flag value, a missing or malformed input, bad data under the error
policy); `DYVA_DEBUG=1` or `--debug` adds the traceback (status still 2); an internal error keeps its traceback and
another status.

A few cases run the real scripts in a subprocess (what a user sees, interpreter and all); the rest call the scripts'
`main(argv)` through `run_cli` in this process, the same code path without the start-up cost.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import REPO, data_args, write_llava_dataset

from prismatic.util.cli import UserError, run_cli, user_errors

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
TINY = ["--model.type", "dyva_siglip+tiny", "--num_frames", "2", "--num_workers", "0",
        "--model.finetune_global_batch_size", "4", "--model.finetune_per_device_batch_size", "2"]  # fmt: skip


# === Helpers ===
def load_script(relative: str) -> ModuleType:
    """A script as a module (registered in sys.modules: draccus and dataclasses look their module up there)."""
    name = "user_errors_" + Path(relative).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, offline, without a DYVA_DEBUG of the caller's, plus `extra`."""
    inherited = {key: value for key, value in os.environ.items() if key != "DYVA_DEBUG"}
    return {**inherited, **OFFLINE, **(extra or {})}


def run_script(relative: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python <script> args...` from the repository root, offline; finished, whatever its exit status."""
    return subprocess.run([sys.executable, str(REPO / relative), *args], cwd=REPO, env=child_env(env),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def call_main(main: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[Any, str]:
    """`run_cli(main, argv)` in this process: its exit status and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def assert_user_error(status: Any, stderr: str, *needles: str, traceback: bool = False) -> None:
    """Status 2, a line `error: ...` holding every needle (its message may run over the next lines), and a traceback
    only when asked for."""
    assert status == 2, stderr[-3000:]
    assert ("Traceback" in stderr) is traceback, stderr[-3000:]
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert starts, stderr[-3000:]
    message = "\n".join(lines[starts[-1] :])
    for needle in needles:
        assert needle in message, stderr[-3000:]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYVA_DEBUG", raising=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llava_dataset(tmp_path_factory.mktemp("user-errors-data"))


# === run_cli itself ===
def test_run_cli_reports_user_errors_and_passes_everything_else(capsys, monkeypatch) -> None:
    def fails(argv: list[str]) -> None:
        with user_errors():
            raise FileNotFoundError(f"no such file {argv[0]}")

    status, err = call_main(fails, ["x.json", "--debug"], capsys)
    assert_user_error(status, err, "no such file x.json", traceback=True)  # --debug: traceback, then the line
    assert err.rstrip().splitlines()[-1] == "error: no such file x.json"
    status, err = call_main(fails, ["x.json"], capsys)
    assert_user_error(status, err, "no such file x.json")

    def bug(argv: list[str]) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # propagates unchanged: Python prints it, status 1
        run_cli(bug, [])

    def usage(argv: list[str]) -> None:
        raise SystemExit(2)  # argparse's own usage errors

    with pytest.raises(SystemExit) as exit_info:
        run_cli(usage, [])
    assert exit_info.value.code == 2

    monkeypatch.setattr(sys, "argv", ["prog", "--debug", "a"])
    assert run_cli(lambda argv: argv) == ["a"] and sys.argv == ["prog", "a"]  # removed before the script parses


def test_user_errors_converts_only_user_error_types() -> None:
    with pytest.raises(UserError, match="bad value") as info, user_errors():
        raise ValueError("bad value")
    assert isinstance(info.value.__cause__, ValueError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError), user_errors():
        raise KeyError("internal")
    with pytest.raises(UserError, match="unreadable"), user_errors(TypeError):
        raise TypeError("unreadable")


# === pretrain.py ===
def test_pretrain_negative_learning_rate(tmp_path: Path, data_root: Path) -> None:
    """The issue's example, as a user runs it: no traceback, status 2, nothing written."""
    args = [*TINY, *data_args(data_root), "--run_root_dir", str(tmp_path), "--model.finetune_learning_rate", "-1"]
    result = run_script("scripts/pretrain.py", *args)
    assert_user_error(result.returncode, result.stderr, "--model.finetune_learning_rate", "> 0")
    assert not any(tmp_path.iterdir())


def test_pretrain_debug_flag_and_env_show_the_traceback(tmp_path: Path, data_root: Path, capsys, monkeypatch) -> None:
    pretrain = load_script("scripts/pretrain.py")
    args = [*TINY, *data_args(data_root), "--run_root_dir", str(tmp_path), "--model.finetune_learning_rate", "-1"]
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--debug", *args])  # as typed: run_cli reads sys.argv
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pretrain.main)
    assert_user_error(exit_info.value.code, capsys.readouterr().err, "finetune_learning_rate", traceback=True)
    monkeypatch.setenv("DYVA_DEBUG", "1")
    status, err = call_main(pretrain.main, args, capsys)
    assert_user_error(status, err, "finetune_learning_rate", traceback=True)


def test_pretrain_missing_dataset_file(tmp_path: Path, capsys) -> None:
    pretrain = load_script("scripts/pretrain.py")
    argv = [*TINY, *data_args(tmp_path / "nowhere"), "--run_root_dir", str(tmp_path / "runs")]
    status, err = call_main(pretrain.main, argv, capsys)
    assert_user_error(status, err, "finetune.json not found", "scripts/preprocess.py")


def test_pretrain_bad_resume_fails_before_anything_is_written(tmp_path: Path, data_root: Path, capsys) -> None:
    pretrain = load_script("scripts/pretrain.py")
    argv = [*TINY, *data_args(data_root), "--run_root_dir", str(tmp_path / "runs"), "--run_id", "r",
            "--resume", str(tmp_path / "no-such-run")]  # fmt: skip
    status, err = call_main(pretrain.main, argv, capsys)
    assert_user_error(status, err, "--resume", "no such checkpoint or run directory")
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [("model:\n  type: [dyva_siglip+tiny\n", "while parsing"), ("seed: not-a-number\n", "seed")],
    ids=["malformed-yaml", "wrong-type"],
)
def test_pretrain_bad_config_file(tmp_path: Path, capsys, text: str, needle: str) -> None:
    pretrain = load_script("scripts/pretrain.py")
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    status, err = call_main(pretrain.main, ["--config_path", str(config)], capsys)
    assert_user_error(status, err, needle)
    status, err = call_main(pretrain.main, ["--config_path", str(tmp_path / "missing.yaml")], capsys)
    assert_user_error(status, err, "missing.yaml")


def test_pretrain_missing_local_weights_dir(tmp_path: Path, data_root: Path, capsys) -> None:
    """Caught by the config's validation (a missing SVD directory) or by the model build (a static-encoder directory
    without timm's files)."""
    pretrain = load_script("scripts/pretrain.py")
    common = [*TINY, *data_args(data_root), "--run_root_dir", str(tmp_path / "runs")]
    status, err = call_main(pretrain.main, [*common, "--model.svd_model_id", str(tmp_path / "no-world-model")], capsys)
    assert_user_error(status, err, "no-world-model", "is not a local directory")
    (tmp_path / "empty-vit").mkdir()
    status, err = call_main(pretrain.main, [*common, "--model.vision_pretrained_path", str(tmp_path / "empty-vit")],
                            capsys)  # fmt: skip
    assert_user_error(status, err, "empty-vit has no config.json")


def test_pretrain_preflight_bad_samples_under_the_error_policy(tmp_path: Path, capsys) -> None:
    root = write_llava_dataset(tmp_path / "data", num_images=4, num_text=4)
    (root / "images" / "2.png").unlink()
    pretrain = load_script("scripts/pretrain.py")
    argv = [*TINY, *data_args(root), "--run_root_dir", str(tmp_path / "runs"), "--on_bad_sample", "error"]
    status, err = call_main(pretrain.main, argv, capsys)
    assert_user_error(status, err, "2.png", "missing-image", "on_bad_sample=skip")


def test_an_internal_error_in_training_keeps_its_traceback(tmp_path: Path, data_root: Path) -> None:
    """A ValueError raised by the training loop is a bug, not a user error: traceback, status 1, no `error:` line."""
    probe = (
        "import runpy, sys\n"
        "from prismatic.training.trainer import Trainer\n"
        "def broken(self, start_step):\n"
        "    raise ValueError('a bug deep in training')\n"
        "Trainer.run = broken\n"
        f"sys.argv = {['pretrain.py', *TINY, *data_args(data_root), '--run_root_dir', str(tmp_path)]!r}\n"
        f"runpy.run_path({str(REPO / 'scripts' / 'pretrain.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=child_env(), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr and "ValueError: a bug deep in training" in result.stderr
    assert not any(line.startswith("error: ") for line in result.stderr.splitlines())


# === cache_features.py ===
def test_cache_features_without_a_cache_dir(data_root: Path) -> None:
    result = run_script("scripts/cache_features.py", *TINY, *data_args(data_root))
    assert_user_error(result.returncode, result.stderr, "--feature_cache_dir")


# === preprocess.py ===
def test_preprocess_missing_inputs(tmp_path: Path, capsys) -> None:
    result = run_script("scripts/preprocess.py", "--dataset", "llava-custom", "--image-dir", str(tmp_path),
                        "--finetune-json", str(tmp_path / "missing.json"))  # fmt: skip
    assert_user_error(result.returncode, result.stderr, "--finetune-json", "missing.json")

    preprocess = load_script("scripts/preprocess.py")
    status, err = call_main(preprocess.main, ["--dataset", "llava-custom"], capsys)
    assert_user_error(status, err, "--image-dir")
    (tmp_path / "coco").mkdir()
    argv = ["--root", str(tmp_path / "data"), "--stage", "finetune", "--coco", str(tmp_path / "coco")]
    status, err = call_main(preprocess.main, argv, capsys)
    assert_user_error(status, err, "holds no 'train2017' folder")
    argv = ["--root", str(tmp_path / "data"), "--stage", "finetune", "--finetune-json", str(tmp_path / "none.json")]
    status, err = call_main(preprocess.main, argv, capsys)
    assert_user_error(status, err, "none.json does not exist")


# === evaluate.py ===
def test_evaluate_unknown_benchmark_missing_data_and_model(tmp_path: Path, capsys) -> None:
    evaluate = load_script("scripts/evaluate.py")
    status, err = call_main(evaluate.main, ["--model", "m", "--benchmarks", "nope", "--data_root", str(tmp_path)],
                            capsys)  # fmt: skip
    assert_user_error(status, err, "Unknown benchmark", "nope")
    status, err = call_main(evaluate.main, ["--model", "m", "--benchmarks", "vsr", "--data_root", str(tmp_path)],
                            capsys)  # fmt: skip
    assert_user_error(status, err, "prepare_benchmarks.py --benchmarks vsr")
    status, err = call_main(evaluate.main, ["--rescore", "--model", str(tmp_path / "no-model"), "--benchmarks", "vsr"],
                            capsys)  # fmt: skip
    assert_user_error(status, err, "no-model", "neither a directory nor a released id")


# === infer.py, generate.py ===
def test_infer_missing_model_path(tmp_path: Path) -> None:
    result = run_script("infer.py", "--model", str(tmp_path / "no-run"), "--image", "assets/rocket.png")
    assert_user_error(result.returncode, result.stderr, "no-run", "neither a directory nor a released model id")


def test_infer_and_generate_missing_inputs(tmp_path: Path, capsys, monkeypatch) -> None:
    infer = load_script("infer.py")
    status, err = call_main(infer.main, ["--model", "x", "--image", str(tmp_path / "missing.png")], capsys)
    assert_user_error(status, err, "missing.png")
    generate = load_script("scripts/generate.py")
    status, err = call_main(generate.main, ["--model", str(tmp_path / "no-run")], capsys)
    assert_user_error(status, err, "no-run")
    (tmp_path / "not-an-image.png").write_text("text")
    status, err = call_main(generate.main, ["--model", "x", "--image", str(tmp_path / "not-an-image.png")], capsys)
    assert_user_error(status, err, "not-an-image.png")


# === demo.py ===
def test_demo_bad_flag_values(tmp_path: Path, capsys) -> None:
    result = run_script("scripts/demo.py", "--out", str(tmp_path / "out"), "--num_world_clips", "-5")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: --num_world_clips must be >= 0" in result.stderr  # argparse's usage error: `demo.py: error: ...`
    assert not (tmp_path / "out").exists()

    demo = load_script("scripts/demo.py")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone else's")
    argv = ["--out", str(tmp_path / "out"), "--data_dir", str(taken), "--models", "siglip"]
    status, err = call_main(demo.main, argv, capsys)
    assert_user_error(status, err, "is not empty")
