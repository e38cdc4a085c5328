"""The generative vision encoder: one Stable Video Diffusion U-Net query turned into "dynamics-aware" tokens.

`SVDGenerativeEncoder` emits the `"svd"` stream: T frame slots x (h' x w') tokens of the U-Net's last down block
(frame-major), 392 x 1280 at 448 px and T = 8. Two computations (stated exactly in `docs/model.md`):

- `release` (default): what the authors' released checkpoints were trained on. Pure noise in the U-Net's noisy
  channels, the image's unscaled noise-augmented VAE latent in its conditioning channels (keyframes in their slots),
  one conditional pass at sigma, stopped after the down path; F = c_out * H (+ the tiny released noise term).
- `paper`: the paper's equations. Clean scaled latent Z0, one Euler step to Z1 with a full pass, then a truncated pass
  on Z1 at the next sigma; F = H.

Every random draw comes from a generator seeded by the sample's pixels (and a global seed), never from the global
RNG, so a given image always gets the same noise and features, alone or in any batch (equal up to float rounding,
which kernels do differently for different batch sizes). The generator is a CPU one (`noise_device="cpu"`, the
original streams) or one on the encoder's device (`"device"`: no CPU draws or copies; other streams, so another feature
cache fingerprint). There is no `torch.no_grad` here: whether gradients reach the U-Net or VAE is decided by their
`requires_grad` (the trainable ablations need it).

Multi-image samples (K > 1) in release mode with cond-slots follow the released code, which encodes image 1 twice:
one encoding (own noise-augmentation draw, `SVDNoise.fill`) fills all T conditioning slots, then each of the K images
(own draw `SVDNoise.aug[k]`) is written into slot round(linspace(0, T-1, K))[k], so slot 0 holds image 1's *second*
encoding. The fill draw comes after every other draw of the sample, so they are what they were before it existed.
With K = 1 the fill is the one encoding (`aug[0]`); paper mode and the other placements use `aug[0]` for it too.

The paper's VAE-only ablation (no U-Net query) is `vae_only.VAEOnlyBackbone`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers.models.unets.unet_3d_blocks import (
    CrossAttnDownBlockSpatioTemporal,
    CrossAttnUpBlockSpatioTemporal,
    DownBlockSpatioTemporal,
    UNetMidBlockSpatioTemporal,
    UpBlockSpatioTemporal,
)
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from prismatic.models.backbones.vision.base_vision import (
    PixelValues,
    StreamSpec,
    VisionBackbone,
)
from prismatic.models.backbones.vision.svd_components import SVDComponents, get_svd_components
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.backbones.vision.svd_unet import (
    SVDImageTransform,
    SVDNoise,
    draw_noise,
    euler_step,
    keyframe_slots,
    resize_with_antialiasing,
    run_unet,
    to_signed_unit,
    unet_conditioning,
    unpack_uint8_frames,
)

# Bump when what the per-sample draws are, or how they enter the computation, changes (it is part of the feature cache
# fingerprint, so old cached features are never reused). 2: image 1's all-slot fill has its own draw when K > 1.
NOISE_CONVENTION = 2


@dataclass
class SVDEncoding:
    """The features and the intermediate tensors that produced them (for tests and analysis)."""

    features: torch.Tensor  # [B, T * h' * w', C]
    hidden: torch.Tensor  # H, the tapped U-Net activation [B, T, C, h', w']
    unet_input: torch.Tensor  # input of the feature pass [B, T, 8, h, w]
    cond_latents: torch.Tensor  # [B, T, 4, h, w]
    image_embeds: torch.Tensor  # [B, 1, D]
    z0: torch.Tensor | None  # paper mode: the clean scaled latent [B, T, 4, h, w]
    z1: torch.Tensor | None  # paper mode: after the Euler step
    noise: list[SVDNoise]


class SVDGenerativeEncoder(VisionBackbone):
    """Frozen-by-caller SVD encoder; all components are registered submodules (so .to(), FSDP, requires_grad_ work)."""

    stream_name = "svd"

    def __init__(self, vision_backbone_id: str, config: SVDEncoderConfig, components: SVDComponents) -> None:
        super().__init__(vision_backbone_id)
        self.config = config
        self.vae, self.unet, self.image_encoder = components.vae, components.unet, components.image_encoder
        self.clip_mean = list(components.feature_extractor.image_mean)
        self.clip_std = list(components.feature_extractor.image_std)
        self.clip_size = int(self.image_encoder.config.image_size)

        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_factor = 2 ** (len(self.unet.config.down_block_types) - 1)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.embed_dim = int(self.unet.config.block_out_channels[-1])
        total_factor = self.vae_factor * self.unet_factor
        if config.image_size % total_factor != 0:
            raise ValueError(
                f"image_size={config.image_size} must be a multiple of {total_factor} (VAE x U-Net downsampling) so "
                "the token grid is exact; 448 is the released size."
            )
        self.latent_size = config.image_size // self.vae_factor
        self.grid_size = self.latent_size // self.unet_factor
        expected_in = 2 * self.latent_channels
        if self.unet.config.in_channels != expected_in:
            raise ValueError(f"U-Net takes {self.unet.config.in_channels} channels, expected {expected_in}.")

        # Sigmas and timesteps come from the checkpoint's own scheduler (a copy: the caller's stays untouched).
        scheduler = copy.deepcopy(components.scheduler)
        # On CPU even under a meta-device context; and without diffusers' numpy-2 DeprecationWarning (np.array on a
        # torch tensor inside set_timesteps).
        with torch.device("cpu"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            scheduler.set_timesteps(config.schedule_steps)
        self.scheduler_config = dict(scheduler.config)
        self.sigmas = scheduler.sigmas.to(torch.float32).clone()  # [steps + 1], last = 0
        self.timesteps = scheduler.timesteps.to(torch.float32).clone()  # 0.25 * ln(sigma) for v_prediction
        if config.mode == "paper" and config.sigma_index + 1 >= config.schedule_steps:
            raise ValueError(
                f"paper mode steps from sigma_index={config.sigma_index} to the next sigma and runs the U-Net there; "
                f"use sigma_index <= schedule_steps - 2 = {config.schedule_steps - 2}."
            )

    @classmethod
    def from_config(
        cls,
        vision_backbone_id: str,
        config: SVDEncoderConfig,
        torch_dtype: torch.dtype = torch.float32,
        load_weights: bool = True,
    ) -> SVDGenerativeEncoder:
        """Load the checkpoint named by config.model_id (hub id or local dir), or tiny random components if None.

        `load_weights=False` reads nothing: the real architecture is built from built-in configs (random init; use it
        under `with torch.device("meta"):`)."""
        components = get_svd_components(
            config.model_id, config.variant, config.seed, config.image_size, torch_dtype, load_weights
        )
        return cls(vision_backbone_id, config, components)

    # === VisionBackbone contract ===
    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        num_tokens = self.config.num_frames * self.grid_size * self.grid_size
        return (StreamSpec(self.stream_name, self.embed_dim, num_tokens),)

    def get_image_transform(self) -> SVDImageTransform:
        return SVDImageTransform(self.config.image_size, self.config.num_frames, key=self.stream_name)

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        return {self.stream_name: self.encode(pixel_values).features}

    @property
    def max_keyframes(self) -> int | None:
        return self.config.num_frames

    def generative_parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae}

    def cache_description(self) -> dict[str, Any]:
        # Every option but the weights' location (the weights digest covers the weights, so a hub id and its local
        # snapshot share a cache), plus the sigmas' scheduler and the CLIP preprocessing, which the checkpoint
        # supplies. The variant stays in: it names which weight files were read (fp16 ones differ from fp32 ones), and
        # recording it keeps that explicit rather than resting on the digest alone.
        config = {k: v for k, v in asdict(self.config).items() if k != "model_id"}
        # The CPU noise device is what every existing cache entry was computed with, so it stays out of the
        # description (their fingerprints are unchanged); "device" draws other random streams and is recorded.
        if config["noise_device"] == "cpu":
            del config["noise_device"]
        scheduler = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        clip = {"mean": self.clip_mean, "std": self.clip_std, "size": self.clip_size}
        return {"kind": "svd", "noise_convention": NOISE_CONVENTION, "config": config, "scheduler": scheduler,
                "clip": clip}  # fmt: skip

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        """U-Net blocks and CLIP layers as their own FSDP units. Never make the U-Net or the VAE themselves units: the
        feature pass bypasses their `forward` (blocks are called directly, the VAE through `encode`), so hooks on it
        would not fire."""
        return (
            CrossAttnDownBlockSpatioTemporal,
            DownBlockSpatioTemporal,
            UNetMidBlockSpatioTemporal,
            CrossAttnUpBlockSpatioTemporal,
            UpBlockSpatioTemporal,
            CLIPEncoderLayer,
        )

    @property
    def unused_module_names(self) -> tuple[str, ...]:
        """U-Net parts this configuration never runs: freeze (or drop) them so DDP/DCP never wait for their grads."""
        if self.config.mode == "paper":
            return ()
        names = ["unet.up_blocks", "unet.conv_norm_out", "unet.conv_out"]
        if self.config.tap == "pre-mid":
            names.insert(0, "unet.mid_block")
        return tuple(names)

    def drop_unused_modules(self) -> None:
        """Delete the never-run U-Net parts (saves ~2/3 of the U-Net's memory in release mode; irreversible)."""
        for name in self.unused_module_names:
            setattr(self.unet, name.removeprefix("unet."), None)

    # === Noise ===
    def separate_fill(self, num_images: int) -> bool:
        """Whether image 1's all-slot fill gets its own encoding and draw (the released code's K > 1 path)."""
        return self.config.mode == "release" and self.config.resolved_placement == "cond-slots" and num_images > 1

    def draw_noise(self, images_uint8: torch.Tensor, device: torch.device | None = None) -> SVDNoise:
        """One sample's noise, from its uint8 images [K, 3, S, S] and config.seed: on a CPU generator (`device`
        None, the "cpu" noise device) or on a generator on `device` (see `svd_unet.draw_noise`)."""
        return draw_noise(
            images_uint8,
            seed=self.config.seed,
            num_frames=self.config.num_frames,
            latent_shape=(self.latent_channels, self.latent_size, self.latent_size),
            feature_shape=(self.embed_dim, self.grid_size, self.grid_size),
            with_unet=self.config.mode == "release",
            with_feat=self.config.mode == "release" and self.config.feature_noise,
            with_fill=self.separate_fill(images_uint8.shape[0]),
            device=device,
        )

    # === Encoding ===
    def _clip_embeds(self, first_images: torch.Tensor) -> torch.Tensor:
        """First images in [-1, 1] (float32) -> CLIP image embeddings [B, 1, D], the reference pipeline's path."""
        x = resize_with_antialiasing(first_images, (self.clip_size, self.clip_size))
        x = (x + 1.0) / 2.0
        mean = torch.tensor(self.clip_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.clip_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = ((x - mean) / std).to(self.image_encoder.dtype)
        return self.image_encoder(pixel_values=x).image_embeds.unsqueeze(1)

    def _vae_mode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, S, S] in [-1, 1] -> unscaled VAE posterior mode [N, 4, h, w] in the U-Net's dtype."""
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return latents.to(self.unet.dtype)

    def _slotted(self, fill: torch.Tensor, keyframes: list[torch.Tensor]) -> torch.Tensor:
        """T frame slots [T, ...]: `fill` everywhere, then keyframe k written into slot keyframe_slots(K, T)[k]."""
        frames = [fill] * self.config.num_frames
        if keyframes:
            for keyframe, slot in zip(keyframes, keyframe_slots(len(keyframes), self.config.num_frames)):
                frames[slot] = keyframe
        return torch.stack(frames)

    def _latents(
        self, pixels: torch.Tensor, counts: list[int], noise: list[SVDNoise]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning latents [B, T, 4, h, w] (unscaled, noise-augmented) and Z0 [B, T, 4, h, w] (scaled, clean;
        None in release mode unless keyframes go to Z0 slots). One VAE call for the whole batch."""
        cfg, batch_size = self.config, pixels.shape[0]
        placement = cfg.resolved_placement
        # Which images are encoded with noise augmentation (conditioning) and which clean (Z0).
        aug_counts = counts if placement == "cond-slots" else [1] * batch_size
        if placement == "z0-slots":
            clean_counts = counts
        else:
            clean_counts = [1 if cfg.mode == "paper" else 0] * batch_size
        separate = [self.separate_fill(counts[b]) for b in range(batch_size)]
        aug_inputs = [
            pixels[b, k] + cfg.noise_aug_strength * noise[b].aug[k].to(pixels.device)
            for b in range(batch_size)
            for k in range(aug_counts[b])
        ]
        # Image 1 again with its own draw, for the all-slot fill (after the keyframes: K = 1 batches are unchanged).
        fill_inputs = [
            pixels[b, 0] + cfg.noise_aug_strength * noise[b].fill.to(pixels.device)
            for b in range(batch_size)
            if separate[b]
        ]
        aug_inputs += fill_inputs
        clean_inputs = [pixels[b, k] for b in range(batch_size) for k in range(clean_counts[b])]
        latents = self._vae_mode(torch.stack(aug_inputs + clean_inputs))
        aug_latents = iter(latents[: len(aug_inputs)].unbind(0))
        clean_latents = iter((float(self.vae.config.scaling_factor) * latents[len(aug_inputs) :]).unbind(0))

        sample_augs = [[next(aug_latents) for _ in range(aug_counts[b])] for b in range(batch_size)]
        cond_rows, z0_rows = [], []
        for b in range(batch_size):
            sample_aug = sample_augs[b]
            sample_clean = [next(clean_latents) for _ in range(clean_counts[b])]
            fill = next(aug_latents) if separate[b] else sample_aug[0]
            cond_rows.append(self._slotted(fill, sample_aug if placement == "cond-slots" else []))
            if cfg.mode == "paper":
                z0_rows.append(self._slotted(sample_clean[0], sample_clean if placement == "z0-slots" else []))
            elif sample_clean:  # release mode with z0-slots: keyframes on top of the pure noise, zeros elsewhere
                z0_rows.append(self._slotted(torch.zeros_like(sample_clean[0]), sample_clean))
        return torch.stack(cond_rows), (torch.stack(z0_rows) if z0_rows else None)

    def _check_noise(self, noise: list[SVDNoise], counts: list[int]) -> None:
        """Given draws must be one per sample and hold what this configuration uses (drawn ones always do)."""
        if len(noise) != len(counts):
            raise ValueError(f"Got {len(noise)} noise draws for a batch of {len(counts)}.")
        cfg = self.config
        if cfg.mode == "release" and any(n.unet is None or (cfg.feature_noise and n.feat is None) for n in noise):
            raise ValueError(
                "Release mode needs SVDNoise.unet (and .feat with feature_noise); draw it with this encoder."
            )
        if any(self.separate_fill(count) and n.fill is None for count, n in zip(counts, noise)):
            raise ValueError(
                "Release mode with several images per sample needs SVDNoise.fill (image 1's all-slot fill draw); "
                "draw the noise with this encoder's draw_noise on all of the sample's images."
            )

    def encode(self, pixel_values: PixelValues, noise: list[SVDNoise] | None = None) -> SVDEncoding:
        """Features of a collated batch; `noise` (one SVDNoise per sample) replaces the content-seeded draws."""
        frames, counts = unpack_uint8_frames(pixel_values, self.stream_name)
        cfg, device, dtype = self.config, self.unet.device, self.unet.dtype
        batch_size = frames.shape[0]
        if tuple(frames.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"Expected {cfg.image_size}px frames, got {tuple(frames.shape[-2:])}; use the transform.")
        for count in counts:
            keyframe_slots(count, cfg.num_frames)  # K > T is an error, whatever the placement
        if noise is not None:
            self._check_noise(noise, counts)
        # The seeds hash the pixels on the CPU (the collator's frames already are there). Copied back before any device
        # work is queued (the copy waits for queued work), so that the hashing and drawing below run on the CPU while
        # the device computes the CLIP embeddings, which need no noise; the values are the same in any order.
        frames_cpu = frames.cpu() if noise is None else None
        pixels = to_signed_unit(frames.to(device))  # [B, Kmax, 3, S, S], float32
        image_embeds = self._clip_embeds(pixels[:, 0]).to(dtype)
        if noise is None:
            where = device if cfg.noise_device == "device" else None
            noise = [self.draw_noise(frames_cpu[b, : counts[b]], device=where) for b in range(batch_size)]
        cond_latents, z0 = self._latents(pixels, counts, noise)
        added_time_ids = torch.tensor(
            [[cfg.fps - 1, cfg.motion_bucket_id, cfg.noise_aug_strength]], dtype=dtype, device=device
        ).repeat(batch_size, 1)
        conditioning = unet_conditioning(self.unet, image_embeds, added_time_ids, cfg.num_frames)

        i = cfg.sigma_index
        sigma, timestep = self.sigmas[i].to(device), self.timesteps[i].to(device)
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        z1 = None
        if cfg.mode == "release":
            noisy = torch.stack([n.unet for n in noise]).to(device=device, dtype=dtype)
            if z0 is not None:  # the noisy sample is Z0 + sqrt(sigma^2 + 1) * eps, times c_in
                noisy = noisy + (z0.float() * c_in).to(dtype)
            unet_input = torch.cat([noisy, cond_latents], dim=2)
            hidden = run_unet(self.unet, unet_input, timestep, conditioning, stop=cfg.tap)
            # The released code ran scheduler.step on the features: x0 = c_out * H + c_skip * sqrt(sigma^2+1) * eps'.
            out = hidden.float() * (-sigma / (sigma**2 + 1) ** 0.5)
            if cfg.feature_noise:
                out = out + torch.stack([n.feat for n in noise]).to(device) * c_in
            out = out.to(hidden.dtype)
        else:
            first_input = torch.cat([(z0.float() * c_in).to(dtype), cond_latents], dim=2)
            prediction = run_unet(self.unet, first_input, timestep, conditioning, stop="full")
            sigma1, timestep1 = self.sigmas[i + 1].to(device), self.timesteps[i + 1].to(device)
            z1 = euler_step(prediction, z0, sigma, sigma1)
            c_in1 = 1.0 / (sigma1**2 + 1) ** 0.5
            unet_input = torch.cat([(z1.float() * c_in1).to(dtype), cond_latents], dim=2)
            hidden = out = run_unet(self.unet, unet_input, timestep1, conditioning, stop=cfg.tap)

        features = out.permute(0, 1, 3, 4, 2).reshape(batch_size, -1, self.embed_dim)  # frame-major (t, h, w)
        return SVDEncoding(features, hidden, unet_input, cond_latents, image_embeds, z0, z1, noise)
