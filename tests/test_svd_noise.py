"""The SVD encoder's noise convention for multi-image samples (release mode, cond-slots): the released code encodes
image 1 twice, one encoding with its own noise draw filling all T conditioning slots and a second one (with keyframe
0's draw) in slot 0; single-image samples keep one encoding, bit for bit as before the fill draw existed.

The released computation itself (diffusers' pipeline, K = 1 and K = 3) is compared in test_svd_encoder.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.models.backbones.vision import svd_unet
from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_components import SVDComponents, build_tiny_svd_components
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig

# diffusers' EulerDiscreteScheduler.set_timesteps calls np.array on a torch tensor (a numpy-2 DeprecationWarning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE, T = 32, 8  # tiny: 2x2 tokens per frame slot


@pytest.fixture(scope="module")
def components() -> SVDComponents:
    return build_tiny_svd_components(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (64, 48), (37, 37), (50, 70)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def make_encoder(components: SVDComponents, **overrides) -> SVDGenerativeEncoder:
    return SVDGenerativeEncoder("svd-tiny", SVDEncoderConfig(model_id=None, image_size=SIZE, **overrides), components)


def batch_of(encoder: SVDGenerativeEncoder, samples: list) -> dict[str, torch.Tensor]:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(sample) for sample in samples])


def test_multi_image_fill_is_a_second_encoding_of_image_1_with_its_own_draw(components, images) -> None:
    """Release mode, K = 3 (slots 0, 4, 7): the released code's all-slot fill is image 1 encoded again with its own
    draw, drawn after every other draw; deterministic and batch-invariant like the rest."""
    encoder = make_encoder(components)
    frames = batch_of(encoder, [images[1:4]])["svd"][0]
    noise = encoder.draw_noise(frames)
    latent, grid = (encoder.latent_channels, encoder.latent_size, encoder.latent_size), (64, 2, 2)
    without_fill = svd_unet.draw_noise(frames, 0, T, latent, grid, with_fill=False)  # the draws before the fix
    assert all(torch.equal(getattr(noise, f), getattr(without_fill, f)) for f in ("aug", "unet", "feat"))
    assert noise.fill.shape == (3, SIZE, SIZE) and not torch.equal(noise.fill, noise.aug[0])
    with torch.no_grad():
        alone = encoder.encode({"svd": frames[None]})
        again = encoder.encode({"svd": frames[None]})
        batched = encoder.encode(batch_of(encoder, [images[0], images[1:4]]))
        pixels = svd_unet.to_signed_unit(frames[:1])
        fill = encoder._vae_mode(pixels + 0.02 * noise.fill[None])[0]
        first = encoder._vae_mode(pixels + 0.02 * noise.aug[:1])[0]
    cond = alone.cond_latents[0]
    for slot in (1, 2, 3, 5, 6):  # the fill slots: one encoding, not slot 0's
        assert torch.equal(cond[slot], cond[1])
    # One VAE call for the 4 inputs vs one per input: batch-size-dependent rounding only (measured: max 2.5e-5).
    torch.testing.assert_close(cond[1], fill, rtol=0, atol=1e-4)
    torch.testing.assert_close(cond[0], first, rtol=0, atol=1e-4)
    assert (cond[1] - cond[0]).abs().max() > 1e-3
    assert torch.equal(alone.features, again.features)
    torch.testing.assert_close(batched.features[1], alone.features[0], rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match=r"SVDNoise\.fill"):
        encoder.encode({"svd": frames[None]}, noise=[replace(noise, fill=None)])
    # Paper mode (and the other placements) keep one encoding of image 1: no fill draw.
    assert make_encoder(components, mode="paper", placement="cond-slots").draw_noise(frames).fill is None
    assert make_encoder(components, placement="first").draw_noise(frames).fill is None


def test_single_image_fill_is_the_keyframe_encoding_and_draws_no_extra_noise(components, images) -> None:
    encoder = make_encoder(components)
    frames = batch_of(encoder, [images[0]])["svd"]
    noise = encoder.draw_noise(frames[0])
    assert noise.fill is None
    with torch.no_grad():
        encoding = encoder.encode({"svd": frames})
        # A stray fill draw is ignored with one image: every slot holds the one encoding, with aug[0].
        junk = replace(noise, fill=torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
        with_junk = encoder.encode({"svd": frames}, noise=[junk])
        first = encoder._vae_mode(svd_unet.to_signed_unit(frames[:, 0]) + 0.02 * noise.aug[:1])[0]
    assert all(torch.equal(slot, encoding.cond_latents[0, 0]) for slot in encoding.cond_latents[0])
    assert torch.equal(encoding.cond_latents[0, 0], first)  # the same single-input VAE call
    assert torch.equal(with_junk.features, encoding.features)
