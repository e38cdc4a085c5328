"""The released DyVA code's computation of the SVD features, re-expressed with diffusers' own pipeline helpers: the peer
that our `release`-mode encoder is compared against.

Per batch, as the released encoder runs it: every image goes uint8 -> PIL -> `video_processor.preprocess`; the CLIP
embedding (antialiased resize to 224, `_encode_image`), the VAE conditioning latent (+0.02 noise, `_encode_vae_image`)
and the added time ids are all batch-doubled for classifier-free guidance ([uncond; cond]); pure noise latents
(`prepare_latents`, times the scheduler's initial sigma, `scale_model_input`) are doubled too; the FULL U-Net runs on
the doubled batch (mid and up blocks included), the last down block's output is captured by a hook, its conditional
half is kept, and `scheduler.step` is applied to it with noise as the "sample". Noise comes from the global RNG, as in
the released code. The values equal our encoder's up to the noise draws (tests/test_svd_encoder.py checks that).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from PIL import Image

from prismatic.models.backbones.vision.svd_components import SVDComponents
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig


class ReleasedSVDFeatures:
    """Callable: uint8 frames [B, 3, S, S] (one image per sample) -> features [B, T * h' * w', C]."""

    def __init__(self, components: SVDComponents, config: SVDEncoderConfig) -> None:
        if components.vae.decoder is None:
            raise ValueError("The released pipeline is built from a complete checkpoint: keep the VAE decoder.")
        if getattr(components.unet, "mid_block", None) is None:
            raise ValueError("The released computation runs the full U-Net: pass components with mid and up blocks.")
        self.pipe = StableVideoDiffusionPipeline(vae=components.vae, image_encoder=components.image_encoder,
                                                 unet=components.unet, scheduler=copy.deepcopy(components.scheduler),
                                                 feature_extractor=components.feature_extractor)  # fmt: skip
        self.config = config
        self._captured: list[torch.Tensor] = []
        self.pipe.unet.down_blocks[-1].register_forward_hook(lambda _m, _a, out: self._captured.append(out[0]))

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def _preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """The released round trip: uint8 tensor -> PIL -> the pipeline's preprocess (a same-size resize, [-1, 1])."""
        size = self.config.image_size
        images = [Image.fromarray(np.ascontiguousarray(f.permute(1, 2, 0).cpu().numpy())) for f in frames]
        return torch.cat([self.pipe.video_processor.preprocess(im, height=size, width=size) for im in images])

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        pipe, cfg, device = self.pipe, self.config, self.device
        batch, dtype = frames.shape[0], pipe.unet.dtype
        pixels = frames.to(device).float() / 255.0 * 2.0 - 1.0
        clip_input = (_resize_with_antialiasing(pixels, (224, 224)) + 1.0) / 2.0
        embeds = pipe._encode_image(clip_input, device, 1, True)  # [2B, 1, D]: [zeros; e]
        image = self._preprocess(frames).to(device)
        image = image + cfg.noise_aug_strength * torch.randn_like(image)
        latents_cond = pipe._encode_vae_image(image, device, 1, True)  # [2B, 4, h, w]: [zeros; z]
        latents_cond = latents_cond.unsqueeze(1).repeat(1, cfg.num_frames, 1, 1, 1).to(dtype)
        time_ids = pipe._get_add_time_ids(cfg.fps - 1, cfg.motion_bucket_id, cfg.noise_aug_strength, dtype, batch,
                                          1, True).to(device)  # fmt: skip
        scheduler = pipe.scheduler
        scheduler.set_timesteps(1, device=device)  # a fresh one-step schedule per call, as the released code
        t = scheduler.timesteps[0]
        channels = pipe.unet.config.in_channels
        noise = pipe.prepare_latents(batch, cfg.num_frames, channels, cfg.image_size, cfg.image_size, dtype, device,
                                     None)  # fmt: skip
        model_input = scheduler.scale_model_input(torch.cat([noise] * 2), t)
        model_input = torch.cat([model_input, latents_cond], dim=2)
        self._captured.clear()
        pipe.unet(model_input, t, encoder_hidden_states=embeds.to(dtype), added_time_ids=time_ids, return_dict=False)
        down = self._captured.pop().unflatten(0, (2 * batch, cfg.num_frames)).chunk(2)[1]  # the conditional half
        middle = torch.randn_like(down) * scheduler.init_noise_sigma
        features = scheduler.step(down, t, middle).prev_sample.to(dtype)
        return features.permute(0, 1, 3, 4, 2).reshape(batch, -1, features.shape[2])
