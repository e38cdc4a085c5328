"""The world model's training script end to end on a toy manifest (coloured squares moving one pixel per frame, PNG
frames): metrics and per-sigma validation losses, the exported diffusers directory (loaded by the diffusers pipeline
and by the VLM's SVD encoder), the samples, a bit-exact `--resume auto`, the checkpoint guarantees of the framework
(checksums, a damaged checkpoint skipped, a failed save, unsafe DCP metadata refused), and 2-process FSDP against 1
process."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO
from PIL import Image

from prismatic.training.metrics import read_metrics

SCRIPT = REPO / "scripts" / "train_world_model.py"
SIZE, FRAMES = 16, 3


def script_module():
    """scripts/train_world_model.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_world_model", SCRIPT)
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the config's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def write_toy_clips(root: Path, count: int = 12, length: int = 4) -> Path:
    """`count` clips of a coloured square moving one pixel right per frame; returns the manifest."""
    lines = []
    for clip in range(count):
        colour = (40 + 17 * clip % 200, 200 - 13 * clip % 180, 60 + 29 * clip % 190)
        paths = []
        for t in range(length):
            image = Image.new("RGB", (SIZE, SIZE), (16, 16, 16))
            x, y = 2 + (clip % 5) + t, 3 + clip % 6
            image.paste(colour, (x, y, x + 5, y + 5))
            path = root / f"clip{clip:02d}" / f"{t:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(str(path.relative_to(root)))
        lines.append(json.dumps({"id": f"clip{clip:02d}", "frames": paths, "fps": 8}))
    manifest = root / "clips.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def config(manifest: Path, run_root: Path, run_id: str, **overrides):
    options = {"manifest": manifest, "svd_model_id": "tiny", "num_frames": FRAMES, "image_size": SIZE,
               "val_fraction": 0.25, "max_steps": 4, "global_batch_size": 2, "per_device_batch_size": 2,
               "learning_rate": 1e-3, "warmup_ratio": 0.25, "run_root_dir": run_root, "run_id": run_id, "seed": 3,
               "save_interval": None, "val_every": 2, "val_sigma_bins": 3, "num_samples": 2, "sample_steps": 3,
               **overrides}  # fmt: skip
    return script_module().TrainWorldModelConfig(**options)


def train(cfg) -> Path:
    return script_module().train_world_model(cfg)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def full_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(config(manifest, tmp_path_factory.mktemp("runs"), "full"))


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir / "metrics.jsonl")]


def test_run_writes_metrics_validation_export_and_samples(full_run: Path) -> None:
    rows = read_metrics(full_run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 and row["grad_norm"] > 0 and row["samples_per_s"] > 0 for row in rows)
    validated = [row for row in rows if "val/loss" in row]
    assert [row["step"] for row in validated] == [2, 4]
    bins = [key for key in validated[-1] if key.startswith("val/loss_sigma_")]
    assert len(bins) == 3
    assert validated[-1]["val/loss"] == pytest.approx(sum(validated[-1][k] for k in bins) / 3)
    assert (full_run / "loss.png").is_file()

    samples = full_run / "samples"
    gifs = sorted(samples.glob("*.gif"))
    assert len(gifs) == 2
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == FRAMES and gif.size == (SIZE, SIZE)
    with Image.open(samples / "samples.png") as strip:
        assert strip.size == (SIZE * (FRAMES + 1), SIZE * 2)  # conditioning frame + generated frames per row


def test_export_loads_in_diffusers_and_as_the_vlm_encoder(full_run: Path) -> None:
    from diffusers import StableVideoDiffusionPipeline

    from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
    from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components
    from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
    from prismatic.preprocessing.feature_cache.identity import weights_digest

    model_dir = full_run / "world_model"
    pipeline = StableVideoDiffusionPipeline.from_pretrained(str(model_dir))
    assert pipeline.vae.decoder is not None
    initial = build_tiny_svd_components(3, SIZE).unet.state_dict()
    trained = pipeline.unet.state_dict()
    assert any(not torch.equal(initial[name], trained[name]) for name in initial)  # training changed the U-Net

    encoder = SVDGenerativeEncoder.from_config("svd", SVDEncoderConfig(model_id=str(model_dir), image_size=SIZE, seed=3))
    assert torch.equal(encoder.unet.state_dict()["conv_in.weight"], trained["conv_in.weight"])
    # The feature cache keys streams by cache_description() (no model_id) + a weights digest: a fine-tuned directory
    # never reuses the entries of the model it started from.
    tiny = SVDGenerativeEncoder.from_config("svd", SVDEncoderConfig(model_id=None, image_size=SIZE, seed=3))
    assert encoder.cache_description() == tiny.cache_description()
    assert weights_digest(encoder) != weights_digest(tiny)


def test_resume_auto_is_bit_exact(manifest: Path, full_run: Path, tmp_path: Path) -> None:
    stopped = train(config(manifest, tmp_path, "split", stop_after_step=2, num_samples=0))
    assert losses(stopped) == losses(full_run)[:2]
    assert (stopped / "checkpoints" / "step-000002").is_dir() and not (stopped / "world_model").exists()
    resumed = train(config(manifest, tmp_path, "split", resume="auto", num_samples=0))
    assert losses(resumed) == losses(full_run)  # bit-exact, not approximately
    rows, reference = read_metrics(resumed / "metrics.jsonl"), read_metrics(full_run / "metrics.jsonl")
    assert rows[-1]["val/loss"] == reference[-1]["val/loss"]


def test_checkpoints_carry_checksums_and_a_damaged_one_is_skipped(
    manifest: Path, full_run: Path, tmp_path: Path
) -> None:
    """The framework's checkpoint guarantees hold for the world model: checksums written with every checkpoint,
    `--resume auto` skips a damaged one and resumes bit-exactly from the one before."""
    from prismatic.training import integrity

    stopped = train(config(manifest, tmp_path, "damaged", stop_after_step=2, save_interval=1, num_samples=0))
    step1, step2 = (stopped / "checkpoints" / name for name in ("step-000001", "step-000002"))
    assert integrity.has_checksums(step1) and integrity.has_checksums(step2)
    shard = step2 / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    resumed = train(config(manifest, tmp_path, "damaged", resume="auto", num_samples=0))
    assert losses(resumed) == losses(full_run)  # from step 1: steps 2-4 again, bit-exact


def test_a_failing_save_stops_with_checkpoint_save_error(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second save meets a nearly full disk (torch.save's short-write RuntimeError inside DCP): the partial
    directory is removed, step 1 stays, and the error says what to do."""
    from test_corrupt_state import _shard_fills_the_disk_on_second_save

    from prismatic.training.checkpointing import CheckpointSaveError

    _shard_fills_the_disk_on_second_save(monkeypatch)
    with pytest.raises(CheckpointSaveError, match=r"step 2 .*unexpected pos.*step-000001 \(step 1\) is intact"):
        train(config(manifest, tmp_path, "full", save_interval=1, num_samples=0))
    assert [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()] == ["step-000001"]


def test_resume_refuses_dcp_metadata_that_would_run_code(manifest: Path, tmp_path: Path) -> None:
    """A checkpoint without checksums (as an older or a foreign one would be) whose `.metadata` is a pickle that runs
    a command: refused before DCP unpickles it."""
    import shutil

    from test_untrusted_inputs import RunsCode

    from prismatic.training import integrity

    run_dir = train(config(manifest, tmp_path, "foreign", stop_after_step=1, num_samples=0))
    checkpoint = run_dir / "checkpoints" / "step-000001"
    shutil.rmtree(checkpoint / integrity.CHECKSUMS_DIR, ignore_errors=True)
    marker = tmp_path / "pwned"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(ValueError, match="not the metadata of a plain tensor checkpoint"):
        train(config(manifest, tmp_path, "foreign", resume="auto", num_samples=0))
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "compared_steps", "tolerance", "val_tolerance"), [("fsdp", 1, 1e-5, 1e-4), ("ddp", 3, 1e-6, 1e-6)]
)
def test_two_processes_match_one(
    manifest: Path, tmp_path: Path, strategy: str, compared_steps: int, tolerance: float, val_tolerance: float
) -> None:
    """1 process x 2 micro-batches against 2 processes x 1: the same slots, so the same clips and noise per step.

    DDP is bit-exact here, so all 3 steps are compared. FSDP2 is exact up to float summation order: its backward
    hooks change the order in which autograd sums the gradient contributions where the U-Net's skip connections
    meet (on one rank too: the up blocks' gradients are bit-equal, the differences start in the last down block).
    Some gradients of the tiny random U-Net are pure cancellation noise (per-channel terms before a GroupNorm with
    one channel per group; relative differences up to 2, i.e. opposite signs), and Adam turns each into a full +-lr
    step, so from the second update on the runs are chaotic, not comparable: the step-2 gradient norms were 42.7 vs
    72.5 and the step-3 losses 9e-5 apart at lr 1e-5 on an AMD EPYC (within 1e-5 on an Intel Xeon; not monotone in
    lr). What one update decides is compared for FSDP: step 1 (clips, noise, loss, gradient averaging), the first
    sharded Adam update (the step-2 loss moves 1.8e-3 from lr 0; the runs agree to 1.4e-6) and the validation after
    it (1.2e-5 apart, at fixed sigmas whose bins differ by ~0.05, so a validation over other clips or noise would be
    off by ~1e-2).
    """
    common = ["--manifest", str(manifest), "--svd_model_id", "tiny", "--num_frames", str(FRAMES), "--image_size",
              str(SIZE), "--val_fraction", "0.25", "--max_steps", "3", "--global_batch_size", "2",
              "--per_device_batch_size", "1", "--learning_rate", "1e-5", "--run_root_dir", str(tmp_path), "--seed", "3",
              "--save_interval", "null", "--val_every", "1", "--num_samples", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    single = [sys.executable, str(SCRIPT), *common, "--run_id", "one", "--strategy", "single"]
    subprocess.run(single, check=True, env=env, cwd=REPO, timeout=300, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
                *common, "--run_id", "two", "--strategy", strategy]  # fmt: skip
    subprocess.run(torchrun, check=True, env=env, cwd=REPO, timeout=300, capture_output=True)
    one, two = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("one", "two"))
    assert [row["step"] for row in one] == [row["step"] for row in two] == [1, 2, 3]
    assert two[0]["loss"] == one[0]["loss"]
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-3)  # averaged, not summed (x2)
    compared = slice(0, compared_steps + 1)  # the losses after `compared_steps` updates
    assert [r["loss"] for r in two[compared]] == pytest.approx([r["loss"] for r in one[compared]], abs=tolerance, rel=0)
    val_one, val_two = ([r["val/loss"] for r in rows[:compared_steps]] for rows in (one, two))
    assert val_two == pytest.approx(val_one, abs=val_tolerance, rel=0)
    assert (tmp_path / "two" / "world_model" / "model_index.json").is_file()  # gathered from the shards under FSDP
