"""The DiT video generative encoders (CogVideoX, Wan, LTX-Video): what every family shares.

A family file (`cogvideox.py`, `wan.py`, `ltx.py`) subclasses `VideoDiTEncoder` and says how to load, build tiny and
build on `meta` its diffusers components, and how its image-to-video pipeline builds the denoiser's input for one
query (calling the pipeline's own helpers on a pipeline object that shares this module's components). This file
does the rest, identically for every family:

- the transform: one image or K keyframes -> uint8 frames [K, 3, H, W] (exact to store, hashable for the noise seed);
- per-sample randomness: one CPU generator per sample, seeded by a hash of its uint8 frames and `config.seed`, handed
  to the pipeline's helpers as their `generator`, so a sample gets the same noise (and VAE posterior sample) alone or
  in any batch, and its features can be cached;
- the text conditioning: an empty-prompt embedding read from a file written once by `scripts/encode_empty_prompt.py`
  with the family's real text encoder (no text encoder at run time; tiny encoders use a seeded random one); its
  provenance and digest are part of the feature-cache fingerprint;
- the tap: the transformer runs its own `forward` (so its patch embedding, time / image conditioning and positional
  embeddings are diffusers' own) and a forward hook on block `tap_block` stops it with that block's output; the later
  blocks and the output head are deleted at build time (`drop_unused_modules`), so they can never run;
- pooling: each latent token frame's h x w tokens average-pooled to `pool_grid` x `pool_grid` (frame-major order).

There is no `torch.no_grad` here: gradients reach the transformer or the VAE when they require them (the trainable
stages call the transformer the "unet", the generative encoder's denoiser, as for SVD).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from prismatic.models.backbones.vision.base_vision import (
    Images,
    PixelValues,
    StreamSpec,
    VisionBackbone,
    as_image_list,
)
from prismatic.models.backbones.vision.svd_unet import noise_seed, unpack_uint8_frames
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_prompt import (
    PROMPT_FILE,
    PromptEmbedding,
    load_prompt_embedding,
    random_prompt_embedding,
)

# Bump when what the per-sample draws are, or how they enter the computation, changes (part of the cache fingerprint).
VIDEO_NOISE_CONVENTION = 1


@dataclass
class VideoComponents:
    """The diffusers parts a feature pass needs (never a text encoder; the VAE decoder may be dropped)."""

    transformer: nn.Module
    vae: nn.Module
    scheduler: Any
    image_encoder: nn.Module | None = None  # Wan's CLIP vision tower
    image_processor: Any = None  # Wan's CLIPImageProcessor
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DenoiserCall:
    """One query of the denoiser: the keyword arguments of `transformer(...)` and the token grid it sees."""

    kwargs: dict[str, Any]
    grid: tuple[int, int, int]  # (token frames, token rows, token columns) of the video tokens


class TapReached(Exception):
    """Raised by the tap hook to stop the transformer right after the tapped block; carries its output."""

    def __init__(self, output: Any) -> None:
        super().__init__("tap reached")
        self.output = output


class VideoFrameTransform:
    """PIL image or list of K images -> {key: uint8 [K, 3, H, W]}, resized (aspect not kept) with `resample`.

    A class (not a closure) so data loader workers can pickle it."""

    def __init__(self, height: int, width: int, max_images: int, key: str, resample: Image.Resampling) -> None:
        self.height, self.width, self.max_images, self.key, self.resample = height, width, max_images, key, resample

    def __call__(self, images: Images) -> PixelValues:
        image_list = as_image_list(images)
        check_keyframe_count(len(image_list), self.max_images, self.key)
        arrays = [np.asarray(image.resize((self.width, self.height), self.resample)) for image in image_list]
        return {self.key: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()}


def check_keyframe_count(count: int, max_images: int, family: str) -> None:
    if count < 1:
        raise ValueError(f"Need at least one image per sample, got {count}.")
    if count > max_images:
        raise ValueError(
            f"Got {count} images for the {family} encoder, which takes at most {max_images} per sample (one per "
            "latent frame slot). Pass fewer keyframes, or raise the latent frame count (--model.video_num_frames)."
        )


def sample_generators(frames: torch.Tensor, counts: list[int], seed: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by its own uint8 frames (its first `count`) and the global seed."""
    frames_cpu = frames.cpu()
    return [torch.Generator(device="cpu").manual_seed(noise_seed(frames_cpu[b, :count], seed))
            for b, count in enumerate(counts)]  # fmt: skip


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], pool_grid: int) -> torch.Tensor:
    """[B, t*h*w, C] frame-major tokens -> [B, t*g*g, C], each token frame average-pooled to g x g (0 = unchanged)."""
    if pool_grid == 0:
        return tokens
    frames, rows, cols = grid
    if pool_grid > min(rows, cols):
        raise ValueError(
            f"pool_grid={pool_grid} is larger than the token grid {rows} x {cols}; use pool_grid <= {min(rows, cols)} "
            "or 0 for the raw tokens."
        )
    batch, count, channels = tokens.shape
    if count != frames * rows * cols:
        raise ValueError(f"Got {count} video tokens for a {frames} x {rows} x {cols} grid.")
    x = tokens.reshape(batch * frames, rows, cols, channels).permute(0, 3, 1, 2)
    x = F.adaptive_avg_pool2d(x.float(), pool_grid).to(tokens.dtype)
    return x.permute(0, 2, 3, 1).reshape(batch, frames * pool_grid * pool_grid, channels)


class VideoDiTEncoder(VisionBackbone):
    """Base of the DiT families: one denoiser query per sample, tapped at one block, pooled per latent frame."""

    family: ClassVar[str]  # the stream name and pixel key, e.g. "cogvideox"
    default_model_id: ClassVar[str]  # the hub id loaded when config.model_id is None
    blocks_attr: ClassVar[str]  # the transformer's ModuleList of blocks, e.g. "transformer_blocks"
    # Transformer modules (or bare parameters, e.g. the head's `scale_shift_table`) that only run after the blocks.
    head_attrs: ClassVar[tuple[str, ...]]
    block_classes: ClassVar[tuple[type[nn.Module], ...]] = ()  # FSDP units
    resample: ClassVar[Image.Resampling] = Image.Resampling.LANCZOS  # diffusers' VaeImageProcessor default
    prompt_has_mask: ClassVar[bool] = False  # whether the denoiser takes a text attention mask (LTX)
    real_prompt_tokens: ClassVar[int]  # the text sequence length the real pipeline encodes the empty prompt to

    def __init__(
        self,
        vision_backbone_id: str,
        config: VideoEncoderConfig,
        components: VideoComponents,
        architecture_only: bool = False,
    ) -> None:
        """`architecture_only` (random-init builds that read nothing, e.g. on `meta`): a random prompt embedding of the
        real model's shape (`real_prompt_tokens`) stands in for the stored one."""
        super().__init__(vision_backbone_id)
        self.config = config
        self.architecture_only = architecture_only
        self.transformer, self.vae = components.transformer, components.vae
        self.image_encoder = components.image_encoder
        self.scheduler = copy.deepcopy(components.scheduler)  # the caller's stays untouched
        self.components = components
        self.num_blocks = len(getattr(self.transformer, self.blocks_attr))
        self.tap = self.num_blocks // 2 if config.tap_block is None else config.tap_block
        if self.tap >= self.num_blocks:
            raise ValueError(
                f"tap_block={self.tap} but the {self.family} transformer has {self.num_blocks} blocks (0.."
                f"{self.num_blocks - 1}); pass --model.video_tap_block in that range."
            )
        self.height, self.width = self.resolve_size()
        self.prompt = self._prompt_embedding()
        # Persistent: the embedding is a fixed input of the model, so every state dict (an hf-auto export's weights, a
        # training checkpoint) carries the values the encoder ran with.
        self.register_buffer("prompt_embeds", self.prompt.embeds)
        mask = self.prompt.attention_mask
        self.register_buffer("prompt_attention_mask", mask if mask is not None else torch.ones(0),
                             persistent=mask is not None)  # fmt: skip
        self.pipeline = self.make_pipeline(components)  # a plain attribute: its modules are registered above

    # === What a family says ===
    @classmethod
    @abstractmethod
    def load_components(cls, config: VideoEncoderConfig, torch_dtype: torch.dtype) -> VideoComponents:
        """The components of the checkpoint `config.model_id` names (hub id or local pipeline directory)."""

    @classmethod
    @abstractmethod
    def build_tiny_components(cls, seed: int) -> VideoComponents:
        """Seeded random CPU-sized components with the family's real block structure."""

    @classmethod
    @abstractmethod
    def save_components(cls, components: VideoComponents, directory: Path) -> Path:
        """Write full components (VAE decoder included) as the family's image-to-video pipeline directory, without
        text parts: what `load_components` reads back (the native export writes the encoder this way)."""

    @classmethod
    @abstractmethod
    def build_architecture(cls) -> VideoComponents:
        """The real architecture from built-in configs, random init, reading nothing (use on the `meta` device)."""

    @classmethod
    @abstractmethod
    def encode_empty_prompt(cls, model_id: str, variant: str | None = None) -> PromptEmbedding:
        """The empty prompt through the checkpoint's real tokenizer and text encoder, via the pipeline's own
        `encode_prompt` (float32, on CPU; `scripts/encode_empty_prompt.py` saves it), with its provenance."""

    @abstractmethod
    def make_pipeline(self, components: VideoComponents) -> Any:
        """The family's diffusers image-to-video pipeline over these components (no tokenizer, no text encoder)."""

    @abstractmethod
    def resolve_size(self) -> tuple[int, int]:
        """(height, width) in pixels: the config's, checked against the model, or the family default."""

    @abstractmethod
    def token_grid(self) -> tuple[int, int, int]:
        """(token frames, token rows, token columns) of the tapped video tokens for this config."""

    @abstractmethod
    def denoiser_call(self, pixels: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> DenoiserCall:
        """The denoiser's input for frames [B, Kmax, 3, H, W] in [-1, 1] (float32), as the pipeline builds it."""

    @abstractmethod
    def video_tokens(self, block_output: Any) -> torch.Tensor:
        """The video tokens [B, N, C] from the tapped block's output (e.g. the first of a (video, text) pair)."""

    @property
    def max_images(self) -> int:
        """How many images (keyframes) one sample may carry: one per latent frame slot by default."""
        return self.config.num_frames

    @abstractmethod
    def random_prompt_shape(self) -> tuple[int, int]:
        """(tokens, width) of the seeded random prompt embedding tiny encoders use (each family's config names the
        text width differently)."""

    def family_description(self) -> dict[str, Any]:
        """Anything else (beyond the config, scheduler and prompt) that determines the features."""
        return {}

    # === VisionBackbone contract ===
    @classmethod
    def from_config(
        cls,
        vision_backbone_id: str,
        config: VideoEncoderConfig,
        torch_dtype: torch.dtype = torch.float32,
        load_weights: bool = True,
    ) -> VideoDiTEncoder:
        if config.tiny and (config.model_id is None or not load_weights):
            components = cls.build_tiny_components(config.seed)
        elif not load_weights:
            components = cls.build_architecture()
        else:
            components = cls.load_components(config, torch_dtype)
        for module in (components.transformer, components.vae, components.image_encoder):
            if module is not None and module.dtype != torch_dtype:
                module.to(torch_dtype)
        return cls(vision_backbone_id, config, components, architecture_only=not load_weights)

    @property
    def stream_name(self) -> str:
        return self.family

    @property
    def embed_dim(self) -> int:
        return int(self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim)

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        frames, rows, cols = self.token_grid()
        per_frame = rows * cols if self.config.pool_grid == 0 else self.config.pool_grid**2
        return (StreamSpec(self.stream_name, self.embed_dim, frames * per_frame),)

    def get_image_transform(self) -> VideoFrameTransform:
        return VideoFrameTransform(self.height, self.width, self.max_images, self.stream_name, self.resample)

    def forward(self, pixel_values: PixelValues) -> dict[str, torch.Tensor]:
        return {self.stream_name: self.encode(pixel_values)}

    @property
    def max_keyframes(self) -> int | None:
        return self.max_images

    def generative_parts(self) -> dict[str, nn.Module]:
        return {"unet": self.transformer, "vae": self.vae}

    @property
    def fsdp_wrap_modules(self) -> tuple[type[nn.Module], ...]:
        return self.block_classes

    @property
    def unused_module_names(self) -> tuple[str, ...]:
        """Names of what never runs (modules, or bare parameters such as a `scale_shift_table`: resolve those with
        `get_parameter`)."""
        later = [f"transformer.{self.blocks_attr}.{i}" for i in range(self.tap + 1, self.num_blocks)]
        return (*later, *(f"transformer.{name}" for name in self.head_attrs))

    def drop_unused_modules(self) -> None:
        """Delete the blocks after the tap and the output head (never run; irreversible) and the VAE decoder."""
        blocks = getattr(self.transformer, self.blocks_attr)
        setattr(self.transformer, self.blocks_attr, nn.ModuleList(list(blocks)[: self.tap + 1]))
        for name in self.head_attrs:
            setattr(self.transformer, name, None)
        if getattr(self.vae, "decoder", None) is not None:
            self.vae.decoder = None

    def cache_description(self) -> dict[str, Any]:
        config = {k: v for k, v in asdict(self.config).items() if k not in ("model_id", "prompt_embeds")}
        scheduler = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        return {"kind": self.family, "noise_convention": VIDEO_NOISE_CONVENTION, "config": config,
                "resolved": {"tap": self.tap, "height": self.height, "width": self.width, "grid": self.token_grid()},
                "scheduler": scheduler, "prompt": self.prompt.description(), **self.family_description()}  # fmt: skip

    # === Encoding ===
    def _prompt_embedding(self) -> PromptEmbedding:
        """Architecture-only builds read nothing (a seeded random one of the real shape, which a checkpoint fills: the
        buffer is persistent). Else the given file; else the model directory's own file; else (tiny encoders) a seeded
        random one; else an error that prints the command writing it."""
        if self.architecture_only:
            return self._random_prompt()
        if self.config.prompt_embeds is not None:
            return load_prompt_embedding(self.config.prompt_embeds, self.family)
        model_id = self.config.model_id or self.default_model_id
        if (Path(model_id) / PROMPT_FILE).is_file():
            return load_prompt_embedding(None, self.family, model_id=model_id)
        if self.config.tiny:
            return self._random_prompt()
        return load_prompt_embedding(None, self.family, model_id=model_id)

    def _random_prompt(self) -> PromptEmbedding:
        tokens, width = self.random_prompt_shape()
        if self.architecture_only and not self.config.tiny:
            tokens = self.real_prompt_tokens
        return random_prompt_embedding((tokens, width), self.config.seed, self.family, with_mask=self.prompt_has_mask)

    def batch_prompt(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The empty-prompt embedding (and attention mask, if the family has one) repeated to the batch."""
        # (On the transformer's device: a `meta` build keeps its prompt buffers on the CPU.)
        device, dtype = self.transformer.device, self.transformer.dtype
        embeds = self.prompt_embeds.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
        if self.prompt_attention_mask.numel() == 0:
            return embeds, None
        return embeds, self.prompt_attention_mask.to(device).expand(batch_size, -1)

    def run_to_tap(self, call: DenoiserCall) -> torch.Tensor:
        """The transformer's own forward, stopped by a hook right after block `tap`; returns its video tokens.

        The hook is registered for this call only, after any FSDP hooks, so FSDP's post-forward of the block has run
        when it raises."""
        block = getattr(self.transformer, self.blocks_attr)[self.tap]

        def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
            raise TapReached(output)

        handle = block.register_forward_hook(stop)
        try:
            self.transformer(**call.kwargs, return_dict=False)
        except TapReached as reached:
            return self.video_tokens(reached.output)
        finally:
            handle.remove()
        raise RuntimeError(f"The {self.family} transformer returned without running block {self.tap}.")

    def encode(self, pixel_values: PixelValues) -> torch.Tensor:
        """Features [B, tokens, C] of a collated batch."""
        frames, counts = unpack_uint8_frames(pixel_values, self.stream_name)
        if tuple(frames.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"Expected {self.height} x {self.width} frames, got {tuple(frames.shape[-2:])}; use the transform."
            )
        for count in counts:
            check_keyframe_count(count, self.max_images, self.family)
        call = self.query(frames, counts)
        tokens = self.run_to_tap(call)
        return pool_tokens(tokens, call.grid, self.config.pool_grid)

    def query(self, frames: torch.Tensor, counts: list[int]) -> DenoiserCall:
        """The denoiser call for uint8 frames [B, Kmax, 3, H, W]: [-1, 1] pixels on the model's device and each
        sample's own content-seeded generator."""
        pixels = frames.to(self.transformer.device).float() / 255.0 * 2.0 - 1.0
        return self.denoiser_call(pixels, counts, sample_generators(frames, counts, self.config.seed))
