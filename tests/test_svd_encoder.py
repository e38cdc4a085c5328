"""The SVD generative encoder against literal re-computations of the released and paper paths (diffusers' own
pipeline helpers and scheduler), plus its contracts: keyframe slots, truncation, determinism, loading, gradients.

Tiny random components are saved in the real diffusers layout and loaded back through the real code path.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from PIL import Image
from torchvision.transforms import v2

from prismatic.models.backbones.vision import svd_unet
from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_components import (
    build_tiny_svd_components,
    load_svd_components,
    save_svd_components,
)
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.backbones.vision.svd_unet import (
    SVDNoise,
    keyframe_slots,
    resize_with_antialiasing,
)
from prismatic.models.backbones.vision.vae_only import VAEOnlyBackbone

# diffusers' EulerDiscreteScheduler.set_timesteps calls np.array on a torch tensor (a numpy-2 DeprecationWarning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 32  # tiny: latent 16x16, token grid 2x2 per frame
T = 8


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tiny-svd")
    save_svd_components(build_tiny_svd_components(seed=0, image_size=SIZE), directory)
    return str(directory)


@pytest.fixture(scope="module")
def components(svd_dir: str):
    return load_svd_components(svd_dir)


@pytest.fixture(scope="module")
def pipe(svd_dir: str) -> StableVideoDiffusionPipeline:
    """The reference: diffusers' own pipeline, loaded independently of our loading code."""
    return StableVideoDiffusionPipeline.from_pretrained(svd_dir)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (64, 48), (37, 37), (50, 70), (32, 32)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def make_encoder(components, **overrides) -> SVDGenerativeEncoder:
    return SVDGenerativeEncoder("svd-tiny", SVDEncoderConfig(model_id=None, image_size=SIZE, **overrides), components)


def batch_of(encoder: SVDGenerativeEncoder, samples: list) -> dict[str, torch.Tensor]:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(sample) for sample in samples])


def down_hook(unet):
    """Capture the last down block's output (the released feature tap)."""
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0]

    return captured, unet.down_blocks[-1].register_forward_hook(hook)


def to_tokens(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 1, 3, 4, 2).reshape(grid.shape[0], -1, grid.shape[2])


def preprocess(pipe, frame_uint8: torch.Tensor) -> torch.Tensor:
    """The released VAE input: uint8 -> PIL -> the pipeline's video_processor.preprocess (a same-size resize)."""
    pil = Image.fromarray(frame_uint8.permute(1, 2, 0).numpy())
    return pipe.video_processor.preprocess(pil, height=SIZE, width=SIZE)


def clip_embeds(pipe, frame_uint8: torch.Tensor, cfg: bool) -> torch.Tensor:
    image = frame_uint8[None].float() / 255.0 * 2.0 - 1.0
    image = (_resize_with_antialiasing(image, (224, 224)) + 1.0) / 2.0
    return pipe._encode_image(image, "cpu", 1, cfg)


def reference_release(pipe, frames: torch.Tensor, noise: SVDNoise) -> torch.Tensor:
    """Literally what the released code computes for one sample (CFG-doubled batch, full U-Net, scheduler.step)."""
    embeds = clip_embeds(pipe, frames[0], cfg=True)
    latents = [
        pipe._encode_vae_image(preprocess(pipe, frames[k]) + 0.02 * noise.aug[k : k + 1], "cpu", 1, True)
        for k in range(frames.shape[0])
    ]
    # The all-slot fill is image 1: with K > 1 encoded a second time, with its own noise draw.
    fill = latents[0]
    if frames.shape[0] > 1:
        fill = pipe._encode_vae_image(preprocess(pipe, frames[0]) + 0.02 * noise.fill[None], "cpu", 1, True)
    image_latents = fill.unsqueeze(1).repeat(1, T, 1, 1, 1)
    if frames.shape[0] > 1:
        idx = torch.linspace(0, T - 1, frames.shape[0]).round().long()
        for k, slot in enumerate(idx.tolist()):
            image_latents[1, slot] = latents[k][1]  # the cond half; the uncond half stays zeros
    added_time_ids = pipe._get_add_time_ids(7 - 1, 127, 0.02, embeds.dtype, 1, 1, True)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    noisy = noise.unet[None] * scheduler.init_noise_sigma
    model_input = scheduler.scale_model_input(torch.cat([noisy] * 2), t)
    model_input = torch.cat([model_input, image_latents], dim=2)
    captured, handle = down_hook(pipe.unet)
    pipe.unet(model_input, t, encoder_hidden_states=embeds, added_time_ids=added_time_ids, return_dict=False)
    handle.remove()
    down = captured["h"].unflatten(0, (2, T)).chunk(2)[1]
    middle = noise.feat[None] * scheduler.init_noise_sigma
    step = scheduler.step(down, t, middle)
    # prev_sample = s + (s - x0) / sigma * (0 - sigma) equals x0 mathematically (the last sigma is 0), but in float32
    # it carries the rounding of s (|s| up to ~700 * 4): allow a few ulps of s on top of 1e-4.
    ulps = 4 * torch.finfo(torch.float32).eps * middle.abs().max().item()
    return to_tokens(step.prev_sample), to_tokens(step.pred_original_sample), ulps


def test_keyframe_slots() -> None:
    assert keyframe_slots(1, 8) == [0]
    assert keyframe_slots(2, 8) == [0, 7]
    assert keyframe_slots(3, 8) == [0, 4, 7]
    assert keyframe_slots(4, 8) == [0, 2, 5, 7]
    assert keyframe_slots(5, 8) == [0, 2, 4, 5, 7]
    assert keyframe_slots(8, 8) == list(range(8))
    with pytest.raises(ValueError, match="at most 8 images"):
        keyframe_slots(9, 8)


def test_transform_resizes_like_torchvision_and_rejects_too_many_frames(components, images) -> None:
    encoder = make_encoder(components)
    out = encoder.get_image_transform()(images[:3])["svd"]
    assert out.dtype == torch.uint8 and out.shape == (3, 3, SIZE, SIZE)
    reference = v2.Compose([v2.PILToTensor(), v2.Resize((SIZE, SIZE), antialias=True)])
    for k in range(3):
        legacy = torch.from_numpy(np.array(v2.functional.resize(images[k], [SIZE, SIZE]))).permute(2, 0, 1)
        assert torch.equal(out[k], legacy)  # torchvision Resize on PIL = PIL bilinear (antialiased)
        assert (out[k].int() - reference(images[k]).int()).abs().max() <= 1
    with pytest.raises(ValueError, match="at most 8 images"):
        encoder.get_image_transform()([images[0]] * 9)
    with pytest.raises(ValueError, match="at most 8 images"):
        encoder({"svd": torch.zeros(1, 9, 3, SIZE, SIZE, dtype=torch.uint8)})


@pytest.mark.parametrize("shape,size", [((2, 3, 448, 448), (224, 224)), ((1, 3, 64, 96), (224, 224))])
def test_antialiased_resize_matches_the_svd_pipeline(shape, size) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(resize_with_antialiasing(x, size), _resize_with_antialiasing(x, size), rtol=0, atol=1e-6)


def test_release_parity_with_the_released_computation(svd_dir, pipe, images) -> None:
    encoder = SVDGenerativeEncoder.from_config("svd-tiny", SVDEncoderConfig(model_id=svd_dir, image_size=SIZE))
    samples = [images[0], images[1:4]]  # K = 1 and K = 3 (slots 0, 4, 7) in one padded batch
    batch = batch_of(encoder, samples)
    with torch.no_grad():
        encoding = encoder.encode(batch)
        for b, count in enumerate(batch["svd_count"].tolist()):
            prev_sample, denoised, ulps = reference_release(pipe, batch["svd"][b, :count], encoding.noise[b])
            assert (encoding.features[b : b + 1] - denoised).abs().max().item() <= 1e-4
            assert (encoding.features[b : b + 1] - prev_sample).abs().max().item() <= 1e-4 + ulps
    assert encoding.features.shape == (2, T * 2 * 2, 64)


@pytest.mark.parametrize("sigma_index", [0, 12])
def test_paper_parity_with_the_scheduler(svd_dir, pipe, images, sigma_index) -> None:
    config = SVDEncoderConfig(model_id=svd_dir, image_size=SIZE, mode="paper", sigma_index=sigma_index)
    encoder = SVDGenerativeEncoder.from_config("svd-tiny", config)
    frames = batch_of(encoder, [images[:2]])["svd"]
    with torch.no_grad():
        encoding = encoder.encode({"svd": frames})
        noise = encoding.noise[0]
        embeds = clip_embeds(pipe, frames[0, 0], cfg=False)
        cond = pipe._encode_vae_image(preprocess(pipe, frames[0, 0]) + 0.02 * noise.aug[:1], "cpu", 1, False)
        cond = cond.unsqueeze(1).repeat(1, T, 1, 1, 1)
        scale = pipe.vae.config.scaling_factor
        clean = [pipe.vae.encode(preprocess(pipe, frames[0, k])).latent_dist.mode() * scale for k in range(2)]
        z0 = clean[0].unsqueeze(1).repeat(1, T, 1, 1, 1)
        z0[:, T - 1] = clean[1][0]  # z0-slots: image 2 in slot 7
        ids = pipe._get_add_time_ids(6, 127, 0.02, embeds.dtype, 1, 1, False)
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(config.schedule_steps)
        scheduler.set_begin_index(sigma_index)
        t0, t1 = scheduler.timesteps[sigma_index], scheduler.timesteps[sigma_index + 1]
        model_input = torch.cat([scheduler.scale_model_input(z0, t0), cond], dim=2)
        prediction = pipe.unet(model_input, t0, encoder_hidden_states=embeds, added_time_ids=ids).sample
        z1 = scheduler.step(prediction, t0, z0).prev_sample
        captured, handle = down_hook(pipe.unet)
        pipe.unet(torch.cat([scheduler.scale_model_input(z1, t1), cond], dim=2), t1, embeds, ids)
        handle.remove()
    assert (encoding.z0 - z0).abs().max().item() <= 1e-5
    assert (encoding.z1 - z1).abs().max().item() <= 1e-4
    expected = to_tokens(captured["h"].unflatten(0, (1, T)))
    assert (encoding.features - expected).abs().max().item() <= 1e-4


def test_placement_first_ignores_extra_images_and_paper_mode_needs_a_next_sigma(components, images) -> None:
    for mode in ("release", "paper"):
        encoder = make_encoder(components, mode=mode, placement="first")
        frames = batch_of(encoder, [images[:3]])["svd"]
        noise = encoder.draw_noise(frames[0])
        with torch.no_grad():
            three = encoder.encode({"svd": frames}, noise=[noise]).features
            one = encoder.encode({"svd": frames[:, :1]}, noise=[replace(noise, aug=noise.aug[:1])]).features
        assert torch.equal(three, one)
    with pytest.raises(ValueError, match="sigma_index <= schedule_steps - 2"):
        make_encoder(components, mode="paper", sigma_index=24)


def count_calls(unet) -> tuple[dict[str, int], list]:
    calls = {"mid": 0, "up": 0, "out": 0}

    def counter(name):
        def pre_hook(module, args):
            calls[name] += 1

        return pre_hook

    handles = [unet.mid_block.register_forward_pre_hook(counter("mid"))]
    handles += [block.register_forward_pre_hook(counter("up")) for block in unet.up_blocks]
    handles.append(unet.conv_out.register_forward_pre_hook(counter("out")))
    return calls, handles


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({}, {"mid": 0, "up": 0, "out": 0}),
        ({"tap": "post-mid"}, {"mid": 1, "up": 0, "out": 0}),
        ({"mode": "paper", "sigma_index": 3}, {"mid": 1, "up": 3, "out": 1}),  # the first (full) pass only
    ],
)
def test_truncated_unet_never_runs_mid_or_up_blocks(components, images, overrides, expected) -> None:
    encoder = make_encoder(components, **overrides)
    calls, handles = count_calls(encoder.unet)
    try:
        with torch.no_grad():
            encoder(batch_of(encoder, [images[0], images[1:3]]))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == expected


def test_keyframes_reach_release_features_far_more_than_paper_features(components, images) -> None:
    changes = {}
    for mode in ("release", "paper"):
        encoder = make_encoder(components, mode=mode)
        frames = batch_of(encoder, [images[:3]])["svd"]
        # Same draws (the fill with keyframe 0's, as for one image): only the keyframes differ.
        noise3 = replace(encoder.draw_noise(frames[0]), fill=encoder.draw_noise(frames[0]).aug[0])
        noise1 = replace(noise3, aug=noise3.aug[:1])
        with torch.no_grad():
            f3 = encoder.encode({"svd": frames}, noise=[noise3]).features
            f1 = encoder.encode({"svd": frames[:, :1]}, noise=[noise1]).features
        changes[mode] = ((f3 - f1).abs().mean() / f1.abs().mean()).item()
    # Measured with these tiny weights: release 0.16, paper 4e-4 (at sigma 700 the U-Net sees about Z/700).
    assert changes["release"] > 50 * changes["paper"], changes


def test_features_depend_only_on_the_sample_and_the_seed(components, images) -> None:
    encoder = make_encoder(components)
    rng_state = torch.get_rng_state()
    with torch.no_grad():
        alone = encoder(batch_of(encoder, [images[1]]))["svd"]
        batched = encoder(batch_of(encoder, [images[2:5], images[1], images[0]]))["svd"]
        again = encoder(batch_of(encoder, [images[1]]))["svd"]
        reseeded = make_encoder(components, seed=1)(batch_of(encoder, [images[1]]))["svd"]
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is never used
    assert torch.equal(alone, again)
    # Same noise draws wherever the sample sits; the values then match up to float rounding only, because CPU (and
    # GPU) kernels block their sums differently for different batch sizes (measured: max 3e-6 here).
    frames = batch_of(encoder, [images[1], images[0]])["svd"]
    noise_alone, noise_other = encoder.draw_noise(frames[0]), encoder.draw_noise(frames[1])
    noise_in_batch = encoder.draw_noise(batch_of(encoder, [images[2:5], images[1]])["svd"][1, :1])
    assert all(torch.equal(getattr(noise_alone, f), getattr(noise_in_batch, f)) for f in ("aug", "unet", "feat"))
    assert not torch.equal(noise_alone.unet, noise_other.unet) and not torch.equal(noise_alone.aug, noise_other.aug)
    torch.testing.assert_close(batched[1], alone[0], rtol=0, atol=2e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-2
    assert (alone - reseeded).abs().max() > 1e-2


def test_unet_calls_split_over_the_cuda_grid_limit_give_the_same_features(components, images, monkeypatch) -> None:
    """On CUDA a batch whose first-level temporal attention would exceed the grid limit runs in chunks; forced here
    on CPU (two samples per call), every U-Net pass of both modes must give the whole batch's values."""
    chunk_sizes = []

    def two_per_call(sample: torch.Tensor) -> int:
        chunk_sizes.append(sample.shape[0])
        return 2

    for mode in ("release", "paper"):
        encoder = make_encoder(components, mode=mode)
        batch = batch_of(encoder, [images[0], images[1:3], images[3], images[4]])
        with torch.no_grad():
            whole = encoder(batch)["svd"]
            monkeypatch.setattr(svd_unet, "max_rows_per_call", two_per_call)
            chunked = encoder(batch)["svd"]
            monkeypatch.undo()
        torch.testing.assert_close(chunked, whole, rtol=0, atol=2e-5)  # batch-size-dependent rounding only
    assert 4 in chunk_sizes and 2 in chunk_sizes
    assert svd_unet.max_rows_per_call(torch.zeros(30, 8, 8, 56, 56)) == 30  # CPU: one call
    assert svd_unet.CUDA_MAX_GRID_ROWS // (56 * 56) == 20  # 448 px on CUDA: 20 per call (21 failed on the H200)


def test_saved_and_reloaded_components_give_identical_features(svd_dir, images) -> None:
    in_memory = SVDGenerativeEncoder(
        "svd-tiny", SVDEncoderConfig(model_id=None, image_size=SIZE), build_tiny_svd_components(0, SIZE)
    )
    reloaded = SVDGenerativeEncoder.from_config("svd-tiny", SVDEncoderConfig(model_id=svd_dir, image_size=SIZE))
    assert reloaded.vae.decoder is None  # dropped at load: never used
    batch = batch_of(in_memory, [images[0], images[1:3]])
    with torch.no_grad():
        assert torch.equal(in_memory(batch)["svd"], reloaded(batch)["svd"])
    with pytest.raises(ValueError, match="no VAE decoder"):
        save_svd_components(load_svd_components(svd_dir), svd_dir + "-copy")


def test_real_architecture_shapes_on_the_meta_device() -> None:
    """448 px, T = 8 on the real SVD layout: 56 -> 28 -> 14 -> 7, so 8 x 49 = 392 tokens of 1280 (nothing is read)."""
    with torch.device("meta"):
        encoder = SVDGenerativeEncoder.from_config("dyva", SVDEncoderConfig(), load_weights=False)
        vae_only = VAEOnlyBackbone.from_config("vae", SVDEncoderConfig(), load_weights=False)
    assert [(s.name, s.embed_dim, s.num_tokens) for s in encoder.streams] == [("svd", 1280, 392)]
    assert [(s.name, s.embed_dim, s.num_tokens) for s in vae_only.streams] == [("vae", 1280, 49)]
    assert encoder.sigmas[0].item() == pytest.approx(700.0) and encoder.sigmas[1].item() == pytest.approx(545.7292)
    assert encoder.timesteps[0].item() == pytest.approx(0.25 * np.log(700.0))
    assert encoder.vae.decoder is None and sum(p.numel() for p in encoder.unet.parameters()) > 1.5e9


def test_stream_shapes_and_the_vae_only_ablation(components, images) -> None:
    for size, frames in ((32, 8), (64, 8), (64, 4)):
        encoder = SVDGenerativeEncoder.from_config(
            "t", SVDEncoderConfig(model_id=None, image_size=size, num_frames=frames)
        )
        (spec,) = encoder.streams
        assert (spec.name, spec.embed_dim, spec.num_tokens) == ("svd", 64, frames * (size // 2 // 8) ** 2)
    with torch.no_grad():
        out = make_encoder(components)(batch_of(make_encoder(components), [images[0]] * 2))["svd"]
    assert out.shape == (2, T * 4, 64)

    vae_only = VAEOnlyBackbone.from_config("vae-tiny", SVDEncoderConfig(model_id=None, image_size=SIZE))
    vae_only.vae.requires_grad_(False)
    batch = collate_pixel_values([vae_only.get_image_transform()(images[:3]), vae_only.get_image_transform()(images[3])])
    tokens = vae_only(batch)["vae"]
    assert tokens.shape == (2, 4, 64) and vae_only.streams[0].num_tokens == 4  # the grid of one SVD frame slot
    assert vae_only.trainable_module_names == ("stem",)
    tokens.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae_only.stem.parameters())
    assert all(p.grad is None for p in vae_only.vae.parameters())


def test_trainable_unet_receives_gradients_only_where_it_runs(svd_dir, images) -> None:
    encoder = SVDGenerativeEncoder.from_config("svd-tiny", SVDEncoderConfig(model_id=svd_dir, image_size=SIZE))
    encoder.requires_grad_(False)
    encoder.unet.requires_grad_(True)
    encoder(batch_of(encoder, [images[0]]))["svd"].square().mean().backward()
    unet = encoder.unet
    down = [p for block in unet.down_blocks for p in block.parameters()]
    assert all(p.grad is not None for p in down) and sum(p.grad.abs().sum() for p in down) > 0
    unused = [p for name in encoder.unused_module_names for p in encoder.get_submodule(name).parameters()]
    assert unused and all(p.grad is None for p in unused)
    assert all(p.grad is None for p in encoder.vae.parameters())
    # The "U-Net and VAE trainable" ablation: the VAE encoder is reached through the conditioning latents.
    encoder.vae.requires_grad_(True)
    encoder(batch_of(encoder, [images[0]]))["svd"].square().mean().backward()
    assert all(p.grad is not None for p in encoder.vae.encoder.parameters())


def test_float_pixels_bf16_and_dropping_unused_modules(components, images) -> None:
    encoder = make_encoder(components)
    batch = batch_of(encoder, [images[0], images[1:3]])
    with torch.no_grad():
        reference = encoder(batch)["svd"]
        # Mixed-precision wrappers may hand the pixels over as floats: integral 0..255 values are accepted as-is.
        as_float = encoder({**batch, "svd": batch["svd"].to(torch.bfloat16)})["svd"]
        assert torch.equal(reference, as_float)
        with pytest.raises(ValueError, match="uint8"):
            encoder({**batch, "svd": batch["svd"].float() / 255})
        pruned = make_encoder(copy.deepcopy(components))
        pruned.drop_unused_modules()
        assert pruned.unet.mid_block is None and torch.equal(pruned(batch)["svd"], reference)
        half = make_encoder(copy.deepcopy(components)).to(torch.bfloat16)
        out = half(batch)["svd"]
    assert out.dtype == torch.bfloat16 and (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean()
