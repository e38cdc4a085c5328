"""The world model's autoencoder phase (prismatic/world_model/autoencoder.py, `--autoencoder_steps`) on the toy
moving-squares clips: it lowers the reconstruction loss, sets the scaling factor to 1 / std of the posterior latents
(checked against a direct computation), leaves the VAE alone during the U-Net phase, is exported with the world
model, and is loaded, not trained again, by a `--resume auto` run, which stays bit-exact."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_world_model_training import FRAMES, SIZE, config, losses, train, write_toy_clips

from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components
from prismatic.training.metrics import read_metrics
from prismatic.util.distributed import DistributedContext
from prismatic.world_model import autoencoder
from prismatic.world_model.autoencoder import (
    AUTOENCODER_DIR,
    METRICS_FILE,
    SCALE_BATCHES,
    STATE_FILE,
    AutoencoderOptions,
    flatten_frames,
    latent_std,
    prepare_autoencoder,
    set_scaling_factor,
    train_autoencoder,
)
from prismatic.world_model.batches import ClipsWithFps, collate_clips
from prismatic.world_model.clips import ClipDataset

CPU = torch.device("cpu")
AE_OPTIONS = {"autoencoder_steps": 4, "autoencoder_learning_rate": 3e-3, "max_steps": 2, "val_every": 2}
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def clips(manifest: Path) -> ClipsWithFps:
    dataset = ClipDataset(manifest, num_frames=FRAMES, image_size=SIZE, split="train", val_fraction=0.25)
    return ClipsWithFps(dataset, 8)


@pytest.fixture(scope="module")
def ae_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(config(manifest, tmp_path_factory.mktemp("runs"), "ae", num_samples=1, sample_steps=2, **AE_OPTIONS))


def mode_reconstruction_l1(vae: torch.nn.Module, frames: torch.Tensor) -> float:
    with torch.no_grad():
        pixels = flatten_frames(frames, CPU)
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=frames.shape[1]).sample
    return float((decoded - pixels).abs().mean())


def test_autoencoder_phase_lowers_the_reconstruction_loss(clips: ClipsWithFps) -> None:
    vae = build_tiny_svd_components(3, SIZE).vae
    frames = collate_clips([clips[i] for i in range(len(clips))])["frames"]
    before = mode_reconstruction_l1(vae, frames)
    rows = train_autoencoder(vae, clips, AutoencoderOptions(20, 3e-3, 1e-6, 2, 3), CPU, show_progress=False)
    after = mode_reconstruction_l1(vae, frames)
    assert [row["step"] for row in rows] == list(range(1, 21))
    assert after < 0.7 * before, (before, after)
    assert rows[-1]["recon_l1"] < rows[0]["recon_l1"]
    assert not any(parameter.requires_grad for parameter in vae.parameters()) and not vae.training


@pytest.mark.parametrize("sample", [True, False])
def test_scaling_factor_is_one_over_the_latent_std(clips: ClipsWithFps, sample: bool) -> None:
    vae, batch_size, seed = build_tiny_svd_components(3, SIZE).vae, 2, 5
    std = latent_std(vae, clips, batch_size, seed, sample, CPU)
    # Directly: the frames of the first SCALE_BATCHES x batch_size clips, posterior mean (+ std x N(0, 1) drawn batch
    # after batch from one generator), std over every element.
    count = min(len(clips), SCALE_BATCHES * batch_size)
    generator, latents = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            frames = torch.stack([clips[i]["frames"] for i in range(start, min(start + batch_size, count))])
            pixels = frames.flatten(0, 1).float() / 127.5 - 1.0
            posterior = vae.encode(pixels).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator) if sample else 0.0
            latents.append((posterior.mean + posterior.std * noise).flatten())
    expected = torch.cat(latents).double().std().item()
    assert std == pytest.approx(expected, rel=1e-5)
    factor = set_scaling_factor(vae, std)
    assert vae.config.scaling_factor == factor == pytest.approx(1.0 / expected, rel=1e-5)


def test_the_u_net_phase_leaves_the_trained_vae_alone_and_exports_it(ae_run: Path) -> None:
    from diffusers import StableVideoDiffusionPipeline

    saved = ae_run / AUTOENCODER_DIR
    state = json.loads((saved / STATE_FILE).read_text())
    assert [row["step"] for row in read_metrics(saved / METRICS_FILE)] == [1, 2, 3, 4]
    assert state["scaling_factor"] == pytest.approx(1.0 / state["latent_std"]) and state["scaling_factor"] != 0.18215
    assert [row["step"] for row in read_metrics(ae_run / "metrics.jsonl")] == [1, 2]  # the U-Net's steps only

    exported = ae_run / "world_model"
    trained, final = load_file(saved / VAE_WEIGHTS), load_file(exported / "vae" / VAE_WEIGHTS)
    assert trained.keys() == final.keys() and all(torch.equal(trained[k], final[k]) for k in trained)
    initial = build_tiny_svd_components(3, SIZE)
    assert any(not torch.equal(value, trained[name]) for name, value in initial.vae.state_dict().items())

    pipeline = StableVideoDiffusionPipeline.from_pretrained(str(exported))
    assert pipeline.vae.config.scaling_factor == state["scaling_factor"]
    unet = pipeline.unet.state_dict()
    assert any(not torch.equal(value, unet[name]) for name, value in initial.unet.state_dict().items())
    assert (ae_run / "samples" / "samples.png").is_file()


def test_resume_auto_loads_the_autoencoder_and_stays_bit_exact(manifest: Path, ae_run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    stopped = train(config(manifest, tmp_path, "split", stop_after_step=1, num_samples=0, **AE_OPTIONS))
    saved = stopped / AUTOENCODER_DIR
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in saved.iterdir()}

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the autoencoder was trained again on resume")

    monkeypatch.setattr(autoencoder, "train_autoencoder", must_not_train)
    resumed = train(config(manifest, tmp_path, "split", resume="auto", num_samples=0, **AE_OPTIONS))
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in saved.iterdir()} == before
    assert losses(resumed) == losses(ae_run)  # bit-exact: the same VAE, loaded instead of trained
    trained, final = load_file(saved / VAE_WEIGHTS), load_file(resumed / "world_model" / "vae" / VAE_WEIGHTS)
    assert all(torch.equal(trained[k], final[k]) for k in trained)


def test_a_saved_autoencoder_needs_the_same_options(clips: ClipsWithFps, ae_run: Path) -> None:
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=CPU)
    vae = build_tiny_svd_components(3, SIZE).vae
    with pytest.raises(ValueError, match="--autoencoder_steps"):
        prepare_autoencoder(vae, clips, AutoencoderOptions(0, 3e-3, 1e-6, 2, 3), ae_run, ctx)
    with pytest.raises(ValueError, match="original autoencoder options"):
        prepare_autoencoder(vae, clips, AutoencoderOptions(5, 3e-3, 1e-6, 2, 3), ae_run, ctx)


def test_decoder_only_keeps_the_latent_space_and_the_u_net_training_exact(manifest: Path, tmp_path: Path) -> None:
    """`--autoencoder_train_encoder false`: only the decoder trains; the encoder, the scaling factor, the U-Net's
    per-step losses and its exported weights equal a run without the phase, bit for bit (what the demo relies on:
    its world model's features are those of the U-Net trained on the random encoder's latents)."""
    common = {"max_steps": 2, "val_every": 2, "num_samples": 0}
    plain = train(config(manifest, tmp_path, "plain", **common))
    decoder = train(config(manifest, tmp_path, "decoder", autoencoder_steps=4, autoencoder_learning_rate=3e-3,
                           autoencoder_train_encoder=False, autoencoder_batch_size=1, **common))  # fmt: skip
    assert losses(decoder) == losses(plain)
    state = json.loads((decoder / AUTOENCODER_DIR / STATE_FILE).read_text())
    assert state["settings"]["train_encoder"] is False and state["settings"]["batch_size"] == 1
    before, after = load_file(plain / "world_model" / "vae" / VAE_WEIGHTS), load_file(decoder / "world_model" / "vae" /
                                                                                      VAE_WEIGHTS)  # fmt: skip
    encoder_side = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert encoder_side and all(torch.equal(before[k], after[k]) for k in encoder_side)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    unet_before = load_file(plain / "world_model" / "unet" / VAE_WEIGHTS)
    unet_after = load_file(decoder / "world_model" / "unet" / VAE_WEIGHTS)
    assert all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    configs = [json.loads((run / "world_model" / "vae" / "config.json").read_text()) for run in (plain, decoder)]
    assert configs[0]["scaling_factor"] == configs[1]["scaling_factor"] == state["scaling_factor"]
