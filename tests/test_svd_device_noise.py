"""The SVD encoder's device-side content-seeded noise (`SVDEncoderConfig.noise_device`, `--model.svd_noise_device`).

- "cpu" (the default) draws exactly what the encoder always drew (compared with the original algorithm written out
  below), and its feature-cache fingerprint is the one it always had (no new key in the description);
- "device" draws on a generator on the encoder's device (here the CPU: the same new code path), deterministically per
  image, independently of the batch (alone vs in a batch of 3), differently per image; the encoder hands its device
  to the draws, and the feature-cache fingerprint differs from the "cpu" one, so entries are never mixed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.models.backbones.vision import svd, svd_unet
from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_components import SVDComponents, build_tiny_svd_components
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.preprocessing.feature_cache.identity import stream_identities

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE, T = 32, 4


@pytest.fixture(scope="module")
def components() -> SVDComponents:
    return build_tiny_svd_components(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]


def make_encoder(components: SVDComponents, **overrides) -> SVDGenerativeEncoder:
    config = SVDEncoderConfig(model_id=None, image_size=SIZE, num_frames=T, **overrides)
    return SVDGenerativeEncoder("svd-tiny", config, components)


def frames_of(encoder: SVDGenerativeEncoder, samples: list) -> torch.Tensor:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(sample) for sample in samples])["svd"]


def original_draws(images_uint8: torch.Tensor, seed: int, num_frames: int, latent: tuple, feature: tuple) -> list:
    """The draws as the encoder made them before the noise device existed (release mode, K = 1: aug, unet, feat)."""
    generator = torch.Generator(device="cpu").manual_seed(svd_unet.noise_seed(images_uint8, seed))
    aug = torch.randn(tuple(images_uint8.shape), generator=generator, dtype=torch.float32)
    unet = torch.randn((num_frames, *latent), generator=generator)
    feat = torch.randn((num_frames, *feature), generator=generator)
    return [aug, unet, feat]


def test_cpu_noise_is_the_original_draws(components, images) -> None:
    encoder = make_encoder(components)
    frames = frames_of(encoder, images)
    latent = (encoder.latent_channels, encoder.latent_size, encoder.latent_size)
    feature = (encoder.embed_dim, encoder.grid_size, encoder.grid_size)
    for b in range(len(images)):
        noise = encoder.draw_noise(frames[b, :1])
        want = original_draws(frames[b, :1], 0, T, latent, feature)
        for got, expected in zip((noise.aug, noise.unet, noise.feat), want):
            assert got.device.type == "cpu" and got.dtype == expected.dtype and torch.equal(got, expected)


def test_encoder_hands_its_device_to_the_draws_only_for_device_noise(components, images, monkeypatch) -> None:
    seen: list[torch.device | None] = []
    original = svd.draw_noise

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return original(*args, **kwargs)

    monkeypatch.setattr(svd, "draw_noise", spy)
    for noise_device, expected in (("cpu", None), ("device", torch.device("cpu"))):
        seen.clear()
        encoder = make_encoder(components, noise_device=noise_device)
        with torch.no_grad():
            encoder.encode(collate_pixel_values([encoder.get_image_transform()(images[0])]))
        assert seen == [expected], noise_device


def test_device_noise_is_deterministic_per_image_and_batch_invariant(components, images) -> None:
    encoder = make_encoder(components, noise_device="device")
    transform = encoder.get_image_transform()
    with torch.no_grad():
        alone = [encoder.encode(collate_pixel_values([transform(image)])) for image in images]
        again = encoder.encode(collate_pixel_values([transform(images[1])]))
        batched = encoder.encode(collate_pixel_values([transform(image) for image in images]))
    for b, single in enumerate(alone):
        for field in ("aug", "unet", "feat"):
            got = getattr(batched.noise[b], field)
            assert got.device == encoder.unet.device
            assert torch.equal(got, getattr(single.noise[0], field)), (b, field)  # the draws: bitwise
        # The features: batch-size-dependent kernel rounding only, as for the CPU noise.
        torch.testing.assert_close(batched.features[b], single.features[0], rtol=0, atol=2e-5)
    assert torch.equal(again.features, alone[1].features)
    assert all(torch.equal(a, b) for a, b in zip((again.noise[0].aug, again.noise[0].unet),
                                                 (alone[1].noise[0].aug, alone[1].noise[0].unet)))  # fmt: skip
    # Different images, different draws (the seed hashes the pixels).
    assert not torch.equal(alone[0].noise[0].unet, alone[1].noise[0].unet)
    assert not torch.equal(alone[1].noise[0].aug, alone[2].noise[0].aug)


def test_fingerprint_changes_with_device_noise_only(components) -> None:
    cpu = stream_identities(make_encoder(components))["svd"]
    device = stream_identities(make_encoder(components, noise_device="device"))["svd"]
    assert cpu.fingerprint != device.fingerprint
    # The CPU option adds nothing to the description: existing cache directories keep their names.
    assert "noise_device" not in cpu.description["encoder"]["config"]
    assert device.description["encoder"]["config"]["noise_device"] == "device"
    assert stream_identities(make_encoder(components))["svd"].fingerprint == cpu.fingerprint


def test_model_config_maps_and_checks_the_option() -> None:
    from prismatic.conf.models import get_model_config

    cfg = get_model_config("dyva_siglip+tiny")
    assert cfg.svd_noise_device == "cpu" and cfg.svd_encoder_config().noise_device == "cpu"
    cfg.svd_noise_device = "device"
    assert cfg.svd_encoder_config().noise_device == "device"
    with pytest.raises(ValueError, match="noise_device"):
        SVDEncoderConfig(noise_device="gpu")  # type: ignore[arg-type]
