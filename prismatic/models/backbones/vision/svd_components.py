"""The five parts of a Stable Video Diffusion checkpoint the generative encoder uses: load, build tiny, save.

Real checkpoints load from a hub id or a local directory in the diffusers layout (`vae/`, `unet/`, `image_encoder/`,
`feature_extractor/`, `scheduler/`) through each library's own `from_pretrained`. Tests and the CPU demo build tiny
random components from config objects (seeded) and save them in the same layout, plus a `model_index.json`, so the
directory is also a valid `StableVideoDiffusionPipeline` directory and loads back through the real code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

# The settings of `stabilityai/stable-video-diffusion-img2vid`'s scheduler/scheduler_config.json. The file also holds
# `clip_sample=false`, `set_alpha_to_one=false` and `skip_prk_steps=true`, which EulerDiscreteScheduler does not take
# (diffusers ignores them when loading), and no `final_sigmas_type`, so the default "zero" applies.
SVD_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}

# OpenAI CLIP normalisation, as in the SVD repo's feature_extractor/preprocessor_config.json.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class SVDComponents:
    """What the encoder needs from an SVD checkpoint (the VAE decoder may have been dropped: it is never used)."""

    vae: AutoencoderKLTemporalDecoder
    unet: UNetSpatioTemporalConditionModel
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler: EulerDiscreteScheduler


def drop_vae_decoder(vae: AutoencoderKLTemporalDecoder) -> None:
    """Free the temporal decoder (about half the VAE): feature extraction only ever encodes."""
    vae.decoder = None


def has_vae_decoder(vae: AutoencoderKLTemporalDecoder) -> bool:
    return getattr(vae, "decoder", None) is not None


def load_svd_components(
    model_id: str, variant: str | None = None, torch_dtype: torch.dtype = torch.float32, drop_decoder: bool = True
) -> SVDComponents:
    """Load each component from a hub id or a local diffusers-layout directory, in `torch_dtype`."""
    location = Path(model_id)
    if location.exists() and not (location / "unet").is_dir():
        raise FileNotFoundError(
            f"{model_id} exists but has no unet/ folder; point SVDEncoderConfig.model_id at a diffusers-layout SVD "
            "directory (vae/, unet/, image_encoder/, feature_extractor/, scheduler/) or a hub id."
        )
    overwatch.info(f"Loading SVD components from {model_id} (variant={variant}, dtype={torch_dtype})")
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        model_id, subfolder="vae", variant=variant, torch_dtype=torch_dtype
    )
    unet = UNetSpatioTemporalConditionModel.from_pretrained(
        model_id, subfolder="unet", variant=variant, torch_dtype=torch_dtype
    )
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        model_id, subfolder="image_encoder", variant=variant, dtype=torch_dtype
    )
    feature_extractor = CLIPImageProcessor.from_pretrained(model_id, subfolder="feature_extractor")
    scheduler = EulerDiscreteScheduler.from_pretrained(model_id, subfolder="scheduler")
    if drop_decoder:
        drop_vae_decoder(vae)
    return SVDComponents(vae, unet, image_encoder, feature_extractor, scheduler)


# A randomly initialised VAE's latent means are ~20x smaller than a trained SVD VAE's: std 0.27 against 5.5 (about
# 1/scaling_factor) on assets/rocket.png. At that scale the U-Net's unit-noise input channels drown its conditioning
# channels (measured on the tiny encoder over demo scenes: features varied 11.5x more with the noise draw than with
# the image), which is not how the real model behaves. The tiny VAE's latent means are scaled up to the real
# statistics instead (then features vary 8x more with the image than with the noise).
TINY_VAE_LATENT_GAIN = 20.0


def _match_real_latent_scale(vae: AutoencoderKLTemporalDecoder) -> None:
    """Scale the mean half of the VAE's posterior moments (`quant_conv` outputs [mean, logvar]) by the gain."""
    channels = int(vae.config.latent_channels)
    with torch.no_grad():
        vae.quant_conv.weight[:channels].mul_(TINY_VAE_LATENT_GAIN)
        vae.quant_conv.bias[:channels].mul_(TINY_VAE_LATENT_GAIN)


def build_tiny_svd_components(seed: int, image_size: int = 64) -> SVDComponents:
    """Random, seeded, CPU-cheap components with SVD's building blocks, at a quarter of its depth of resolutions.

    The VAE has 3 blocks (4x downsampling, 4 latent channels), its latents scaled to a trained VAE's statistics (see
    `TINY_VAE_LATENT_GAIN`). The U-Net has SVD's block kinds in SVD's order (spatio-temporal cross-attention down
    blocks, then a plain one; mid block; mirrored up blocks) but 3 down blocks (2 downsamplers) instead of 4, so the
    total downsampling is the same 16x (a 4 x 4 token grid per frame at 64 px) while the attention runs at 16 x 16
    latents instead of 32 x 32: 4.7x faster than a 4-block tiny U-Net, which matters for every CPU test and the
    demo. The CLIP tower keeps the real 224 px input (the SVD pipeline resizes to 224 whatever the encoder) with 32 px
    patches so it stays tiny. The global RNG is left untouched.
    """
    vae_factor, unet_factor = 4, 4
    if image_size % (vae_factor * unet_factor) != 0:
        raise ValueError(f"Tiny SVD needs image_size divisible by {vae_factor * unet_factor}, got {image_size}.")
    clip_dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            block_out_channels=(32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            sample_size=image_size,
        )
        _match_real_latent_scale(vae)
        unet = UNetSpatioTemporalConditionModel(
            sample_size=image_size // vae_factor,
            in_channels=8,
            out_channels=4,
            down_block_types=(
                "CrossAttnDownBlockSpatioTemporal",
                "CrossAttnDownBlockSpatioTemporal",
                "DownBlockSpatioTemporal",
            ),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64, 64),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=3 * 8,  # three added time ids, 8 sinusoidal dims each
            layers_per_block=2,
            cross_attention_dim=clip_dim,
            num_attention_heads=(2, 4, 4),
            num_frames=8,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=clip_dim,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=224,
                patch_size=32,
                projection_dim=clip_dim,
            )
        )
    for module in (vae, unet, image_encoder):
        module.eval()
    return SVDComponents(vae, unet, image_encoder, clip_image_processor(), svd_scheduler())


def clip_image_processor() -> CLIPImageProcessor:
    """The SVD repo's feature_extractor settings (only mean/std are used: the encoder resizes on its own)."""
    return CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
    )


def svd_scheduler() -> EulerDiscreteScheduler:
    with torch.device("cpu"):  # its tables must stay real even when modules are being built on the meta device
        return EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)


def build_svd_architecture() -> SVDComponents:
    """The real img2vid architecture from built-in configs, randomly initialised, without reading any file.

    Meant for `with torch.device("meta"):` (shape checks, FLOP counts, building a 7B VLM without weights); on a real
    device it allocates ~2.3B parameters. img2vid and img2vid-xt share this architecture (only the U-Net's
    `num_frames` default differs, which the encoder does not use).
    """
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
        force_upcast=True,
    )
    # diffusers' defaults are SVD's U-Net: (320, 640, 1280, 1280), 2 layers per block, heads (5, 10, 20, 20),
    # cross-attention 1024 (the ViT-H projection), added-time embedding 3 x 256 -> 768.
    unet = UNetSpatioTemporalConditionModel(sample_size=96, num_frames=14)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
            projection_dim=1024,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
    )
    for module in (vae, unet, image_encoder):
        module.eval()
    return SVDComponents(vae, unet, image_encoder, clip_image_processor(), svd_scheduler())


def get_svd_components(
    model_id: str | None,
    variant: str | None,
    seed: int,
    image_size: int,
    torch_dtype: torch.dtype = torch.float32,
    load_weights: bool = True,
) -> SVDComponents:
    """The one way the encoders get components: tiny random ones (`model_id=None`), the real architecture without
    reading anything (`load_weights=False`, for `meta`-device builds), or a checkpoint (hub id or local directory).
    The VAE decoder is always dropped."""
    if model_id is not None and load_weights:
        return load_svd_components(model_id, variant, torch_dtype)
    components = build_tiny_svd_components(seed, image_size) if model_id is None else build_svd_architecture()
    drop_vae_decoder(components.vae)
    for module in (components.vae, components.unet, components.image_encoder):
        if module.dtype != torch_dtype:  # (diffusers warns on any dtype cast, even a no-op one)
            module.to(torch_dtype)
    return components


def save_svd_components(components: SVDComponents, directory: str | Path) -> Path:
    """Write the diffusers layout plus model_index.json (a loadable `StableVideoDiffusionPipeline` directory)."""
    if not has_vae_decoder(components.vae):
        raise ValueError(
            "These components have no VAE decoder (dropped at load time), so the saved directory would not be a valid "
            "SVD checkpoint; save the components before dropping it (load_svd_components(..., drop_decoder=False))."
        )
    directory = Path(directory)
    pipeline = StableVideoDiffusionPipeline(
        vae=components.vae,
        image_encoder=components.image_encoder,
        unet=components.unet,
        scheduler=components.scheduler,
        feature_extractor=components.feature_extractor,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory
