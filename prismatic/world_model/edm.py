"""EDM (Karras et al. 2022) training math for Stable Video Diffusion: noise levels, v-preconditioning, the weighted loss.

SVD is a v-prediction model in EDM's sigma parametrisation: a noisy latent is `x = x0 + sigma * n` and the network
output F is turned into a denoised estimate `D = c_skip * x + c_out * F`. The preconditioning here is generative-models'
`VScalingWithEDMcNoise` (the scaling of its `configs/inference/svd.yaml`), which is exactly what diffusers'
`EulerDiscreteScheduler` does with `prediction_type="v_prediction"` and `timestep_type="continuous"` (SVD's scheduler
config), so a U-Net trained with these functions samples correctly with `StableVideoDiffusionPipeline`:

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)             step():  sample / (sigma^2 + 1)
    c_out   = -sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)   step():  model_output * (-sigma / sqrt(sigma^2 + 1))
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)                     scale_model_input(): sample / sqrt(sigma^2 + 1)
    c_noise = 0.25 * ln(sigma)                                      timesteps = 0.25 * sigma.log()

with sigma_data = 1 (diffusers hard-codes it, hence the check in `EDMConfig`). The loss weight is EDM's
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (generative-models' `EDMWeighting`; `VWeighting` is
the sigma_data = 1 case), which makes the weighted denoising error an unweighted error on the v target.

Everything is plain torch; every random draw comes from a caller's `torch.Generator`, so a step is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EDMConfig:
    """Training noise levels: ln(sigma) ~ N(p_mean, p_std^2).

    The defaults 0.7 / 1.6 are the SVD fine-tuning values of the diffusers-ecosystem training scripts
    (pixeli99/SVD_Xtend `train_svd.py`: `rand_log_normal(loc=0.7, scale=1.6)`, copied by most public SVD
    fine-tunes). Stability did not release SVD's training configs; its generative-models `EDMSampling` defaults to
    EDM's image values -1.2 / 1.2, and the SVD paper (Blattmann et al. 2023) shifts the schedule towards more noise
    for its high-resolution video stages, which is what 0.7 does (median sigma 2.0 against 0.3). Both are options.
    """

    p_mean: float = 0.7
    p_std: float = 1.6
    sigma_data: float = 1.0

    def __post_init__(self) -> None:
        if self.p_std <= 0:
            raise ValueError(f"EDMConfig.p_std must be positive (the spread of ln sigma), got {self.p_std}.")
        if self.sigma_data != 1.0:
            # diffusers' EulerDiscreteScheduler (so StableVideoDiffusionPipeline) computes c_in, c_skip and c_out
            # with sigma_data = 1; any other value trains a model that pipeline samples wrongly.
            raise ValueError(
                f"EDMConfig.sigma_data must be 1.0 (got {self.sigma_data}): SVD's v-parametrisation and diffusers' "
                "EulerDiscreteScheduler assume it. Keep the default."
            )


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample values [B] -> [B, 1, ..., 1] with `ndim` dimensions, to broadcast against a batch."""
    if values.ndim > ndim:
        raise ValueError(f"Cannot broadcast a {values.ndim}-d tensor to {ndim} dimensions.")
    return values.reshape(*values.shape, *([1] * (ndim - values.ndim)))


def sample_sigmas(config: EDMConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One training sigma per sample, float32 [B] on the generator's device: exp(p_mean + p_std * N(0, 1))."""
    normal = torch.randn(batch_size, generator=generator, device=generator.device, dtype=torch.float32)
    return (config.p_mean + config.p_std * normal).exp()


def validation_sigmas(config: EDMConfig, count: int = 5) -> list[float]:
    """`count` fixed sigmas spread over the training distribution: its quantiles at (i + 1/2) / count.

    Each is the centre of a bin of equal training probability, so per-sigma validation losses cover the noise levels
    in proportion to how often training sees them."""
    if count < 1:
        raise ValueError(f"Need at least one validation sigma, got count={count}.")
    probabilities = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    log_sigmas = config.p_mean + config.p_std * torch.special.ndtri(probabilities)
    return [float(sigma) for sigma in log_sigmas.exp()]


def preconditioning(
    sigma: torch.Tensor, sigma_data: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of the v-parametrisation, each shaped like `sigma` (see the module docstring)."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = -sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def denoised(x_noisy: torch.Tensor, sigma: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """D = c_skip * x + c_out * F, in float32 (diffusers' `step` upcasts the same way); sigma is per sample [B]."""
    c_skip, c_out, _, _ = preconditioning(append_dims(sigma.float(), x_noisy.ndim))
    return c_skip * x_noisy.float() + c_out * model_output.float()


def loss_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoised_latents: torch.Tensor, clean_latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted MSE [B]: mean over all but the batch dimension of lambda(sigma) * (D - x0)^2, float32.

    Per sample (not reduced over the batch) so callers can bin it by sigma; the training loss is its mean."""
    if denoised_latents.shape != clean_latents.shape:
        raise ValueError(f"Denoised {tuple(denoised_latents.shape)} and clean {tuple(clean_latents.shape)} differ.")
    weight = append_dims(loss_weight(sigma.float()), clean_latents.ndim)
    error = (denoised_latents.float() - clean_latents.float()) ** 2
    return (weight * error).flatten(1).mean(dim=1)
