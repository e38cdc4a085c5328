"""Untrusted inputs stay inert: a released `.pt`, a checkpoint directory, or a YAML config from someone else never
runs code when read, and the Hugging Face token never reaches the run directory, the logs or the trackers.

Each attack writes a marker file if its code runs; the tests check the loaders refuse the input with a clear error
and the marker never appears. (A control shows each malicious file really would run code under a naive loader.)
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import draccus
import pytest
import torch
from helpers import launch_pretrain, small_run_args, write_llava_dataset

from prismatic.conf.pretrain import PretrainConfig

if TYPE_CHECKING:
    from prismatic.training.checkpointing import CheckpointManager
    from prismatic.training.strategies.base import TrainingStrategy
    from prismatic.util.distributed import DistributedContext

    Tiny = tuple[TrainingStrategy, DistributedContext]

SECRET = "hf_UNTRUSTED_TEST_SECRET_0123456789abcdef"


class RunsCode:
    """Unpickling this object runs a shell command that creates `marker` (a module-level class, so it pickles)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# === A released-layout `.pt` ===
def _released_layout(root: Path, payload: object) -> Path:
    """<root>/config.json + <root>/checkpoints/latest-checkpoint.pt holding `payload` (the authors' layout)."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": {"model_id": "prism_siglip+tiny"}}))
    torch.save(payload, root / "checkpoints" / "latest-checkpoint.pt")
    return root


@pytest.mark.parametrize("where", ["whole file", "inside the weights"])
def test_a_released_checkpoint_whose_pickle_runs_code_is_refused(tmp_path: Path, where: str) -> None:
    from prismatic import load

    marker = tmp_path / "pwned"
    evil = RunsCode(marker)
    payload = evil if where == "whole file" else {"model": {"projector": {"w": torch.zeros(2)}, "llm_backbone": evil}}
    release = _released_layout(tmp_path / "release", payload)
    checkpoint = release / "checkpoints" / "latest-checkpoint.pt"

    with pytest.raises(ValueError, match="not a plain tensor checkpoint") as raised:
        load(release)
    assert str(checkpoint) in str(raised.value)
    assert not marker.exists()

    # Control: a naive torch.load would have run the command.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


# === A training checkpoint (--resume) ===
@pytest.fixture(scope="module")
def tiny_strategy() -> Tiny:
    """A tiny single-device strategy (prism_siglip+tiny, random weights, no download) with its optimizer built."""
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config
    from prismatic.models.stages import Stage
    from prismatic.training.options import Precision
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    cfg = get_model_config("prism_siglip+tiny")
    vlm = build_vlm(cfg, stage=Stage.FINETUNE)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization(Stage.FINETUNE), Precision(mixed=False),
                                  enable_gradient_checkpointing=False, total_steps=4)  # fmt: skip
    strategy.setup()
    return strategy, ctx


def _saved_checkpoint(tiny_strategy: Tiny, run_dir: Path) -> tuple[CheckpointManager, Path]:
    from prismatic.training.checkpointing import CheckpointManager

    strategy, ctx = tiny_strategy
    manager = CheckpointManager(run_dir, ctx)
    return manager, manager.save(strategy, step=1, epoch=0, sampler_state={"epoch": 0, "consumed_samples": 4})


def test_resume_never_opens_other_files_in_a_checkpoint(tiny_strategy: Tiny, tmp_path: Path) -> None:
    manager, checkpoint = _saved_checkpoint(tiny_strategy, tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker), checkpoint / "model.pt")  # dropped next to the DCP shards
    (checkpoint / "optimizer.pkl").write_bytes(pickle.dumps(RunsCode(marker)))

    assert manager.resolve_resume("auto") == checkpoint
    state = manager.load(checkpoint, tiny_strategy[0])
    assert state.step == 1
    assert not marker.exists()


def test_resume_refuses_dcp_metadata_that_would_run_code(tiny_strategy: Tiny, tmp_path: Path) -> None:
    manager, checkpoint = _saved_checkpoint(tiny_strategy, tmp_path / "run")
    marker = tmp_path / "pwned"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))

    with pytest.raises(ValueError, match="not the metadata of a plain tensor checkpoint") as raised:
        manager.load(checkpoint, tiny_strategy[0])
    assert str(checkpoint / ".metadata") in str(raised.value) and "os" in str(raised.value)
    assert not marker.exists()
    # Control: DCP's own reader (a plain pickle.load) would have run the command.
    pickle.loads((checkpoint / ".metadata").read_bytes())
    assert marker.exists()


def test_resume_refuses_dcp_metadata_with_a_pickled_object_entry(tiny_strategy: Tiny, tmp_path: Path) -> None:
    # DCP loads a "bytes" entry with torch.load(weights_only=False): an arbitrary pickle in the shards.
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from prismatic.training.checkpointing import check_dcp_metadata

    manager, checkpoint = _saved_checkpoint(tiny_strategy, tmp_path / "run")
    check_dcp_metadata(checkpoint)  # a checkpoint we wrote passes
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # ours: safe to read in the test
    key = next(iter(metadata.state_dict_metadata))
    metadata.state_dict_metadata[key] = BytesStorageMetadata()
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))

    with pytest.raises(ValueError, match="pickled objects, not tensors"):
        manager.load(checkpoint, tiny_strategy[0])


# === A YAML config (--config_path) ===
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system"])  # fmt: skip
def test_a_yaml_config_with_python_tags_is_refused(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"run_id: {tag} [{json.dumps('touch ' + str(marker))}]\nseed: 3\n")
    with pytest.raises(draccus.utils.ParsingError) as raised:
        draccus.parse(PretrainConfig, config_path=str(config), args=[])
    assert str(config) in str(raised.value) and "could not determine a constructor" in str(raised.value.__cause__)
    assert not marker.exists()


def test_a_plain_yaml_config_still_parses_with_includes(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("run_id: from-include\nseed: 11\n")
    (tmp_path / "main.yaml").write_text("<<: !include run.yaml\nstage: align\n")
    cfg = draccus.parse(PretrainConfig, config_path=str(tmp_path / "main.yaml"), args=[])
    assert (cfg.run_id, cfg.seed, str(cfg.stage)) == ("from-include", 11, "align")


# === The Hugging Face token ===
def test_the_token_never_reaches_the_run_directory_logs_or_trackers(tmp_path: Path) -> None:
    data = write_llava_dataset(tmp_path / "data")
    args = small_run_args(data, tmp_path / "runs", "secret-run", 2, "--hf_token", "MY_HF_TOKEN", "--save_interval",
                          "1", "--wandb_project", "p", model_type="prism_siglip+tiny")  # fmt: skip
    result = launch_pretrain(args, env={"HF_TOKEN": SECRET, "MY_HF_TOKEN": SECRET})
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "runs" / "secret-run"
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    assert {"config.yaml", "config.json", "metrics.jsonl", "model.safetensors"} <= {path.name for path in files}
    assert any("wandb" in path.parts for path in files)  # the tracker's offline files are scanned too
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert json.loads((run_dir / "config.json").read_text())["hf_token"] == "MY_HF_TOKEN"  # the name only

    # The token pasted as the flag's value is refused before anything is written, and never echoed.
    pasted = launch_pretrain(small_run_args(data, tmp_path / "runs", "pasted", 2, "--hf_token", SECRET,
                                            model_type="prism_siglip+tiny"))  # fmt: skip
    assert pasted.returncode != 0 and "looks like a token itself" in pasted.stderr
    assert SECRET not in pasted.stdout and SECRET not in pasted.stderr
    assert not (tmp_path / "runs" / "pasted").exists()
