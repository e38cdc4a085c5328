"""The training objective of the SVD world model: image-to-video denoising of VAE latents, as SVD was trained.

A batch of clips (uint8 frames [B, T, 3, H, W], frame 0 the conditioning image) becomes a per-sample EDM loss:

1. clean latents x0 = VAE posterior of every frame x `vae.config.scaling_factor` (a posterior *sample* by default, as
   generative-models' first stage (`DiagonalGaussianRegularizer`) and SVD_Xtend do; `clean_latents="mode"` is the
   option);
2. conditioning, the way `StableVideoDiffusionPipeline` builds it at inference: the CLIP image embedding of the clean
   first frame (`resize_with_antialiasing` to the CLIP size, CLIP normalisation); the *unscaled* VAE posterior mode of
   the noise-augmented first frame (frame + cond_aug * N(0, I)), repeated over T and concatenated on channels after
   the noisy latents; added time ids [fps - 1, motion_bucket_id, cond_aug];
3. classifier-free-guidance dropout: the image embedding and the concatenated latent are each replaced by zeros
   with their own probability, independently per sample (generative-models' `ucg_rate` mechanism; the pipeline's
   unconditional branch is both zeroed, with the same added time ids);
4. x = x0 + sigma * n with ln sigma ~ N(p_mean, p_std^2); the U-Net sees cat([c_in * x, cond]) at timestep c_noise;
   D = c_skip * x + c_out * F; loss = lambda(sigma) * mean (D - x0)^2 per sample (`edm.py`).

All randomness comes from the caller's `torch.Generator`, drawn in a fixed order by `draw_noise` whatever the options
(a draw an option does not use is still made), so a step is reproducible and a resumed run that restores the
generator's state continues bit-exactly. Only the U-Net trains by default; the VAE encoder and the CLIP tower are
frozen (eval mode, no gradients) unless `train_vae` / `train_image_encoder` are set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, get_args

import torch
from torch import nn

from prismatic.models.backbones.vision.svd_components import SVDComponents
from prismatic.models.backbones.vision.svd_unet import resize_with_antialiasing, to_signed_unit
from prismatic.world_model.edm import EDMConfig, append_dims, denoised, edm_loss, preconditioning, sample_sigmas
from prismatic.world_model.options import CondAugChoice, LatentChoice


@dataclass(frozen=True)
class SVDObjectiveConfig:
    edm: EDMConfig = field(default_factory=EDMConfig)
    clean_latents: LatentChoice = "sample"  # VAE posterior sample (SVD's first stage) or its mode
    # Conditioning-frame noise augmentation. SVD was trained with a random strength that it also receives as the
    # third added time id; "log-normal" draws ln(cond_aug) ~ N(cond_aug_log_mean, cond_aug_log_std^2) per sample
    # (-3.0 / 0.5: SVD_Xtend's values, median 0.05, 95% within [0.018, 0.13]); "fixed" always uses cond_aug_value.
    cond_aug: CondAugChoice = "log-normal"
    cond_aug_log_mean: float = -3.0
    cond_aug_log_std: float = 0.5
    cond_aug_value: float = 0.02  # the "fixed" strength, and the one validation uses (the pipeline's default)
    fps: int = 7  # the clips' frame rate, fed as fps - 1 like the pipeline; per-sample values can be passed instead
    motion_bucket_id: int = 127
    image_embed_dropout: float = 0.1  # probability of zeroing the CLIP embedding (classifier-free guidance)
    cond_latent_dropout: float = 0.1  # probability of zeroing the concatenated first-frame latent
    train_vae: bool = False  # also train the VAE encoder (see SVDWorldModelObjective)
    train_image_encoder: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("clean_latents", self.clean_latents, LatentChoice),
                                     ("cond_aug", self.cond_aug, CondAugChoice)):  # fmt: skip
            if value not in get_args(choices):
                raise ValueError(f"SVDObjectiveConfig.{name} must be one of {get_args(choices)}, got {value!r}.")
        for name in ("image_embed_dropout", "cond_latent_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SVDObjectiveConfig.{name} is a probability in [0, 1), got {getattr(self, name)}.")
        if self.cond_aug_log_std < 0 or self.cond_aug_value < 0:
            raise ValueError("SVDObjectiveConfig.cond_aug_log_std and cond_aug_value must be non-negative.")


@dataclass
class ObjectiveNoise:
    """Every random draw of one training step (float32, on the generator's device until used)."""

    sigma: torch.Tensor  # [B] diffusion noise level
    cond_aug: torch.Tensor  # [B] conditioning-frame noise strength
    keep_image_embed: torch.Tensor  # [B] bool: False = CLIP embedding dropped (zeros)
    keep_cond_latent: torch.Tensor  # [B] bool: False = concatenated latent dropped (zeros)
    aug: torch.Tensor  # [B, 3, H, W] unit noise of the conditioning frame's augmentation
    posterior: torch.Tensor  # [B, T, C, h, w] unit noise of the VAE posterior sample
    diffusion: torch.Tensor  # [B, T, C, h, w] the diffusion noise n


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # [B] per-sample EDM loss (the training loss is its mean)
    sigma: torch.Tensor  # [B] each sample's noise level, to bin the loss by


@dataclass
class Conditioning:
    """The encoded clips: the target latents and what the U-Net is conditioned on, before dropout."""

    clean_latents: torch.Tensor  # [B, T, C, h, w] x0, scaled, float32
    cond_latents: torch.Tensor  # [B, C, h, w] unscaled posterior mode of the augmented first frame (U-Net dtype)
    image_embeds: torch.Tensor  # [B, 1, D] CLIP image embedding of the clean first frame (U-Net dtype)
    added_time_ids: torch.Tensor  # [B, 3] [fps - 1, motion_bucket_id, cond_aug] (U-Net dtype)


def clip_image_embeds(
    image_encoder: nn.Module, images: torch.Tensor, mean: list[float], std: list[float]
) -> torch.Tensor:
    """Images in [-1, 1] [B, 3, H, W] -> CLIP image embeddings [B, 1, D], the SVD pipeline's preprocessing."""
    size = int(image_encoder.config.image_size)
    x = (resize_with_antialiasing(images.float(), (size, size)) + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = ((x - mean_t) / std_t).to(image_encoder.dtype)
    return image_encoder(pixel_values=x).image_embeds.unsqueeze(1)


def check_frames(frames: torch.Tensor, spatial_multiple: int) -> None:
    """Raise a ValueError saying what to pass unless `frames` is a uint8 batch of clips of a usable size."""
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(
            f"Expected clips as uint8 frames [B, T, 3, H, W] (frame 0 = the conditioning image), got "
            f"{frames.dtype} {tuple(frames.shape)}."
        )
    height, width = frames.shape[-2:]
    if height % spatial_multiple or width % spatial_multiple:
        raise ValueError(
            f"Frame size {height}x{width} must be a multiple of {spatial_multiple} (the VAE's and U-Net's total "
            "downsampling); resize or crop the clips."
        )


class SVDWorldModelObjective(nn.Module):
    """SVD's image-to-video training loss over its components (see the module docstring).

    `forward(frames, generator)` returns the per-sample loss and sigmas; `trainable_parameters()` is what the optimizer
    gets. With `train_vae` the VAE *encoder* (the decoder is never used here) trains through both the target latents
    and the conditioning latent. The denoising loss alone rewards shrinking the latents (a smaller x0 is easier to
    denoise), so pair that option with a small learning rate or a reconstruction term in the training script.
    """

    def __init__(self, components: SVDComponents, config: SVDObjectiveConfig | None = None) -> None:
        super().__init__()
        self.config = config or SVDObjectiveConfig()
        self.vae, self.unet, self.image_encoder = components.vae, components.unet, components.image_encoder
        self.clip_mean = list(components.feature_extractor.image_mean)
        self.clip_std = list(components.feature_extractor.image_std)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_scale = 2 ** (len(self.unet.config.down_block_types) - 1)
        for module, trains in self._modules_and_flags():
            module.requires_grad_(trains)
        self.train(self.training)

    def _vae_trained_parts(self) -> list[nn.Module]:
        return [self.vae.encoder, self.vae.quant_conv]  # what `encode` runs

    def _modules_and_flags(self) -> list[tuple[nn.Module, bool]]:
        cfg = self.config
        return [(self.vae, False), *[(part, cfg.train_vae) for part in self._vae_trained_parts()],
                (self.image_encoder, cfg.train_image_encoder), (self.unet, True)]  # fmt: skip

    def train(self, mode: bool = True) -> SVDWorldModelObjective:
        """Train mode for the trained parts only: frozen encoders stay in eval mode."""
        super().train(mode)
        self.vae.train(mode and self.config.train_vae)
        self.image_encoder.train(mode and self.config.train_image_encoder)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The U-Net's parameters, plus the VAE encoder's and the CLIP tower's when their options are on."""
        modules = [self.unet]
        if self.config.train_vae:
            modules += self._vae_trained_parts()
        if self.config.train_image_encoder:
            modules.append(self.image_encoder)
        return [parameter for module in modules for parameter in module.parameters()]

    # === Randomness ===
    def latent_shape(self, frames: torch.Tensor) -> tuple[int, int, int, int, int]:
        batch_size, num_frames, _, height, width = frames.shape
        channels = int(self.vae.config.latent_channels)
        return batch_size, num_frames, channels, height // self.vae_scale, width // self.vae_scale

    def draw_noise(self, frames: torch.Tensor, generator: torch.Generator) -> ObjectiveNoise:
        """All of a step's draws, in a fixed order (sigma, cond_aug, the two dropout coins, aug, posterior, diffusion),
        each made whatever the options so that no option shifts the draws after it."""
        cfg, device = self.config, generator.device
        batch_size = frames.shape[0]

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

        sigma = sample_sigmas(cfg.edm, batch_size, generator)
        log_aug = cfg.cond_aug_log_mean + cfg.cond_aug_log_std * normal(batch_size)
        cond_aug = log_aug.exp() if cfg.cond_aug == "log-normal" else torch.full_like(log_aug, cfg.cond_aug_value)
        coins = torch.rand((2, batch_size), generator=generator, device=device, dtype=torch.float32)
        aug = normal(batch_size, *frames.shape[2:])
        latent_shape = self.latent_shape(frames)
        posterior, diffusion = normal(*latent_shape), normal(*latent_shape)
        return ObjectiveNoise(sigma, cond_aug, coins[0] >= cfg.image_embed_dropout, coins[1] >= cfg.cond_latent_dropout,
                              aug, posterior, diffusion)  # fmt: skip

    # === Conditioning ===
    def _added_time_ids(
        self, batch_size: int, cond_aug: torch.Tensor, fps: torch.Tensor | None, motion_bucket_id: torch.Tensor | None
    ) -> torch.Tensor:
        cfg, device = self.config, cond_aug.device
        fps_ids = torch.full((batch_size,), float(cfg.fps), device=device) if fps is None else fps.float().to(device)
        motion = (torch.full((batch_size,), float(cfg.motion_bucket_id), device=device)
                  if motion_bucket_id is None else motion_bucket_id.float().to(device))  # fmt: skip
        return torch.stack([fps_ids - 1.0, motion, cond_aug.float()], dim=1).to(self.unet.dtype)

    def condition(
        self,
        frames: torch.Tensor,
        noise: ObjectiveNoise,
        fps: torch.Tensor | None = None,
        motion_bucket_id: torch.Tensor | None = None,
    ) -> Conditioning:
        """Encode a batch of clips: x0 for every frame and the first frame's conditioning (before dropout)."""
        check_frames(frames, self.vae_scale * self.unet_scale)
        device = self.unet.device
        pixels = to_signed_unit(frames.to(device))  # [B, T, 3, H, W] float32 in [-1, 1]
        batch_size, num_frames = pixels.shape[:2]
        cond_aug = noise.cond_aug.to(device)
        augmented = pixels[:, 0] + append_dims(cond_aug, 4) * noise.aug.to(device)
        # One VAE call for the T clean frames and the augmented first frame of every sample.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_vae):
            posterior = self.vae.encode(torch.cat([pixels.flatten(0, 1), augmented]).to(self.vae.dtype)).latent_dist
        mean, std = posterior.mean.float(), posterior.std.float()
        clean, cond_latents = mean[: batch_size * num_frames], mean[batch_size * num_frames :]
        if self.config.clean_latents == "sample":
            clean = clean + std[: batch_size * num_frames] * noise.posterior.to(device).flatten(0, 1)
        clean = clean.unflatten(0, (batch_size, num_frames)) * float(self.vae.config.scaling_factor)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_image_encoder):
            image_embeds = clip_image_embeds(self.image_encoder, pixels[:, 0], self.clip_mean, self.clip_std)
        added_time_ids = self._added_time_ids(batch_size, cond_aug, fps, motion_bucket_id)
        dtype = self.unet.dtype
        return Conditioning(clean, cond_latents.to(dtype), image_embeds.to(dtype), added_time_ids)

    # === Loss ===
    def denoise(
        self,
        conditioning: Conditioning,
        sigma: torch.Tensor,
        diffusion_noise: torch.Tensor,
        keep_image_embed: torch.Tensor,
        keep_cond_latent: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, x_noisy): the U-Net's denoised estimate of x0 + sigma * n, with the given dropout applied."""
        device, dtype = self.unet.device, self.unet.dtype
        x0 = conditioning.clean_latents
        sigma = sigma.to(device)
        x_noisy = x0 + append_dims(sigma, x0.ndim) * diffusion_noise.to(device)
        _, _, c_in, c_noise = preconditioning(sigma)
        keep_embed = append_dims(keep_image_embed.to(device), 3).to(dtype)
        keep_latent = append_dims(keep_cond_latent.to(device), 4).to(dtype)
        cond = (conditioning.cond_latents * keep_latent).unsqueeze(1).expand(-1, x0.shape[1], -1, -1, -1)
        unet_input = torch.cat([(append_dims(c_in, x0.ndim) * x_noisy).to(dtype), cond], dim=2)
        output = self.unet(unet_input, c_noise, encoder_hidden_states=conditioning.image_embeds * keep_embed,
                           added_time_ids=conditioning.added_time_ids).sample  # fmt: skip
        return denoised(x_noisy, sigma, output), x_noisy

    def forward(
        self,
        frames: torch.Tensor,
        generator: torch.Generator,
        fps: torch.Tensor | None = None,
        motion_bucket_id: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """The training loss of a batch of clips, uint8 [B, T, 3, H, W]; `fps` / `motion_bucket_id` are optional
        per-sample [B] values (else the config's)."""
        check_frames(frames, self.vae_scale * self.unet_scale)
        noise = self.draw_noise(frames, generator)
        conditioning = self.condition(frames, noise, fps, motion_bucket_id)
        estimate, _ = self.denoise(conditioning, noise.sigma, noise.diffusion, noise.keep_image_embed,
                                   noise.keep_cond_latent)  # fmt: skip
        sigma = noise.sigma.to(estimate.device)
        return ObjectiveOutput(edm_loss(estimate, conditioning.clean_latents, sigma), sigma)

    @torch.no_grad()
    def validation_loss_by_sigma_bin(
        self,
        frames: torch.Tensor,
        sigmas: list[float],
        seed: int = 0,
        fps: torch.Tensor | None = None,
        motion_bucket_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample losses [len(sigmas), B] at fixed noise levels, without dropout and at cond_aug_value.

        The noise comes from a CPU generator seeded with `seed`, and the same diffusion noise is used at every sigma,
        so numbers are comparable across checkpoints (evaluate the same batches with the same seeds); the bins'
        differences then reflect sigma, not the draw. Modes are left as they are (call `eval()` first)."""
        check_frames(frames, self.vae_scale * self.unet_scale)
        noise = self.draw_noise(frames, torch.Generator(device="cpu").manual_seed(seed))
        noise.cond_aug = torch.full_like(noise.cond_aug, self.config.cond_aug_value)
        conditioning = self.condition(frames, noise, fps, motion_bucket_id)
        keep = torch.ones(frames.shape[0], dtype=torch.bool)
        losses = []
        for value in sigmas:
            sigma = torch.full((frames.shape[0],), float(value), dtype=torch.float32)
            estimate, _ = self.denoise(conditioning, sigma, noise.diffusion, keep, keep)
            losses.append(edm_loss(estimate, conditioning.clean_latents, sigma.to(estimate.device)))
        return torch.stack(losses)
