"""LTX-Video 0.9.x (2B, image-to-video) as a generative encoder: one `LTXVideoTransformer3DModel` query, tapped.

LTX-Video has no image encoder and no channel concatenation: its image-to-video pipeline (`LTXImageToVideoPipeline`)
puts the clean, normalised VAE latent of the image in latent frame 0 of a pure-noise video and marks those tokens with
a conditioning mask, so their per-token timestep is `t * (1 - mask) = 0` (clean) while every other token is at `t`.
The VAE compresses 32x in space and 8x in time (128 channels; T latent frames are 8 (T-1) + 1 pixel frames), the
transformer patchifies 1 x 1, so at 448 x 448 and T = 8 it sees 8 x 14 x 14 = 1,568 tokens of width 2,048 (392 after
the default 7 x 7 pooling per latent frame). The text conditioning is the stored empty prompt of its T5-XXL with the
T5 attention mask (`prompt_has_mask`): the real empty prompt is one EOS token and 127 masked pads.

Queries (`VideoEncoderConfig.query`):
- `first-step` (default): exactly the denoiser input of the pipeline's first step with `guidance_scale=1`, built by
  the pipeline's own `prepare_latents` (given each sample's generator, so the image's VAE posterior sample and then the
  noise come from that sample's generator, in the pipeline's order) and its own schedule (`sigmas = linspace(1, 1/N,
  N)`, resolution-dependent `mu` from `calculate_shift`, `retrieve_timesteps`; N = 50 unless configured), with its
  default frame rate (25) in the RoPE interpolation scale. The first timestep is 1000 (the terminal stretch and the
  shift keep sigma = 1 at 1).
- `noised-image`: the image latent z (same posterior draw) replicated over the T latent frames and noised the
  rectified-flow way, x = (1 - s) z + s * noise with s = config.timestep / 1000 (FlowMatchEuler's sigma = t / 1000),
  with `timestep = config.timestep` for *every* token, frame 0 included. Design choice: this query reads the model's
  representation of the image content at one controlled noise level (as VEGA-3D and DIFT do); keeping frame 0 clean
  would put its tokens in another regime (t = 0) and let the noised frames copy a clean frame. The noise is the same
  draw as first-step's (drawn right after the posterior sample, whole video shape).

Keyframes (K images per sample, K <= T). Design choice, the pipeline has no multi-image path: LTX conditions by
keeping tokens clean, so image k >= 2 is VAE-encoded as its own one-frame clip (posterior sample from the same
sample's generator, drawn after all of the pipeline's draws, so K = 1 is untouched and exactly the pipeline's),
normalised like the pipeline's image latent, and written into latent frame round(linspace(0, T-1, K))[k]; in
first-step its tokens get mask 1 (timestep 0), like frame 0's. In noised-image they replace the replicated image-1
latent there and are noised like every frame. Image 1 is always frame 0.

Run time needs no text encoder: `encode_empty_prompt` (through `scripts/encode_empty_prompt.py`) runs the
checkpoint's T5 once through the pipeline's own `encode_prompt`. Tiny twins (`build_tiny_components`) keep the real
block and VAE structure at CPU size; `save_ltx_components` writes them as a loadable pipeline directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock
from diffusers.pipelines.ltx.pipeline_ltx_image2video import calculate_shift, retrieve_latents, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from prismatic.models.backbones.vision.svd_unet import keyframe_slots
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import DenoiserCall, VideoComponents, VideoDiTEncoder
from prismatic.models.backbones.vision.video_prompt import PromptEmbedding, load_text_parts, prompt_provenance
from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

# Pipelines whose directories hold LTX-Video 0.9.x's transformer/, vae/ and scheduler/ (image- and text-to-video share
# them; the image-to-video one only differs in how it builds the first frame, which this encoder does itself).
LTX_PIPELINES = ("LTXImageToVideoPipeline", "LTXPipeline")
COMPONENT_FOLDERS = ("transformer", "vae", "scheduler")
DEFAULT_SIZE = 448  # the zoo's common resolution (LTX's own default, 512 x 704, is not square)
FRAME_RATE = 25  # LTXImageToVideoPipeline.__call__'s default; it enters the temporal RoPE scale
NUM_INFERENCE_STEPS = 50  # the pipeline's default schedule length
MAX_SEQUENCE_LENGTH = 128  # the pipeline's default T5 length

# LTX-Video 0.9.x (2B): the transformer's config (transformer/config.json; also diffusers' defaults).
LTX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 32,
    "attention_head_dim": 64, "cross_attention_dim": 2048, "num_layers": 28, "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096,
    "attention_bias": True, "attention_out_bias": True,
}  # fmt: skip
# Its VAE (0.9.0's; 0.9.1 only changes the decoder, which the encoder never runs): 4 x 4 space-to-depth patches, then
# three spatio-temporal 2x downsamplings -> 32x spatial, 8x temporal, 128 latent channels.
LTX_VAE_CONFIG: dict[str, Any] = {
    "latent_channels": 128, "block_out_channels": (128, 256, 512, 512), "layers_per_block": (4, 3, 3, 3, 4),
    "spatio_temporal_scaling": (True, True, True, False), "patch_size": 4, "patch_size_t": 1,
    "encoder_causal": True, "decoder_causal": False, "scaling_factor": 1.0,
}  # fmt: skip
# The scheduler diffusers' conversion writes for 0.9.0 / 0.9.1: a resolution-dependent shift (mu from the latent
# sequence length, 1024 -> 0.95, 4096 -> 2.05), the schedule stretched to end at sigma 0.1.
LTX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05,
    "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": 0.1,
}  # fmt: skip


def ltx_scheduler() -> FlowMatchEulerDiscreteScheduler:
    with torch.device("cpu"):  # its tables stay real even while modules are built on the meta device
        return FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER_CONFIG)


def check_ltx_directory(directory: Path, folders: tuple[str, ...] = COMPONENT_FOLDERS) -> None:
    """Refuse another model's pipeline directory, or one missing a component folder, before loading anything."""
    index = directory / "model_index.json"
    class_name = json.loads(index.read_text()).get("_class_name") if index.is_file() else "non-diffusers"
    if class_name not in LTX_PIPELINES:
        raise ValueError(
            f"{directory} holds a {class_name} checkpoint (model_index.json), not LTX-Video: the ltx encoder takes a "
            f"{' or '.join(LTX_PIPELINES)} directory (same transformer/, vae/, scheduler/ layout) or a hub id such as "
            f"{LTXVideoEncoder.default_model_id}. For that model, use its own encoder family (--model.type)."
        )
    for folder in folders:
        if not (directory / folder).is_dir():
            raise FileNotFoundError(f"{directory} has no {folder}/ folder, which the ltx encoder loads; re-download it.")


# A random VAE's posterior is mostly noise (log-variance ~0: std 0.9 against 0.3 for its mean across channels), while
# a trained VAE's posterior spread is small next to its mean; and the pipeline mixes the *normalised* latent with unit
# noise. So the tiny VAE's log-variance output is biased to a std of ~0.05 and its latent statistics (zeros and ones in
# a fresh VAE) are set to its mean's scale, making normalised tiny latents about unit-scale like real ones (and
# exercising the normalisation).
TINY_LOGVAR_BIAS = -6.0
TINY_LATENT_SCALE = 0.3


def _match_trained_latent_scale(vae: AutoencoderKLLTXVideo) -> None:
    channels = int(vae.config.latent_channels)
    with torch.no_grad():
        vae.encoder.conv_out.conv.bias[-1].add_(TINY_LOGVAR_BIAS)  # the last output channel is the shared logvar
        vae.latents_mean.copy_(0.05 * torch.randn(channels))
        vae.latents_std.copy_(TINY_LATENT_SCALE * (0.8 + 0.4 * torch.rand(channels)))


def build_tiny_ltx_components(seed: int) -> VideoComponents:
    """Seeded random CPU-sized LTX parts with the real building blocks; the global RNG is left untouched.

    The VAE keeps LTX's structure (space-to-depth patches, causal 3D down blocks whose downsamplings are
    spatio-temporal, the single-logvar posterior) with 2 x 2 patches and two downsamplings: 8x spatial, 4x temporal,
    8 channels, so 64 px gives an 8 x 8 token grid per latent frame. The transformer has 4 `LTXVideoTransformerBlock`s
    of 2 heads x 12 (12 is a multiple of 6, so its 3D RoPE has no padding). The VAE's latent statistics (which the
    pipeline normalises by) are set as `_match_trained_latent_scale` says."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(16, 32, 32), decoder_block_out_channels=(16, 32, 32),
            down_block_types=("LTXVideoDownBlock3D",) * 3, layers_per_block=(1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, False),
            decoder_spatio_temporal_scaling=(True, True, False), decoder_inject_noise=(False,) * 4,
            downsample_type=("conv",) * 3, upsample_residual=(False,) * 3, upsample_factor=(1,) * 3, patch_size=2,
        )  # fmt: skip
        _match_trained_latent_scale(vae)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
            num_layers=4, caption_channels=16,
        )  # fmt: skip
    vae.eval()
    transformer.eval()
    return VideoComponents(transformer=transformer, vae=vae, scheduler=ltx_scheduler())


def save_ltx_components(
    components: VideoComponents,
    directory: str | Path,
    text_encoder: T5EncoderModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write a loadable `LTXImageToVideoPipeline` directory (model_index.json, transformer/, vae/, scheduler/, and the
    text encoder and tokenizer if given). Save before `drop_unused_modules`: a decoder-less VAE is no checkpoint."""
    if getattr(components.vae, "decoder", None) is None:
        raise ValueError("The VAE's decoder was dropped: save the components before drop_unused_modules().")
    pipeline = LTXImageToVideoPipeline(
        scheduler=components.scheduler, vae=components.vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=components.transformer,
    )  # fmt: skip
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


class LTXVideoEncoder(VideoDiTEncoder):
    """LTX-Video's transformer queried once per sample, as `LTXImageToVideoPipeline` builds its first step."""

    family: ClassVar[str] = "ltx"
    default_model_id: ClassVar[str] = "Lightricks/LTX-Video"
    blocks_attr: ClassVar[str] = "transformer_blocks"
    # What runs after the blocks: the final LayerNorm, the output projection and the final shift/scale table. The
    # table is a bare nn.Parameter: setting it to None (drop_unused_modules) is allowed by nn.Module and unregisters it,
    # but its entry in unused_module_names names a parameter, so resolve it with get_parameter, not get_submodule.
    head_attrs: ClassVar[tuple[str, ...]] = ("norm_out", "proj_out", "scale_shift_table")
    block_classes: ClassVar[tuple[type[torch.nn.Module], ...]] = (LTXVideoTransformerBlock,)
    prompt_has_mask: ClassVar[bool] = True
    real_prompt_tokens: ClassVar[int] = MAX_SEQUENCE_LENGTH

    def __init__(
        self,
        vision_backbone_id: str,
        config: VideoEncoderConfig,
        components: VideoComponents,
        architecture_only: bool = False,
    ) -> None:
        if config.mode != "pipeline":
            raise ValueError(
                f"VideoEncoderConfig.mode={config.mode!r}: LTX-Video has no release-mode emulation (only CogVideoX "
                "has one); use mode='pipeline'."
            )
        super().__init__(vision_backbone_id, config, components, architecture_only=architecture_only)

    # === Components ===
    @classmethod
    def load_components(cls, config: VideoEncoderConfig, torch_dtype: torch.dtype) -> VideoComponents:
        model_id = config.model_id or cls.default_model_id
        if Path(model_id).exists():
            check_ltx_directory(Path(model_id))
        overwatch.info(f"Loading LTX-Video components from {model_id} (variant={config.variant}, dtype={torch_dtype})")
        load = {"variant": config.variant, "torch_dtype": torch_dtype}
        transformer = LTXVideoTransformer3DModel.from_pretrained(model_id, subfolder="transformer", **load)
        vae = AutoencoderKLLTXVideo.from_pretrained(model_id, subfolder="vae", **load)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_id, subfolder="scheduler")
        return VideoComponents(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)

    @classmethod
    def save_components(cls, components: VideoComponents, directory: Path) -> Path:
        return save_ltx_components(components, directory)

    @classmethod
    def build_tiny_components(cls, seed: int) -> VideoComponents:
        return build_tiny_ltx_components(seed)

    @classmethod
    def build_architecture(cls) -> VideoComponents:
        """LTX-Video 0.9.x 2B from the built-in configs (about 1.9B transformer + 0.4B VAE parameters); reads nothing."""
        transformer = LTXVideoTransformer3DModel(**LTX_TRANSFORMER_CONFIG)
        vae = AutoencoderKLLTXVideo(**LTX_VAE_CONFIG)
        return VideoComponents(transformer=transformer.eval(), vae=vae.eval(), scheduler=ltx_scheduler())

    @classmethod
    def encode_empty_prompt(cls, model_id: str, variant: str | None = None) -> PromptEmbedding:
        if Path(model_id).exists():
            check_ltx_directory(Path(model_id), ("tokenizer", "text_encoder"))
        tokenizer, text_encoder = load_text_parts(model_id, variant, T5EncoderModel)
        # The pipeline's own encode_prompt (tokenisation, padding to 128, mask), with nothing else loaded.
        pipeline = LTXImageToVideoPipeline(
            scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer, transformer=None
        )  # type: ignore[arg-type]
        with torch.no_grad():
            embeds, mask, _, _ = pipeline.encode_prompt(
                prompt="", do_classifier_free_guidance=False, num_videos_per_prompt=1,
                max_sequence_length=MAX_SEQUENCE_LENGTH, device=torch.device("cpu"), dtype=torch.float32,
            )  # fmt: skip
        provenance = prompt_provenance(cls.family, model_id, variant, tokenizer, text_encoder, MAX_SEQUENCE_LENGTH)
        return PromptEmbedding(embeds.float(), mask.to(torch.int64), provenance)

    def make_pipeline(self, components: VideoComponents) -> LTXImageToVideoPipeline:
        # Shares the modules (and this encoder's scheduler copy, which the timestep computation re-sets).
        return LTXImageToVideoPipeline(
            scheduler=self.scheduler, vae=components.vae, text_encoder=None, tokenizer=None,
            transformer=components.transformer,
        )  # type: ignore[arg-type]  # fmt: skip

    # === Geometry ===
    @property
    def spatial_factor(self) -> int:
        """Pixels per token side: the VAE's spatial compression x the transformer's patch size."""
        return int(self.vae.spatial_compression_ratio) * int(self.transformer.config.patch_size)

    @property
    def pixel_frames(self) -> int:
        """The pixel frame count whose latent has T frames: ratio (T - 1) + 1 (8 (T - 1) + 1 for the real VAE)."""
        return int(self.vae.temporal_compression_ratio) * (self.config.num_frames - 1) + 1

    def latent_size(self) -> tuple[int, int, int]:
        """(frames, rows, columns) of the latent video, computed as the pipeline does (from the VAE's ratios)."""
        spatial, temporal = int(self.vae.spatial_compression_ratio), int(self.vae.temporal_compression_ratio)
        return (self.pixel_frames - 1) // temporal + 1, self.height // spatial, self.width // spatial

    def resolve_size(self) -> tuple[int, int]:
        height, width = (self.config.height, self.config.width) if self.config.height else (DEFAULT_SIZE, DEFAULT_SIZE)
        factor = self.spatial_factor
        if height % factor or width % factor:
            raise ValueError(
                f"height={height}, width={width}: LTX-Video needs multiples of {factor} (its VAE's "
                f"{self.vae.spatial_compression_ratio}x spatial compression x the transformer's patch size "
                f"{self.transformer.config.patch_size}) so every token covers whole pixels; e.g. "
                f"{factor * (DEFAULT_SIZE // factor)}."
            )
        return int(height), int(width)

    def token_grid(self) -> tuple[int, int, int]:
        frames, rows, cols = self.latent_size()
        config = self.transformer.config
        return frames // config.patch_size_t, rows // config.patch_size, cols // config.patch_size

    def random_prompt_shape(self) -> tuple[int, int]:
        return (8, int(self.transformer.config.caption_channels))

    def family_description(self) -> dict[str, Any]:
        return {"frame_rate": FRAME_RATE, "num_inference_steps": self.num_inference_steps,
                "keyframes": "clean latent frames at round(linspace(0, T-1, K)), draws after the pipeline's",
                "noised_image": "all frames at config.timestep, x = (1 - t/1000) z + t/1000 noise"}  # fmt: skip

    @property
    def num_inference_steps(self) -> int:
        return self.config.num_inference_steps or NUM_INFERENCE_STEPS

    # === The denoiser's input ===
    def first_timestep(self, device: torch.device) -> torch.Tensor:
        """The first timestep of the pipeline's default schedule for this resolution (the pipeline's own code)."""
        frames, rows, cols = self.latent_size()
        steps = self.num_inference_steps
        defaults = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
        mu = calculate_shift(frames * rows * cols, *(self.scheduler.config.get(k, v) for k, v in defaults.items()))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(self.scheduler, steps, device, None, sigmas=sigmas, mu=mu)
        return timesteps[0]

    def image_latent(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One image [3, H, W] -> its normalised latent [1, C, 1, h, w], as prepare_latents encodes each sample."""
        latent = retrieve_latents(self.vae.encode(image.unsqueeze(0).unsqueeze(2)), generator).to(torch.float32)
        return self.pipeline._normalize_latents(latent, self.vae.latents_mean, self.vae.latents_std)

    def keyframe_latents(
        self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]
    ) -> list[dict[int, torch.Tensor]]:
        """Per sample, {latent frame slot: normalised latent [C, h, w]} of images 2..K (drawn after everything else)."""
        frames = self.latent_size()[0]
        return [{slot: self.image_latent(pixels[b, k], generators[b])[0, :, 0]
                 for k, slot in enumerate(keyframe_slots(count, frames)) if k > 0}
                for b, count in enumerate(counts)]  # fmt: skip

    def with_keyframes(self, video: torch.Tensor, keyframes: list[dict[int, torch.Tensor]]) -> torch.Tensor:
        """Unpacked [B, C, T, h, w] with each sample's keyframe latents in their slots (out of place: autograd-safe)."""
        samples = []
        for b, slots in enumerate(keyframes):
            frames = list(video[b].unbind(1))
            for slot, latent in slots.items():
                frames[slot] = latent.to(video.dtype)
            samples.append(torch.stack(frames, dim=1))
        return torch.stack(samples)

    def pack(self, video: torch.Tensor) -> torch.Tensor:
        config = self.transformer.config
        return self.pipeline._pack_latents(video, config.patch_size, config.patch_size_t)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        config = self.transformer.config
        return self.pipeline._unpack_latents(tokens, *self.latent_size(), config.patch_size, config.patch_size_t)

    def first_step_inputs(
        self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed latents, per-token timestep) of the pipeline's first step, keyframes kept clean in their slots."""
        pixels = pixels.to(dtype)  # the pipeline feeds its VAE the image in the prompt embedding's dtype
        latents, mask = self.pipeline.prepare_latents(
            pixels[:, 0], len(counts), self.transformer.config.in_channels, self.height, self.width,
            self.pixel_frames, torch.float32, pixels.device, generators, None,
        )  # fmt: skip
        keyframes = self.keyframe_latents(pixels, counts, generators)
        if any(keyframes):
            latents = self.pack(self.with_keyframes(self.unpack(latents), keyframes))
            mask_video = self.unpack(mask.unsqueeze(-1))  # [B, 1, T, h, w]
            clean = [{slot: torch.ones_like(mask_video[0, :, 0]) for slot in slots} for slots in keyframes]
            mask = self.pack(self.with_keyframes(mask_video, clean)).squeeze(-1)
        t = self.first_timestep(pixels.device)
        timestep = t.expand(latents.shape[0]).unsqueeze(-1) * (1 - mask)  # the pipeline's per-token timestep
        return latents, timestep

    def noised_image_inputs(
        self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed latents, per-token timestep): image latent over T frames, noised to config.timestep everywhere."""
        frames, rows, cols = self.latent_size()
        pixels = pixels.to(dtype)
        clean = torch.cat([self.image_latent(pixels[b, 0], generators[b]) for b in range(len(counts))])
        shape = (len(counts), clean.shape[1], frames, rows, cols)
        noise = randn_tensor(shape, generator=generators, device=pixels.device, dtype=torch.float32)
        video = self.with_keyframes(clean.expand(shape), self.keyframe_latents(pixels, counts, generators))
        sigma = self.config.timestep / 1000.0
        latents = self.pack((1.0 - sigma) * video + sigma * noise)
        timestep = torch.full(latents.shape[:2], float(self.config.timestep), device=pixels.device)
        return latents, timestep

    def denoiser_call(self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> DenoiserCall:
        embeds, attention_mask = self.batch_prompt(len(counts))
        build = self.first_step_inputs if self.config.query == "first-step" else self.noised_image_inputs
        latents, timestep = build(pixels, counts, generators, embeds.dtype)
        frames, rows, cols = self.latent_size()
        pipe = self.pipeline
        kwargs = {
            "hidden_states": latents.to(embeds.dtype), "encoder_hidden_states": embeds, "timestep": timestep,
            "encoder_attention_mask": attention_mask, "num_frames": frames, "height": rows, "width": cols,
            "rope_interpolation_scale": (pipe.vae_temporal_compression_ratio / FRAME_RATE,
                                         pipe.vae_spatial_compression_ratio, pipe.vae_spatial_compression_ratio),
            "attention_kwargs": None,
        }  # fmt: skip
        return DenoiserCall(kwargs, self.token_grid())

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output  # an LTX block returns the video tokens [B, N, C] alone (no joint text stream)
