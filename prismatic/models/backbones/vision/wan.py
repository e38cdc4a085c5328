"""Wan 2.1 image-to-video (14B, 480P / 720P) as a generative encoder: one `WanTransformer3DModel` query, tapped.

`WanEncoder` builds exactly what diffusers' `WanImageToVideoPipeline.__call__` feeds its transformer at the first
denoising step without classifier-free guidance (guidance_scale=1), using the pipeline's own helpers on a pipeline
object that shares this module's components (no tokenizer, no text encoder):
- 36 input channels = 16 noise channels (drawn from the sample's generator) + 4 frame-mask channels + the 16-channel
  latent of the whole 4(T-1)+1-frame clip [image, zero frames] (VAE posterior mode, normalised by the VAE's
  `latents_mean` / `latents_std`); the causal VAE makes the zero frames' latents depend on the image;
- the 257 x 1280 CLIP ViT-H/14 tokens of the image (penultimate hidden states, `encode_image`) as the extra keys and
  values of every block's cross-attention, beside the stored empty-prompt UMT5 embedding (512 x 4096);
- timestep: the first of the scheduler's `num_inference_steps` (the pipeline's default 50) timesteps.
The tap is `blocks[tap_block]` (40 blocks, width 5120); at 448 x 448 and T = 8 that is 8 x 28 x 28 = 6,272 tokens,
pooled to 8 x 7 x 7 = 392.

Design decisions:
- Keyframes. The pipeline conditions on a first image and optionally a last one (`last_image`: the last pixel frame,
  mask set on both). K keyframes generalise that: image k goes to pixel frame round(linspace(0, P-1, K))[k] of the
  clip (P pixel frames) with the mask set there, so K = 1 and K = 2 are the pipeline's own paths (and run through its
  own `prepare_latents`); K > 2 runs `_keyframe_latents`, the same steps for any K.
- CLIP tokens are image 1's only: the I2V model's image embedder takes one image's 257 tokens. (The pipeline's
  `last_image` path encodes both images, which only the FLF2V model's embedder, with its `pos_embed_seq_len`, accepts;
  that variant is out of scope.)
- `query="noised-image"`: the noise channels hold x_t = (1 - s) x0 + s * noise with s = timestep / 1000 (rectified
  flow; the model's timestep is s * 1000), x0 the normalised latent of image 1 alone (the clip latent's first latent
  frame, which the causal VAE computes from pixel frame 0 only) replicated over the T latent frames, and noise the
  same draw as the first-step query; the conditioning channels and CLIP tokens are as above; timestep = `timestep`.
- Randomness: the only draw is the noise (the VAE gives its posterior mode), from the sample's own generator through
  `prepare_latents`, called per sample (batch invariance; see `prepare_latents` for why not batched).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
)
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from prismatic.models.backbones.vision.svd_components import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import DenoiserCall, VideoComponents, VideoDiTEncoder
from prismatic.models.backbones.vision.video_prompt import PromptEmbedding, load_text_parts, prompt_provenance

PIPELINE_CLASS = WanImageToVideoPipeline.__name__
COMPONENT_FOLDERS = ("transformer", "vae", "scheduler", "image_encoder", "image_processor")
DEFAULT_SIZE = 448  # pixels per side when the config gives none (a 28 x 28 token grid per latent frame)
MAX_SEQUENCE_LENGTH = 512  # the pipeline's default text length (UMT5 tokens, zero-padded after the real ones)
# Pipelines of the other generative encoders, to name the backbone a wrongly passed directory belongs to.
_OTHER_FAMILIES = {"StableVideoDiffusionPipeline": "svd", "CogVideoXImageToVideoPipeline": "cogvideox",
                   "LTXImageToVideoPipeline": "ltx", "LTXConditionPipeline": "ltx"}  # fmt: skip

_CALL_DEFAULTS = inspect.signature(WanImageToVideoPipeline.__call__).parameters
_VAE_DEFAULTS = inspect.signature(AutoencoderKLWan.__init__).parameters
# The pipeline's own default schedule length (used when config.num_inference_steps is None).
PIPELINE_DEFAULT_STEPS = int(_CALL_DEFAULTS["num_inference_steps"].default)
# The Wan 2.1 VAE's per-channel latent statistics (diffusers' AutoencoderKLWan defaults); the tiny VAE uses the first C.
WAN_VAE_MEAN: list[float] = list(_VAE_DEFAULTS["latents_mean"].default)
WAN_VAE_STD: list[float] = list(_VAE_DEFAULTS["latents_std"].default)

# Wan2.1-I2V-14B (480P and 720P share it), as in diffusers' conversion script.
WAN_I2V_14B_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 1280,
    "added_kv_proj_dim": 5120,
}  # fmt: skip
# The Wan 2.1 VAE (diffusers' AutoencoderKLWan defaults): 8x spatial, 4x temporal, 16 channels.
WAN_VAE: dict[str, Any] = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                           "temperal_downsample": [False, True, True]}  # fmt: skip
# open_clip's ViT-H/14 (laion2B) vision tower, which the checkpoints ship as `image_encoder`: 257 tokens of 1280.
CLIP_VIT_H_14: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
# diffusers' Wan scheduler at 480p (5.0 is the 720p shift), for built components; loaded ones use their own config.
WAN_SCHEDULER: dict[str, Any] = {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                 "num_train_timesteps": 1000, "flow_shift": 3.0}  # fmt: skip


def check_wan_directory(model_id: str, folders: tuple[str, ...] = COMPONENT_FOLDERS) -> None:
    """A local `model_id` must be a Wan 2.1 I2V pipeline directory holding `folders`; hub ids pass through."""
    root = Path(model_id)
    if not root.exists():
        return
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(
            f"{model_id} has no model_index.json; point --model.video_model_id at a diffusers WanImageToVideoPipeline "
            "directory (e.g. a copy of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)."
        )
    index = json.loads(index_file.read_text())
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        family = _OTHER_FAMILIES.get(name)
        raise ValueError(
            f"{model_id} holds a {name} checkpoint, not a Wan 2.1 image-to-video one ({PIPELINE_CLASS}). Pass a "
            "Wan I2V checkpoint (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers or -720P, or a local copy) as "
            "--model.video_model_id" + (f", or use the `{family}` backbones for this one." if family else ".")
        )
    if index.get("boundary_ratio") is not None or index.get("expand_timesteps"):
        raise ValueError(f"{model_id} is a Wan 2.2 checkpoint (two experts or expanded timesteps), which this encoder "
                         "does not implement; use a Wan 2.1 I2V checkpoint.")  # fmt: skip
    for folder in folders:
        if not (root / folder).is_dir():
            raise FileNotFoundError(f"{model_id} has no {folder}/ folder; the Wan encoder needs {', '.join(folders)}. "
                                    "Re-download or re-save the complete pipeline.")  # fmt: skip


def load_scheduler(model_id: str) -> Any:
    """The scheduler class the checkpoint's scheduler_config.json names (UniPC or FlowMatchEuler), with its config."""
    config = UniPCMultistepScheduler.load_config(model_id, subfolder="scheduler")
    return getattr(diffusers, config["_class_name"]).from_config(config)


def wan_image_processor() -> CLIPImageProcessor:
    """The checkpoints' image_processor: 224 px bicubic resize and centre crop, OpenAI CLIP mean / std."""
    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                              image_mean=CLIP_IMAGE_MEAN, image_std=CLIP_IMAGE_STD)  # fmt: skip


def wan_scheduler() -> UniPCMultistepScheduler:
    with torch.device("cpu"):  # its tables stay real under a meta-device context
        return UniPCMultistepScheduler(**WAN_SCHEDULER)


def save_wan_components(
    components: VideoComponents,
    directory: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    text_encoder: nn.Module | None = None,
) -> Path:
    """Write a `WanImageToVideoPipeline` directory; text parts only if given (the encoder never needs them; without
    them, load it with `WanImageToVideoPipeline.from_pretrained(directory, tokenizer=None, text_encoder=None)`)."""
    if getattr(components.vae, "decoder", None) is None:
        raise ValueError("These components' VAE decoder was dropped, so the directory would not be a valid Wan "
                         "checkpoint; save the components before `drop_unused_modules`.")  # fmt: skip
    pipeline = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=components.vae, scheduler=components.scheduler,
        image_processor=components.image_processor, image_encoder=components.image_encoder,
        transformer=components.transformer,
    )  # fmt: skip
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def keyframe_pixel_frames(count: int, pixel_frames: int) -> list[int]:
    """Pixel frames of K keyframes: round(linspace(0, P-1, K)), i.e. [0] and the pipeline's [0, P-1] for K = 2."""
    return [int(p) for p in np.linspace(0, pixel_frames - 1, count).round()]


@contextmanager
def ftfy_stand_in() -> Iterator[None]:
    """diffusers' Wan prompt cleaning calls `ftfy.fix_text`, but imports ftfy only when it is installed (it is not a
    dependency here). `fix_text("")` is "", so for the empty prompt an identity stand-in gives the exact result."""
    module = sys.modules[WanImageToVideoPipeline.__module__]
    if hasattr(module, "ftfy"):
        yield
        return
    module.ftfy = SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del module.ftfy  # type: ignore[attr-defined]


def to_pil(frame: torch.Tensor) -> Image.Image:
    """A [3, H, W] frame in [-1, 1] (from uint8 pixels) back to its exact uint8 PIL image (a black one of the same size
    for a `meta` frame, which has a shape and no values: shape-only builds, e.g. FLOP counts)."""
    if frame.device.type == "meta":
        return Image.new("RGB", (frame.shape[-1], frame.shape[-2]))
    pixels = ((frame.detach().float().cpu() + 1.0) / 2.0 * 255.0).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def check_i2v_components(components: VideoComponents) -> None:
    """The components must be a Wan 2.1 I2V model: a transformer with the image-token path, a CLIP tower, and
    in_channels = 2 * latent channels + the VAE's temporal factor (noise, mask, condition)."""
    transformer, vae = components.transformer, components.vae
    if transformer.config.image_dim is None or components.image_encoder is None or components.image_processor is None:
        raise ValueError("These Wan components have no image-token path (image_dim, image_encoder, image_processor): "
                         "a text-to-video or Wan 2.2 checkpoint. Use a Wan 2.1 I2V checkpoint.")  # fmt: skip
    expected = 2 * int(vae.config.z_dim) + int(vae.config.scale_factor_temporal)
    if transformer.config.in_channels != expected:
        raise ValueError(f"The Wan transformer takes {transformer.config.in_channels} channels; the I2V layout needs "
                         f"{expected} (noise + mask + condition for a {vae.config.z_dim}-channel VAE).")  # fmt: skip


class WanEncoder(VideoDiTEncoder):
    """Wan 2.1 I2V: the pipeline's first-step transformer input (or a noised image latent), tapped at one block."""

    family = "wan"
    default_model_id = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    blocks_attr = "blocks"
    head_attrs = ("norm_out", "proj_out", "scale_shift_table")  # (the last one is the head's modulation parameter)
    block_classes = (WanTransformerBlock, CLIPEncoderLayer)
    real_prompt_tokens = MAX_SEQUENCE_LENGTH

    # === Components ===
    @classmethod
    def load_components(cls, config: VideoEncoderConfig, torch_dtype: torch.dtype) -> VideoComponents:
        model_id = config.model_id or cls.default_model_id
        check_wan_directory(model_id)
        diffusers_weights = {"variant": config.variant, "torch_dtype": torch_dtype}
        hf_weights = {"variant": config.variant, "dtype": torch_dtype}
        return VideoComponents(
            transformer=WanTransformer3DModel.from_pretrained(model_id, subfolder="transformer", **diffusers_weights),
            vae=AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", **diffusers_weights),
            scheduler=load_scheduler(model_id),
            image_encoder=CLIPVisionModel.from_pretrained(model_id, subfolder="image_encoder", **hf_weights),
            image_processor=CLIPImageProcessor.from_pretrained(model_id, subfolder="image_processor"),
        )

    @classmethod
    def save_components(cls, components: VideoComponents, directory: Path) -> Path:
        return save_wan_components(components, directory)

    @classmethod
    def build_tiny_components(cls, seed: int) -> VideoComponents:
        """Seeded random CPU-sized components with Wan's structure: 4 `WanTransformerBlock`s (2 heads x 12) with the
        image-token path (image_dim, added_kv_proj_dim), a 4-channel Wan VAE with the real 8x / 4x downsampling (a
        4 x 4 token grid per latent frame at 64 px), so in_channels = 2 * 4 + 4, and a 2-layer CLIP tower at the real
        224 px input with 56 px patches (17 tokens). The global RNG is left untouched."""
        latent_channels, clip_dim = 4, 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(
                base_dim=4, z_dim=latent_channels, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                temperal_downsample=[False, True, True], latents_mean=WAN_VAE_MEAN[:latent_channels],
                latents_std=WAN_VAE_STD[:latent_channels],
            )  # fmt: skip
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                in_channels=2 * latent_channels + 4, out_channels=latent_channels, text_dim=16, freq_dim=16,
                ffn_dim=32, num_layers=4, image_dim=clip_dim, added_kv_proj_dim=24,
            )  # fmt: skip
            image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=clip_dim, intermediate_size=32,
                                                             num_hidden_layers=2, num_attention_heads=2,
                                                             image_size=224, patch_size=56))  # fmt: skip
        for module in (vae, transformer, image_encoder):
            module.eval()
        return VideoComponents(transformer, vae, wan_scheduler(), image_encoder, wan_image_processor())

    @classmethod
    def build_architecture(cls) -> VideoComponents:
        """Wan2.1-I2V-14B from built-in configs (random init; ~16B parameters on a real device: use `meta`)."""
        transformer = WanTransformer3DModel(**WAN_I2V_14B_TRANSFORMER)
        vae = AutoencoderKLWan(**WAN_VAE)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H_14))
        for module in (vae, transformer, image_encoder):
            module.eval()
        return VideoComponents(transformer, vae, wan_scheduler(), image_encoder, wan_image_processor())

    @classmethod
    def encode_empty_prompt(cls, model_id: str, variant: str | None = None) -> PromptEmbedding:
        check_wan_directory(model_id, ("tokenizer", "text_encoder"))
        tokenizer, text_encoder = load_text_parts(model_id, variant, UMT5EncoderModel)
        pipeline = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None)
        with torch.no_grad(), ftfy_stand_in():
            embeds, _ = pipeline.encode_prompt(prompt="", do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                               max_sequence_length=MAX_SEQUENCE_LENGTH, device=torch.device("cpu"),
                                               dtype=torch.float32)  # fmt: skip
        provenance = prompt_provenance(cls.family, model_id, variant, tokenizer, text_encoder, MAX_SEQUENCE_LENGTH)
        return PromptEmbedding(embeds.float().cpu(), None, provenance)

    def make_pipeline(self, components: VideoComponents) -> WanImageToVideoPipeline:
        check_i2v_components(components)
        # The pipeline shares this encoder's scheduler copy (its set_timesteps never touches the caller's).
        return WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, vae=components.vae, scheduler=self.scheduler,
            image_processor=components.image_processor, image_encoder=components.image_encoder,
            transformer=components.transformer,
        )  # fmt: skip

    # === Geometry ===
    @property
    def size_multiple(self) -> tuple[int, int]:
        """Pixels per token along (height, width): the VAE's spatial factor times the transformer's patch."""
        factor, patch = int(self.vae.config.scale_factor_spatial), self.transformer.config.patch_size
        return factor * patch[1], factor * patch[2]

    @property
    def latent_size(self) -> tuple[int, int]:
        factor = int(self.vae.config.scale_factor_spatial)
        return self.height // factor, self.width // factor

    @property
    def pixel_frames(self) -> int:
        return int(self.vae.config.scale_factor_temporal) * (self.config.num_frames - 1) + 1

    def resolve_size(self) -> tuple[int, int]:
        height, width = self.config.height or DEFAULT_SIZE, self.config.width or DEFAULT_SIZE
        multiple_h, multiple_w = self.size_multiple
        if height % multiple_h or width % multiple_w:
            raise ValueError(
                f"Wan needs height x width in multiples of {multiple_h} x {multiple_w} pixels (the VAE's spatial "
                f"factor times the transformer's patch), got {height} x {width}; e.g. 448 x 448 or 480 x 832."
            )
        return height, width

    def token_grid(self) -> tuple[int, int, int]:
        multiple_h, multiple_w = self.size_multiple
        return self.config.num_frames, self.height // multiple_h, self.width // multiple_w

    def random_prompt_shape(self) -> tuple[int, int]:
        return (8, int(self.transformer.config.text_dim))

    def family_description(self) -> dict[str, Any]:
        processor = {k: v for k, v in self.components.image_processor.to_dict().items() if not k.startswith("_")}
        return {"image_processor": processor, "clip_tokens": "image 1, hidden_states[-2]",
                "keyframes": "pixel frames round(linspace(0, P-1, K))"}  # fmt: skip

    # === The query ===
    def denoiser_call(self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> DenoiserCall:
        """What the pipeline passes its transformer at the first step (guidance_scale=1), or the noised-image query."""
        dtype, batch = self.transformer.dtype, pixels.shape[0]
        prompt_embeds, _ = self.batch_prompt(batch)
        images = [to_pil(frame) for frame in pixels[:, 0]]  # the pipeline's CLIP input is the PIL image
        image_embeds = self.pipeline.encode_image(images, self.transformer.device).to(dtype)
        noise, condition = self.prepare_latents(pixels, counts, generators)
        timestep, latents = self.query_latents(noise, condition)
        kwargs = {"hidden_states": torch.cat([latents, condition], dim=1).to(dtype), "timestep": timestep.expand(batch),
                  "encoder_hidden_states": prompt_embeds, "encoder_hidden_states_image": image_embeds}  # fmt: skip
        return DenoiserCall(kwargs, self.token_grid())

    def query_latents(self, noise: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(timestep, noise channels): the schedule's first timestep and pure noise, or `timestep` and x_t."""
        device = self.transformer.device
        if self.config.query == "noised-image":
            timestep = torch.tensor(self.config.timestep, dtype=torch.int64, device=device)
            return timestep, self.noised_image_latents(noise, condition, timestep)
        self.scheduler.set_timesteps(self.config.num_inference_steps or PIPELINE_DEFAULT_STEPS, device=device)
        return self.scheduler.timesteps[0], noise

    def prepare_latents(
        self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise [B, C, T, h, w], condition [B, 4 + C, T, h, w]) in float32, one sample at a time: the pipeline's
        generator-list path VAE-encodes the whole image batch once per generator (B^2 clips), so it is called with
        batch 1 and that sample's generator, which also makes every sample independent of its batch."""
        samples = [self.sample_latents(pixels[b, :count], generators[b]) for b, count in enumerate(counts)]
        return torch.cat([s[0] for s in samples]), torch.cat([s[1] for s in samples])

    def sample_latents(self, keyframes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if len(keyframes) > 2:
            return self._keyframe_latents(keyframes, generator)
        last_image = keyframes[1:2] if len(keyframes) == 2 else None
        return self.pipeline.prepare_latents(
            keyframes[0:1], 1, int(self.vae.config.z_dim), self.height, self.width, self.pixel_frames, torch.float32,
            self.transformer.device, [generator], None, last_image,
        )  # fmt: skip

    def _keyframe_latents(
        self, keyframes: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`WanImageToVideoPipeline.prepare_latents` for K images at pixel frames `keyframe_pixel_frames` (it places at
        most two: image and last_image). Step for step the pipeline's: the same draw, clip, VAE mode, normalisation
        and mask layout, so for K <= 2 it gives the pipeline's result exactly (tested); only the placement is new."""
        device, vae, temporal = self.transformer.device, self.vae, int(self.vae.config.scale_factor_temporal)
        channels, frames, (rows, cols) = int(vae.config.z_dim), self.pixel_frames, self.latent_size
        shape = (1, channels, self.config.num_frames, rows, cols)
        latents = randn_tensor(shape, generator=[generator], device=device, dtype=torch.float32)
        slots = keyframe_pixel_frames(len(keyframes), frames)
        video_condition = keyframes.new_zeros(1, 3, frames, self.height, self.width)
        video_condition[0, :, slots] = keyframes.transpose(0, 1)
        video_condition = video_condition.to(device=get_module_execution_device(vae), dtype=vae.dtype)
        latents_mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(device, torch.float32)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(device, torch.float32)
        latent_condition = retrieve_latents(vae.encode(video_condition), sample_mode="argmax")
        latent_condition = (latent_condition.to(device=device, dtype=torch.float32) - latents_mean) * latents_std
        mask_lat_size = torch.zeros(1, 1, frames, rows, cols)
        mask_lat_size[:, :, slots] = 1
        first_frame_mask = torch.repeat_interleave(mask_lat_size[:, :, 0:1], dim=2, repeats=temporal)
        mask_lat_size = torch.concat([first_frame_mask, mask_lat_size[:, :, 1:, :]], dim=2)
        mask_lat_size = mask_lat_size.view(1, -1, temporal, rows, cols).transpose(1, 2).to(latent_condition.device)
        return latents, torch.concat([mask_lat_size, latent_condition], dim=1)

    def noised_image_latents(self, noise: torch.Tensor, condition: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - s) x0 + s * noise, s = timestep / 1000, x0 = image 1's latent (the condition's first latent frame
        after the mask channels) replicated over the T latent frames."""
        s = timestep.float() / float(self.scheduler.config.num_train_timesteps)
        mask_channels = int(self.vae.config.scale_factor_temporal)
        x0 = condition[:, mask_channels:, :1].expand(-1, -1, noise.shape[2], -1, -1)
        return (1.0 - s) * x0 + s * noise

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output  # a WanTransformerBlock returns the video tokens [B, N, C] alone
