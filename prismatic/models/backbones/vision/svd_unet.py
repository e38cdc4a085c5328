"""Building blocks of the SVD encoder: the uint8 frame transform, keyframe slots, the CLIP antialiased resize, seeded
noise, and the U-Net passes (with paper mode's Euler step).

`run_unet` runs diffusers' `UNetSpatioTemporalConditionModel` either whole (its own forward, for paper mode's Euler
step) or truncated after the down path ("pre-mid") or after the mid block ("post-mid"). The released features only
ever use the last down block's output, so running the mid and up blocks would be wasted work (about 2/3 of the U-Net
FLOPs); diffusers' forward cannot stop early, hence the short partial forward here. The conditioning (CLIP embedding
and added-time ids) is prepared once and shared by every pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel
from PIL import Image

from prismatic.models.backbones.vision.base_vision import Images, PixelValues, as_image_list

UNetStop = Literal["pre-mid", "post-mid", "full"]


def keyframe_slots(num_images: int, num_frames: int) -> list[int]:
    """Frame slot of each of K input images among T slots: round(linspace(0, T-1, K)) with numpy (half-to-even)."""
    if num_images < 1:
        raise ValueError(f"Need at least one image per sample, got {num_images}.")
    if num_images > num_frames:
        raise ValueError(
            f"Got {num_images} images for {num_frames} SVD frame slots: at most one image per slot. Pass at most "
            f"{num_frames} images, or raise the number of frames (SVDEncoderConfig.num_frames / --num_frames)."
        )
    return [int(slot) for slot in np.round(np.linspace(0, num_frames - 1, num_images))]


class SVDImageTransform:
    """PIL image or list of K images -> {key: uint8 [K, 3, S, S]}: bilinear (antialiased PIL) resize, aspect not kept.

    uint8 is what the released code fed its VAE after quantising (truncating) its [0, 1] tensors: storing it is exact,
    4x smaller than float, and the bytes are what the per-sample noise seed hashes. A class (not a closure) so that
    data loader workers can pickle it.
    """

    def __init__(self, image_size: int, max_images: int, key: str = "svd", first_only: bool = False) -> None:
        self.image_size, self.max_images, self.key, self.first_only = image_size, max_images, key, first_only

    def __call__(self, images: Images) -> PixelValues:
        image_list = as_image_list(images)
        if self.first_only:
            image_list = image_list[:1]
        keyframe_slots(len(image_list), self.max_images)  # raises a clear error when K > T
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(image.resize(size, Image.Resampling.BILINEAR)) for image in image_list]
        return {self.key: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()}


def unpack_uint8_frames(pixel_values: PixelValues, key: str) -> tuple[torch.Tensor, list[int]]:
    """Batch frames [B, Kmax, 3, S, S] as uint8 and each sample's true K (from `<key>_count`, else all Kmax)."""
    if key not in pixel_values:
        raise KeyError(f"pixel_values has no {key!r} entry (got {sorted(pixel_values)}); use this backbone's transform.")
    frames = pixel_values[key]
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"pixel_values[{key!r}] must be [B, K, 3, S, S], got {tuple(frames.shape)}.")
    if frames.dtype != torch.uint8:
        # Mixed-precision wrappers may cast inputs to float; integers 0..255 survive that exactly (even in bf16).
        if not frames.is_floating_point() or frames.min() < 0 or frames.max() > 255 or (frames != frames.round()).any():
            raise ValueError(
                f"pixel_values[{key!r}] must hold uint8 pixels 0..255 as produced by get_image_transform(), got "
                f"{frames.dtype} values outside that set."
            )
        frames = frames.round().to(torch.uint8)
    batch_size, k_max = frames.shape[:2]
    counts_key = f"{key}_count"
    counts = pixel_values[counts_key].tolist() if counts_key in pixel_values else [k_max] * batch_size
    if len(counts) != batch_size or not all(1 <= int(k) <= k_max for k in counts):
        raise ValueError(f"{counts_key} must hold one count in [1, {k_max}] per sample, got {counts}.")
    return frames, [int(k) for k in counts]


def to_signed_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], as x / 255 * 2 - 1 (the SVD VAE's input range)."""
    return frames_uint8.float() / 255.0 * 2.0 - 1.0


def _gaussian_weights(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - kernel_size // 2
    sigma_t = torch.tensor(sigma, dtype=dtype, device=device)
    weights = torch.exp(-offsets.pow(2.0) / (2 * sigma_t.pow(2.0)))
    return weights / weights.sum()


def _blur_axis(x: torch.Tensor, weights: torch.Tensor, dim: Literal[-1, -2]) -> torch.Tensor:
    """Depthwise 1-D convolution along the width (-1) or height (-2) of [N, C, H, W], reflect-padded to keep size."""
    channels, half = x.shape[1], (weights.numel() - 1) // 2
    if dim == -1:
        kernel, padding = weights.view(1, 1, 1, -1), (half, half, 0, 0)
    else:
        kernel, padding = weights.view(1, 1, -1, 1), (0, 0, half, half)
    x = F.pad(x, padding, mode="reflect")
    return F.conv2d(x, kernel.expand(channels, 1, *kernel.shape[2:]), groups=channels)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Downscale [N, C, H, W] the way the SVD pipeline does before its CLIP encoder (skimage-style anti-aliasing).

    A separable Gaussian blur with sigma = max((factor - 1) / 2, 0.001) per axis and an odd kernel of
    int(max(4 * sigma, 3)) taps (reflect padding), then bicubic interpolation with align_corners=True.
    """
    factors = (x.shape[-2] / size[0], x.shape[-1] / size[1])
    sigmas = [max((factor - 1.0) / 2.0, 0.001) for factor in factors]
    kernel_sizes = [int(max(2.0 * 2 * sigma, 3)) for sigma in sigmas]
    kernel_sizes = [k + 1 if k % 2 == 0 else k for k in kernel_sizes]
    # Width first, then height, as the reference does (the float rounding depends on the order).
    x = _blur_axis(x, _gaussian_weights(kernel_sizes[1], sigmas[1], x.dtype, x.device), dim=-1)
    x = _blur_axis(x, _gaussian_weights(kernel_sizes[0], sigmas[0], x.dtype, x.device), dim=-2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


@dataclass
class SVDNoise:
    """Every random draw one sample needs (float32; on the CPU until used, or drawn on the encoder's device)."""

    aug: torch.Tensor  # [K, 3, S, S] noise augmentation of each input image (times noise_aug_strength)
    unet: torch.Tensor | None  # [T, 4, h, w] unit Gaussian in the U-Net's noisy channels (release mode only)
    feat: torch.Tensor | None  # [T, C, h', w'] the released code's tiny additive feature noise (release mode only)
    # [3, S, S] noise augmentation of image 1's all-slot fill encoding: release mode, cond-slots, K > 1 only (the
    # released code encoded image 1 twice there, each with its own draw; with K = 1 the fill is keyframe 0, aug[0]).
    fill: torch.Tensor | None = None


def noise_seed(images: torch.Tensor, seed: int) -> int:
    """A 63-bit seed from one sample's uint8 images [K, 3, S, S] (content, K, size) and the global seed."""
    if images.dtype != torch.uint8:
        raise TypeError(f"noise_seed hashes uint8 pixels, got {images.dtype}.")
    digest = hashlib.blake2b(digest_size=8, person=b"dyva-svd-noise")
    digest.update(int(seed).to_bytes(16, "little", signed=True))
    digest.update(np.asarray(images.shape, dtype=np.int64).tobytes())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


def draw_noise(
    images: torch.Tensor,
    seed: int,
    num_frames: int,
    latent_shape: tuple[int, int, int],
    feature_shape: tuple[int, int, int],
    with_unet: bool = True,
    with_feat: bool = True,
    with_fill: bool = False,
    device: torch.device | None = None,
) -> SVDNoise:
    """Draw one sample's noise from a generator seeded by its content, so a sample's features never depend on its
    batch, its position in it, or the global RNG (cacheable, reproducible). Draws are made in a fixed order (aug,
    unet, feat, fill) and a later draw is always preceded by all the earlier ones (drawn and dropped if unused), so
    each draw's values never depend on which of the others a configuration uses: the fill, added last, left every
    earlier draw as it was.

    `device` None: a CPU generator, the original streams (the "cpu" noise device). A device: a generator on it with
    the same seed, drawing there ("device"; on CUDA a Philox stream, different numbers from the CPU's but equally a
    function of the seed and the shapes alone). The seed is hashed from the pixels on the CPU either way."""
    where = torch.device("cpu") if device is None else torch.device(device)
    generator = torch.Generator(device=where).manual_seed(noise_seed(images, seed))
    draw = partial(torch.randn, generator=generator, device=where)
    aug = draw(tuple(images.shape), dtype=torch.float32)
    need_unet, need_feat = with_unet or with_feat or with_fill, with_feat or with_fill
    unet = draw((num_frames, *latent_shape)) if need_unet else None
    feat = draw((num_frames, *feature_shape)) if need_feat else None
    fill = draw(tuple(images.shape[1:])) if with_fill else None
    return SVDNoise(aug=aug, unet=unet if with_unet else None, feat=feat if with_feat else None, fill=fill)


@dataclass
class UNetConditioning:
    """Per-sample conditioning, computed once and shared by every U-Net pass."""

    image_embeds: torch.Tensor  # [B, 1, D]: the CLIP image embedding, in the U-Net's dtype (diffusers' forward input)
    added_time_ids: torch.Tensor  # [B, 3]: [fps - 1, motion_bucket_id, noise_aug] (diffusers' forward input)
    encoder_hidden_states: torch.Tensor  # [B * T, 1, D]: image_embeds repeated per frame (the truncated passes)
    added_embedding: torch.Tensor  # [B, E]: add_embedding(sinusoids of added_time_ids) (the truncated passes)
    num_frames: int


def unet_conditioning(
    unet: UNetSpatioTemporalConditionModel, image_embeds: torch.Tensor, added_time_ids: torch.Tensor, num_frames: int
) -> UNetConditioning:
    """image_embeds [B, 1, D] and added_time_ids [B, 3] -> the conditioning the U-Net passes consume."""
    batch_size, dtype = image_embeds.shape[0], unet.dtype
    time_features = unet.add_time_proj(added_time_ids.flatten()).reshape(batch_size, -1).to(dtype)
    added_embedding = unet.add_embedding(time_features)
    image_embeds = image_embeds.to(dtype)
    encoder_hidden_states = image_embeds.repeat_interleave(num_frames, dim=0)
    return UNetConditioning(image_embeds, added_time_ids, encoder_hidden_states, added_embedding, num_frames)


# CUDA's limit on a grid's y/z dimension. The temporal attention of the first level runs batch x h x w sequences of
# T frames in one SDPA call, and the flash / memory-efficient kernels fail with "invalid configuration argument"
# above it on torch versions without pytorch#146704 (measured on an H200 with torch 2.11: 448 px, from 21 images).
CUDA_MAX_GRID_ROWS = 65_535


def max_rows_per_call(sample: torch.Tensor) -> int:
    """How many samples of sample [B, T, C, h, w] one U-Net call may take: all on CPU, under the grid limit on CUDA."""
    height, width = sample.shape[-2:]
    return max(1, CUDA_MAX_GRID_ROWS // (height * width)) if sample.device.type == "cuda" else sample.shape[0]


def _rows(cond: UNetConditioning, start: int, count: int) -> UNetConditioning:
    frames, stop = cond.num_frames, start + count
    return UNetConditioning(cond.image_embeds[start:stop], cond.added_time_ids[start:stop],
                            cond.encoder_hidden_states[start * frames : stop * frames],
                            cond.added_embedding[start:stop], frames)  # fmt: skip


def run_unet(
    unet: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    cond: UNetConditioning,
    stop: UNetStop,
) -> torch.Tensor:
    """The U-Net on sample [B, T, 8, h, w] at one scalar timestep, up to `stop`; returns [B, T, C, h', w'].

    "pre-mid" = output of the last down block; "post-mid" = output of the mid block; "full" = the U-Net's prediction,
    `unet(...).sample` itself. Blocks after `stop` are never called.
    """
    batch_size, num_frames = sample.shape[:2]
    if num_frames != cond.num_frames:
        raise ValueError(f"Sample has {num_frames} frames but the conditioning was built for {cond.num_frames}.")
    rows = max_rows_per_call(sample)
    if batch_size > rows:  # samples are independent: the chunks' outputs are exactly the rows of the whole
        parts = [run_unet(unet, sample[i : i + rows], timestep, _rows(cond, i, rows), stop)
                 for i in range(0, batch_size, rows)]  # fmt: skip
        return torch.cat(parts)
    timesteps = timestep.reshape(1).to(sample.device)
    if stop == "full":
        return unet(sample, timesteps, cond.image_embeds, cond.added_time_ids).sample
    return _truncated_forward(unet, sample, timesteps, cond, stop)


def _truncated_forward(
    unet: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    cond: UNetConditioning,
    stop: Literal["pre-mid", "post-mid"],
) -> torch.Tensor:
    """diffusers' `UNetSpatioTemporalConditionModel.forward` up to the end of the down path or of the mid block.

    Kept because that forward cannot stop early: the features are the last down block's (or the mid block's) output,
    and the blocks after it are dropped from release-mode encoders (`drop_unused_modules`). Same operations in the same
    order as diffusers, so the same values."""
    batch_size, num_frames = sample.shape[:2]
    # The sinusoidal projection has no weights and returns float32: cast before the (maybe half precision) MLP.
    emb = unet.time_embedding(unet.time_proj(timesteps.expand(batch_size)).to(sample.dtype)) + cond.added_embedding
    emb = emb.repeat_interleave(num_frames, dim=0)
    hidden = unet.conv_in(sample.flatten(0, 1))
    indicator = torch.zeros(batch_size, num_frames, dtype=hidden.dtype, device=hidden.device)
    common = {"temb": emb, "image_only_indicator": indicator}
    cross_attention = {"encoder_hidden_states": cond.encoder_hidden_states}
    for block in unet.down_blocks:
        # Plain blocks have no `has_cross_attention` and take no context (diffusers tests it the same way).
        context = cross_attention if getattr(block, "has_cross_attention", False) else {}
        hidden, _ = block(hidden_states=hidden, **common, **context)
    if stop == "post-mid":
        hidden = unet.mid_block(hidden_states=hidden, **cross_attention, **common)
    return hidden.unflatten(0, (batch_size, num_frames))


def euler_step(
    prediction: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step of a v-prediction model (s_churn = 0), in float32 like diffusers' EulerDiscreteScheduler."""
    sample32 = sample.float()
    denoised = prediction.float() * (-sigma / (sigma**2 + 1) ** 0.5) + sample32 / (sigma**2 + 1)
    derivative = (sample32 - denoised) / sigma
    return (sample32 + derivative * (sigma_next - sigma)).to(prediction.dtype)
