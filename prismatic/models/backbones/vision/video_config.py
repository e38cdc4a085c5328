"""Configuration of a DiT video generative encoder (CogVideoX, Wan, LTX-Video): which checkpoint, which computation.

One config class serves every family of the zoo (`video_encoder.py`); what a value means for a family (its latent
frame rule, its schedule, its default resolution) is that family's file's business. Every field is a plain value so it
lives in a draccus config and in `config.json` (`ModelConfig.video_*`).

- `mode="pipeline"` (default) builds the denoiser's input the way the family's diffusers image-to-video pipeline does
  for its first denoising step; `mode="release"` is a family's emulation of how released checkpoints were trained
  (only CogVideoX has one: the authors' `dev` branch, `docs/encoders.md`).
- `query="first-step"` (default) queries the denoiser at the first step of the pipeline's default schedule from pure
  noise (the analogue of SVD's release mode; conditioning stays as the pipeline has it, e.g. LTX's clean first-frame
  tokens); `query="noised-image"` replicates the image latent over the T latent
  frames and noises it to `timestep` (0..999, the model's training timesteps: 0 clean, 999 pure noise).
- `num_frames` counts *latent* frames T (pixel frames are 4(T-1)+1 for CogVideoX / Wan, 8(T-1)+1 for LTX).
- `tap_block` is the index of the transformer block whose output is the feature (None = num_blocks // 2, mid
  depth); the forward stops right after it. `pool_grid` average-pools each latent token frame to g x g tokens
  (0 = the raw tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

VideoMode = Literal["pipeline", "release"]
VideoQuery = Literal["first-step", "noised-image"]


@dataclass(frozen=True)
class VideoEncoderConfig:
    # Hub id or local diffusers pipeline directory; None = the family's default hub id (tiny encoders: seeded random
    # components, or a local tiny directory).
    model_id: str | None = None
    variant: str | None = None  # diffusers weight variant, e.g. "fp16"
    mode: VideoMode = "pipeline"
    query: VideoQuery = "first-step"
    timestep: int = 300  # noised-image query only: the training timestep the replicated image latent is noised to
    num_inference_steps: int | None = None  # the schedule the first step is taken from; None = the pipeline's default
    num_frames: int = 8  # T latent frames
    height: int | None = None  # None = the family's default resolution for the loaded checkpoint
    width: int | None = None
    tap_block: int | None = None  # None = mid depth (num_blocks // 2)
    pool_grid: int = 7  # tokens per side per latent token frame after average pooling; 0 = raw tokens
    # A file written by scripts/encode_empty_prompt.py (the empty prompt through the family's real text encoder);
    # None = `empty_prompt_embeds.safetensors` inside the model directory, or a seeded random one for tiny encoders.
    prompt_embeds: str | None = None
    seed: int = 0  # global seed mixed into the per-sample content hash of every random draw
    tiny: bool = False  # seeded random test-size components with the family's real block structure

    def __post_init__(self) -> None:
        for name, literal in (("mode", VideoMode), ("query", VideoQuery)):
            if getattr(self, name) not in get_args(literal):
                raise ValueError(
                    f"VideoEncoderConfig.{name}={getattr(self, name)!r} is invalid; choose one of "
                    f"{list(get_args(literal))}."
                )
        if self.num_frames < 1:
            raise ValueError(f"VideoEncoderConfig.num_frames must be >= 1 (latent frames), got {self.num_frames}.")
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"VideoEncoderConfig.timestep must lie in [0, 1000), got {self.timestep}.")
        if self.pool_grid < 0:
            raise ValueError(f"VideoEncoderConfig.pool_grid must be >= 0 (0 = raw tokens), got {self.pool_grid}.")
        if self.tap_block is not None and self.tap_block < 0:
            raise ValueError(f"VideoEncoderConfig.tap_block must be >= 0 (a block index), got {self.tap_block}.")
        if (self.height is None) != (self.width is None):
            raise ValueError("Give both VideoEncoderConfig.height and .width, or neither (the family's default).")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")


# The tiny video encoders (`tiny-*` backbone ids, tests): seeded random components at 64 px, 4 latent frames, each
# token frame pooled to 4 x 4.
TINY_VIDEO_CONFIG = VideoEncoderConfig(tiny=True, height=64, width=64, num_frames=4, pool_grid=4)
