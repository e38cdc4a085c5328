"""CogVideoX image-to-video as a generative encoder: one denoiser query per sample, tapped at a transformer block.

Two checkpoints, told apart by the loaded transformer's config:
- 1.5 (`THUDM/CogVideoX1.5-5B-I2V`, the default): RoPE only, temporal patch 2 (two latent frames per token frame), an
  `ofs` embedding, any resolution that is a multiple of 16 px (default 448 x 448);
- 1.0 (`THUDM/CogVideoX-5b-I2V`): a learned positional table sized for exactly 480 x 720 (any other size is an
  error), no temporal patch, no `ofs`. At any frame count other than the table's (13 latent frames) diffusers swaps
  the table for a sin-cos one; that is the pipeline's behaviour and is kept.

`mode="pipeline"` (default) builds exactly what `CogVideoXImageToVideoPipeline.__call__` gives the transformer at its
first denoising step with guidance_scale=1, by calling the pipeline's own helpers on a pipeline that shares this
module's parts: `prepare_latents` (the VAE posterior *sample* of the image, scaled as the checkpoint says, at latent
slot 0 of the conditioning, zeros elsewhere, and unit noise), `_prepare_rotary_positional_embeddings`, the scheduler's
first timestep of `num_inference_steps` (default 50: 999), `scale_model_input`, [noise, conditioning] concatenated on
channels, `ofs` = 2.0 (a literal of `__call__`) when the model has one, and the stored empty-prompt embedding. T =
`num_frames` latent frames enter the helpers as 4(T-1)+1 pixel frames, padded as `__call__` pads them (1.5: one more
latent frame when T is odd). `query="noised-image"` instead puts image 1's conditioning latent, replicated over the
latent frames and noised with `scheduler.add_noise` to `timestep`, in the noise channels, and passes that timestep.

`mode="release"` is the computation the authors' released CogVideoX models were trained on (their `dev` branch).
Differences from pipeline mode, all deliberate:
- resize: bicubic squash instead of the pipeline's Lanczos (still [-1, 1] afterwards);
- timestep 999 always (the 50-step first timestep too, but not tied to `num_inference_steps`); only `first-step`;
- `ofs` = 0 instead of 2.0;
- no rotary embedding at all (`image_rotary_emb=None`): 1.5 has no other position signal, so the features carry no
  token position; the projector was trained on exactly that, so it is kept;
- the pixel frame count 4(T-1)+1 goes to `prepare_latents` without `__call__`'s padding (the same for even T; the
  authors' models use T = 2 at 448 px and T = 8 at 224 px);
- keyframes: slots floor(linspace(0, L-1, N)) written for images 2..N in order, a later write replacing an earlier
  one, so with L = 2 and N >= 3 image 1 is overwritten (what the authors' code did); at most 8 images (they dropped
  the 9th and later silently; here that is an error);
- randomness: the authors drew from the unseeded global RNG; here every draw comes from the sample's content-seeded
  generator (cacheable, batch-invariant), in the pipeline's draw order.
The tap (block num_blocks // 2) and raw tokens (pool_grid 0) are configuration, set by the registry.

Keyframes (K > 1 images, pipeline mode) are this project's design, not diffusers' (the pipeline takes one image):
image 1 is the pipeline's first-frame conditioning; image k >= 2 is VAE-encoded by the same `prepare_latents` (its
posterior sample from the sample's generator, drawn after all of the pipeline's own draws so single-image samples
are unchanged; the noise it also draws is dropped) and written into conditioning slot round(linspace(0, L-1, K))[k]
(numpy rounding) of the L latent frames the denoiser sees, so the last keyframe lands in the last latent frame. Only
the conditioning channels change. K is at most `num_frames`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
)
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from PIL import Image
from transformers import T5EncoderModel

from prismatic.models.backbones.vision.video_config import VideoEncoderConfig, VideoMode
from prismatic.models.backbones.vision.video_encoder import (
    DenoiserCall,
    VideoComponents,
    VideoDiTEncoder,
    VideoFrameTransform,
)
from prismatic.models.backbones.vision.video_prompt import PromptEmbedding, load_text_parts, prompt_provenance

PIPELINE_CLASS = "CogVideoXImageToVideoPipeline"
PIPELINE_OFS = 2.0  # `ofs` in CogVideoXImageToVideoPipeline.__call__ (a literal there, so repeated here)
RELEASE_TIMESTEP = 999
RELEASE_MAX_IMAGES = 8  # the authors' clamp (they dropped later images silently)
DEFAULT_SIZE = (448, 448)  # 1.5 at the authors' fused-model resolution
TINY_SIZE = (64, 64)
_SCHEDULERS = {cls.__name__: cls for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler)}
# Pipelines of the other generative encoders, to name the backbone a wrongly passed directory belongs to.
_OTHER_FAMILIES = {"StableVideoDiffusionPipeline": "svd", "WanImageToVideoPipeline": "wan",
                   "LTXImageToVideoPipeline": "ltx", "LTXConditionPipeline": "ltx"}  # fmt: skip

# The published configs of THUDM/CogVideoX1.5-5B-I2V (transformer, vae, scheduler folders).
COGVIDEOX15_TRANSFORMER: dict[str, Any] = {
    "num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 32, "out_channels": 16,
    "flip_sin_to_cos": True, "freq_shift": 0, "time_embed_dim": 512, "ofs_embed_dim": 512, "text_embed_dim": 4096,
    "num_layers": 42, "dropout": 0.0, "attention_bias": True, "sample_width": 300, "sample_height": 300,
    "sample_frames": 81, "patch_size": 2, "patch_size_t": 2, "temporal_compression_ratio": 4,
    "max_text_seq_length": 226, "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0, "use_rotary_positional_embeddings": True,
    "use_learned_positional_embeddings": False, "patch_bias": False,
}  # fmt: skip
COGVIDEOX15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 256, 512), "latent_channels": 16, "layers_per_block": 3, "norm_num_groups": 32,
    "norm_eps": 1e-6, "temporal_compression_ratio": 4, "sample_height": 480, "sample_width": 720,
    "scaling_factor": 0.7, "invert_scale_latents": True, "force_upcast": True,
    "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip
COGVIDEOX_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "v_prediction",
    "timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0,
}  # fmt: skip


# === Loading, building, saving ===
def check_pipeline_directory(model_id: str, folders: tuple[str, ...]) -> None:
    """For a local directory: it must be a CogVideoX image-to-video pipeline holding `folders` (hub ids pass)."""
    location = Path(model_id)
    if not location.is_dir():
        return
    index = location / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{model_id} has no model_index.json, so it is not a diffusers pipeline directory; pass a local copy of "
            "a CogVideoX image-to-video checkpoint (e.g. THUDM/CogVideoX1.5-5B-I2V) or its hub id."
        )
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != PIPELINE_CLASS:
        family = _OTHER_FAMILIES.get(class_name)
        other = f" (a `{family}` checkpoint: use the {family} backbones)" if family else ""
        raise ValueError(
            f"{model_id} holds a {class_name}{other}, not a {PIPELINE_CLASS}. The cogvideox encoder needs a CogVideoX "
            "image-to-video checkpoint (--model.video_model_id): THUDM/CogVideoX1.5-5B-I2V or THUDM/CogVideoX-5b-I2V."
        )
    for folder in folders:
        if not (location / folder).is_dir():
            raise FileNotFoundError(
                f"{model_id} has no {folder}/ folder, which the cogvideox encoder loads; the download is incomplete "
                f"(fetch the {folder}/ folder of the checkpoint) or this is not a full pipeline directory."
            )


def load_cogvideox_components(model_id: str, variant: str | None, torch_dtype: torch.dtype) -> VideoComponents:
    """Transformer, VAE and scheduler of a hub id or local pipeline directory (never the text encoder)."""
    check_pipeline_directory(model_id, ("transformer", "vae", "scheduler"))
    transformer = CogVideoXTransformer3DModel.from_pretrained(
        model_id, subfolder="transformer", variant=variant, torch_dtype=torch_dtype
    )
    vae = AutoencoderKLCogVideoX.from_pretrained(model_id, subfolder="vae", variant=variant, torch_dtype=torch_dtype)
    scheduler_config = CogVideoXDDIMScheduler.load_config(model_id, subfolder="scheduler")
    scheduler_class = _SCHEDULERS.get(scheduler_config.get("_class_name"))
    if scheduler_class is None:
        raise ValueError(
            f"{model_id}/scheduler is a {scheduler_config.get('_class_name')}; CogVideoX checkpoints use one of "
            f"{sorted(_SCHEDULERS)}. Point --model.video_model_id at an unmodified CogVideoX I2V checkpoint."
        )
    return VideoComponents(transformer.eval(), vae.eval(), scheduler_class.from_config(scheduler_config))


# A random VAE's posterior is nearly all noise: latent means of std ~0.3 under a posterior std ~1 (64 px random
# images), so the *sampled* image latent the denoiser is conditioned on would barely depend on the image, unlike a
# trained VAE's (a sharp posterior around informative means). The tiny VAE's means are scaled up to unit scale and
# its log-variances shifted down (posterior std ~0.05) so the tiny twin's features follow the image.
TINY_LATENT_GAIN, TINY_LOGVAR_SHIFT = 3.0, -6.0


def _sharpen_tiny_posterior(vae: AutoencoderKLCogVideoX) -> None:
    """Scale the mean half and shift the log-variance half of the encoder's output moments [mean, logvar]."""
    channels, conv = int(vae.config.latent_channels), vae.encoder.conv_out.conv
    with torch.no_grad():
        conv.weight[:channels].mul_(TINY_LATENT_GAIN)
        conv.bias[:channels].mul_(TINY_LATENT_GAIN)
        conv.bias[channels:].add_(TINY_LOGVAR_SHIFT)


def build_tiny_cogvideox_components(
    seed: int, version: Literal["1.0", "1.5"] = "1.5", height: int = 64, width: int = 64
) -> VideoComponents:
    """Seeded random CogVideoX parts with the real block structure, small enough for CPU tests.

    The VAE has the real 4 blocks (8x spatial, 4x temporal compression), 4 latent channels and a sharpened posterior
    (`TINY_LATENT_GAIN`): 64 px frames give an 8 x 8 latent, a 4 x 4 token grid. 1.5 style (default): RoPE, temporal
    patch 2, an `ofs` embedding, latents scaled by 1/0.7. 1.0 style: a learned positional table for exactly `height` x
    `width` and 4 latent frames (13 pixel frames), no temporal patch, no `ofs`, latents scaled by 0.7. The global RNG
    is left untouched."""
    v15 = version == "1.5"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
            sample_height=height, sample_width=width, scaling_factor=0.7, invert_scale_latents=v15,
        )  # fmt: skip
        _sharpen_tiny_posterior(vae)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
            ofs_embed_dim=16 if v15 else None, text_embed_dim=32, num_layers=4, max_text_seq_length=8,
            sample_height=32 if v15 else height // 8, sample_width=32 if v15 else width // 8, sample_frames=13,
            patch_size=2, patch_size_t=2 if v15 else None, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=not v15, patch_bias=not v15,
        )  # fmt: skip
    with torch.device("cpu"):
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
    return VideoComponents(transformer.eval(), vae.eval(), scheduler)


def save_cogvideox_components(
    components: VideoComponents, directory: str | Path, tokenizer: Any = None, text_encoder: nn.Module | None = None
) -> Path:
    """Write a `CogVideoXImageToVideoPipeline` directory. Without a tokenizer and text encoder (the encoder needs
    neither), load it back with `from_pretrained(directory, tokenizer=None, text_encoder=None)`."""
    if getattr(components.vae, "decoder", None) is None:
        raise ValueError("These components have no VAE decoder (dropped), so they are no valid checkpoint; save first.")
    pipeline = CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=components.vae, transformer=components.transformer,
        scheduler=components.scheduler,
    )  # fmt: skip
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def keyframe_slots(count: int, latent_frames: int, mode: VideoMode) -> list[int]:
    """Conditioning slot of each of `count` images (image 1 first, always slot 0) among `latent_frames` slots:
    round(linspace) in pipeline mode (distinct while count <= latent_frames), floor(linspace) in release mode (the
    authors' mapping; duplicates are written in order, the later image winning)."""
    positions = np.linspace(0, latent_frames - 1, count)
    return [int(slot) for slot in (np.floor(positions) if mode == "release" else np.round(positions))]


class CogVideoXEncoder(VideoDiTEncoder):
    """CogVideoX 1.0 / 1.5 image-to-video, queried once per sample (see the module docstring for both modes)."""

    family = "cogvideox"
    default_model_id = "THUDM/CogVideoX1.5-5B-I2V"
    blocks_attr = "transformer_blocks"
    head_attrs = ("norm_final", "norm_out", "proj_out")
    block_classes = (CogVideoXBlock,)
    real_prompt_tokens = 226  # max_text_seq_length of both real checkpoints

    def __init__(
        self,
        vision_backbone_id: str,
        config: VideoEncoderConfig,
        components: VideoComponents,
        architecture_only: bool = False,
    ) -> None:
        if config.mode == "release" and config.query != "first-step":
            raise ValueError(
                "CogVideoX release mode reproduces the authors' first-step query only; use query='first-step', or "
                f"mode='pipeline' for query={config.query!r}."
            )
        in_channels, latent_channels = components.transformer.config.in_channels, components.vae.config.latent_channels
        if in_channels != 2 * latent_channels:
            raise ValueError(
                f"This CogVideoX transformer takes {in_channels} channels, not 2 x {latent_channels} (noise + image "
                "latent): it is no image-to-video model. Use an I2V checkpoint such as THUDM/CogVideoX1.5-5B-I2V."
            )
        super().__init__(vision_backbone_id, config, components, architecture_only)

    # === Construction ===
    @classmethod
    def load_components(cls, config: VideoEncoderConfig, torch_dtype: torch.dtype) -> VideoComponents:
        return load_cogvideox_components(config.model_id or cls.default_model_id, config.variant, torch_dtype)

    @classmethod
    def save_components(cls, components: VideoComponents, directory: Path) -> Path:
        return save_cogvideox_components(components, directory)

    @classmethod
    def build_tiny_components(cls, seed: int) -> VideoComponents:
        return build_tiny_cogvideox_components(seed)

    @classmethod
    def build_architecture(cls) -> VideoComponents:
        transformer = CogVideoXTransformer3DModel(**COGVIDEOX15_TRANSFORMER)
        vae = AutoencoderKLCogVideoX(**COGVIDEOX15_VAE)
        with torch.device("cpu"):  # the scheduler's tables stay real under a meta-device context
            scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
        return VideoComponents(transformer.eval(), vae.eval(), scheduler)

    @classmethod
    def encode_empty_prompt(cls, model_id: str, variant: str | None = None) -> PromptEmbedding:
        check_pipeline_directory(model_id, ("tokenizer", "text_encoder", "transformer"))
        # The sequence length is the transformer's (226 for both real checkpoints; 1.0's table needs it exactly).
        length = int(CogVideoXTransformer3DModel.load_config(model_id, subfolder="transformer")["max_text_seq_length"])
        tokenizer, text_encoder = load_text_parts(model_id, variant, T5EncoderModel)
        pipeline = CogVideoXImageToVideoPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=None, transformer=None, scheduler=None
        )
        with torch.no_grad():
            embeds, _ = pipeline.encode_prompt(
                prompt="", do_classifier_free_guidance=False, num_videos_per_prompt=1, max_sequence_length=length,
                device=torch.device("cpu"), dtype=torch.float32,
            )  # fmt: skip
        provenance = prompt_provenance(cls.family, model_id, variant, tokenizer, text_encoder, length)
        return PromptEmbedding(embeds.float().contiguous(), None, provenance)

    def make_pipeline(self, components: VideoComponents) -> CogVideoXImageToVideoPipeline:
        # The encoder's own scheduler copy: set_timesteps must not touch the caller's.
        return CogVideoXImageToVideoPipeline(
            tokenizer=None, text_encoder=None, vae=self.vae, transformer=self.transformer, scheduler=self.scheduler
        )

    # === Geometry ===
    @property
    def is_v15(self) -> bool:
        return self.transformer.config.patch_size_t is not None

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)  # the pipeline's vae_scale_factor_spatial

    @property
    def max_images(self) -> int:
        return RELEASE_MAX_IMAGES if self.config.mode == "release" else self.config.num_frames

    def random_prompt_shape(self) -> tuple[int, int]:
        return (int(self.transformer.config.max_text_seq_length), int(self.transformer.config.text_embed_dim))

    def family_description(self) -> dict[str, Any]:
        return {"version": "1.5" if self.is_v15 else "1.0", "resample": self.get_image_transform().resample.name}

    def get_image_transform(self) -> VideoFrameTransform:
        transform = super().get_image_transform()
        if self.config.mode == "release":
            transform.resample = Image.Resampling.BICUBIC  # the authors' torchvision Resize on PIL
        return transform

    def resolve_size(self) -> tuple[int, int]:
        cfg, factor = self.transformer.config, self.vae_factor
        if cfg.use_learned_positional_embeddings:  # 1.0: its table fixes the size
            fixed = (cfg.sample_height * factor, cfg.sample_width * factor)
            if self.config.height is not None and (self.config.height, self.config.width) != fixed:
                raise ValueError(
                    f"CogVideoX 1.0 I2V has a learned positional table for exactly {fixed[0]} x {fixed[1]} px; got "
                    f"{self.config.height} x {self.config.width}. Leave height/width unset, or use CogVideoX 1.5 "
                    "(THUDM/CogVideoX1.5-5B-I2V) for other sizes."
                )
            return fixed
        if self.config.height is None:
            return TINY_SIZE if self.config.tiny else DEFAULT_SIZE
        height, width, multiple = self.config.height, self.config.width, factor * cfg.patch_size
        limit = (cfg.sample_height * factor, cfg.sample_width * factor)  # 1.5's RoPE table is sliced, not stretched
        if height % multiple or width % multiple or height > limit[0] or width > limit[1]:
            raise ValueError(
                f"CogVideoX needs height and width that are multiples of {multiple} px (VAE x patch) and at most "
                f"{limit[0]} x {limit[1]}; got {height} x {width}."
            )
        return height, width

    def pipeline_pixel_frames(self) -> int:
        """The pixel frame count given to `prepare_latents` for T latent frames: 4(T-1)+1, plus (pipeline mode) the
        frames `__call__` adds so 1.5's latent count is a multiple of its temporal patch."""
        ratio, frames = int(self.vae.config.temporal_compression_ratio), self.config.num_frames
        pixel_frames = ratio * (frames - 1) + 1
        patch_t = self.transformer.config.patch_size_t
        if self.config.mode == "pipeline" and patch_t is not None and frames % patch_t:
            pixel_frames += (patch_t - frames % patch_t) * ratio
        return pixel_frames

    def latent_frames(self) -> int:
        """L, the latent frames the denoiser sees (1.5: T padded up to a multiple of its temporal patch)."""
        frames, patch_t = self.config.num_frames, self.transformer.config.patch_size_t or 1
        return frames + (-frames) % patch_t

    def token_grid(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        side = self.vae_factor * cfg.patch_size
        return self.latent_frames() // (cfg.patch_size_t or 1), self.height // side, self.width // side

    # === The denoiser query ===
    def denoiser_call(self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> DenoiserCall:
        cfg, batch = self.transformer.config, pixels.shape[0]
        latents, image_latents = self._prepare_latents(pixels[:, 0], generators)
        image_latents = self._write_keyframes(image_latents, pixels, counts, generators)
        embeds, _ = self.batch_prompt(batch)
        if self.config.mode == "release":
            timestep = torch.full((batch,), RELEASE_TIMESTEP, dtype=torch.long, device=latents.device)
            ofs_value, rotary = 0.0, None
        else:
            timestep, latents = self._pipeline_timestep_and_latents(latents, image_latents)
            ofs_value, rotary = PIPELINE_OFS, self._rotary_embedding(latents)
        model_input = self.scheduler.scale_model_input(latents, timestep[0])
        kwargs = {
            "hidden_states": torch.cat([model_input, image_latents], dim=2),
            "encoder_hidden_states": embeds,
            "timestep": timestep,
            "ofs": None if cfg.ofs_embed_dim is None else latents.new_full((1,), ofs_value),
            "image_rotary_emb": rotary,
        }
        return DenoiserCall(kwargs, self.token_grid())

    def _rotary_embedding(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        frames, device = latents.size(1), latents.device
        return self.pipeline._prepare_rotary_positional_embeddings(self.height, self.width, frames, device)

    def _prepare_latents(
        self, images: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's `prepare_latents` on images [B, 3, H, W]: (noise, conditioning), each [B, L, C, h, w]."""
        return self.pipeline.prepare_latents(
            images.to(self.vae.dtype), images.shape[0], self.transformer.config.in_channels // 2,
            self.pipeline_pixel_frames(), self.height, self.width, self.transformer.dtype, images.device, generators,
        )  # fmt: skip

    def _write_keyframes(
        self, image_latents: torch.Tensor, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Images 2..K of each sample into their conditioning slots (module docstring), encoded by `prepare_latents`
        so the VAE call and latent scaling are diffusers' own; its noise draw for them is discarded."""
        for b, count in enumerate(counts):
            if count == 1:
                continue
            _, encoded = self._prepare_latents(pixels[b, 1:count], [generators[b]] * (count - 1))
            slots = keyframe_slots(count, image_latents.shape[1], self.config.mode)
            for k in range(1, count):
                image_latents[b, slots[k]] = encoded[k - 1, 0]
        return image_latents

    def _pipeline_timestep_and_latents(
        self, noise: torch.Tensor, image_latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pipeline mode: the timestep per sample and the noise-channel latents for the configured query."""
        batch, device = noise.shape[0], noise.device
        if self.config.query == "noised-image":
            timestep = torch.full((batch,), self.config.timestep, dtype=torch.long, device=device)
            clean = image_latents[:, :1].expand_as(noise)  # image 1's conditioning latent in every latent frame
            return timestep, self.scheduler.add_noise(clean, noise, timestep)
        self.scheduler.set_timesteps(self.config.num_inference_steps or 50, device=device)  # __call__'s default
        return self.scheduler.timesteps[0].expand(batch), noise

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output[0]  # a CogVideoXBlock returns (video tokens, text tokens)
