"""The paper's VAE-only ablation (`"vae"` stream): the scaled VAE latent of image 1 through a small trainable conv stem
down to the token grid and width of the SVD U-Net's last down block, so the projector of an SVD stream fits it."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

from prismatic.models.backbones.vision.base_vision import PixelValues, StreamSpec, VisionBackbone
from prismatic.models.backbones.vision.svd_components import drop_vae_decoder, get_svd_components
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.backbones.vision.svd_unet import SVDImageTransform, to_signed_unit, unpack_uint8_frames


class VAEOnlyBackbone(VisionBackbone):
    """The paper's VAE-only ablation (`"vae"` stream): no U-Net step, just the image's latent.

    Image 1 -> scaled VAE posterior mode [4, S/8, S/8] (deterministic, no noise augmentation) -> a trainable conv stem
    of stride-2 3x3 convs with GELU, one per U-Net downsampler, widening to the U-Net's last-down-block width. At 448
    px that is 56 -> 28 -> 14 -> 7 with 4 -> 320 -> 640 -> 1280 channels: 49 tokens x 1280, the shape of one SVD frame
    slot, so the same projector fits. The paper only says "several convolutional layers"; this layout is our choice.
    The stem is named in `trainable_module_names` so the freezing code keeps it trainable with a frozen VAE.
    """

    stream_name = "vae"

    def __init__(
        self,
        vision_backbone_id: str,
        config: SVDEncoderConfig,
        vae: AutoencoderKLTemporalDecoder,
        embed_dim: int,
        num_downsamples: int,
    ) -> None:
        super().__init__(vision_backbone_id)
        self.config, self.vae, self.embed_dim = config, vae, embed_dim
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        total_factor = vae_factor * 2**num_downsamples
        if config.image_size % total_factor != 0:
            raise ValueError(f"image_size={config.image_size} must be a multiple of {total_factor} for the VAE stem.")
        self.grid_size = config.image_size // total_factor
        widths = [int(vae.config.latent_channels)] + [
            max(embed_dim // 2 ** (num_downsamples - 1 - i), 1) for i in range(num_downsamples)
        ]
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):  # a seeded stem init that leaves the global RNG alone
            torch.manual_seed(config.seed)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
                if i < num_downsamples - 1:
                    layers.append(nn.GELU())
        self.stem = nn.Sequential(*layers) if layers else nn.Conv2d(widths[0], embed_dim, kernel_size=1)
        self.stem.to(vae.dtype)

    @classmethod
    def from_config(
        cls,
        vision_backbone_id: str,
        config: SVDEncoderConfig,
        torch_dtype: torch.dtype = torch.float32,
        load_weights: bool = True,
    ) -> VAEOnlyBackbone:
        """Only the VAE (encoder) is loaded; the U-Net config (no weights) fixes the stem's depth and width.
        `load_weights=False` reads nothing (built-in real architecture, or tiny when config.model_id is None)."""
        if config.model_id is None or not load_weights:
            components = get_svd_components(config.model_id, config.variant,
                                            config.seed, config.image_size, torch_dtype, load_weights=False)  # fmt: skip
            vae, unet_config = components.vae, dict(components.unet.config)
        else:  # only the VAE's weights are needed; the U-Net's config fixes the stem's depth and width
            vae = AutoencoderKLTemporalDecoder.from_pretrained(
                config.model_id, subfolder="vae", variant=config.variant, torch_dtype=torch_dtype
            )
            unet_config = UNetSpatioTemporalConditionModel.load_config(config.model_id, subfolder="unet")
        drop_vae_decoder(vae)
        embed_dim = int(unet_config["block_out_channels"][-1])
        return cls(vision_backbone_id, config, vae, embed_dim, len(unet_config["down_block_types"]) - 1)

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return (StreamSpec(self.stream_name, self.embed_dim, self.grid_size * self.grid_size),)

    @property
    def trainable_module_names(self) -> tuple[str, ...]:
        return ("stem",)

    def generative_parts(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def cache_description(self) -> dict[str, Any]:
        # `variant` stays in (unlike the SVD encoder's description), as it always has: dropping it now would rename
        # every existing VAE-only cache directory.
        return {"kind": "vae-only", "config": {k: v for k, v in asdict(self.config).items() if k != "model_id"}}

    def get_image_transform(self) -> SVDImageTransform:
        return SVDImageTransform(self.config.image_size, max_images=1, key=self.stream_name, first_only=True)

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        frames, _ = unpack_uint8_frames(pixel_values, self.stream_name)
        pixels = to_signed_unit(frames[:, 0].to(self.vae.device)).to(self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode() * float(self.vae.config.scaling_factor)
        stem_dtype = next(self.stem.parameters()).dtype
        grid = self.stem(latents.to(stem_dtype))  # [B, C, h', w']
        return {self.stream_name: grid.flatten(2).transpose(1, 2)}
