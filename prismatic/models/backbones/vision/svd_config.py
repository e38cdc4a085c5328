"""Configuration of the generative (Stable Video Diffusion) encoder: which checkpoint, which computation, which noise.

`release` mode reproduces what the authors' released checkpoints were trained on; `paper` mode follows the paper's
equations (both are stated exactly in `docs/model.md`). Every field is a plain value so it can live in a draccus config
and in `config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

SVDMode = Literal["release", "paper"]
KeyframePlacement = Literal["cond-slots", "z0-slots", "first"]
FeatureTap = Literal["pre-mid", "post-mid"]
# Where the per-sample content-seeded noise is drawn: "cpu" (a CPU generator, the original streams) or "device" (a
# generator on the encoder's device, same seed: no CPU work or copies, but other random streams than the CPU's).
NoiseDevice = Literal["cpu", "device"]

DEFAULT_SVD_MODEL_ID = "stabilityai/stable-video-diffusion-img2vid"


@dataclass(frozen=True)
class SVDEncoderConfig:
    # Hub id or local directory in the diffusers layout (vae/, unet/, image_encoder/, feature_extractor/, scheduler/).
    # None builds tiny random components from config objects (tests and the CPU demo).
    model_id: str | None = DEFAULT_SVD_MODEL_ID
    variant: str | None = None  # diffusers weight variant, e.g. "fp16"
    mode: SVDMode = "release"
    num_frames: int = 8  # T, the number of SVD frame slots
    image_size: int = 448  # square input resolution of the VAE
    sigma_index: int = 0  # index into the Karras schedule of `schedule_steps` steps; 0 = sigma_max = 700
    schedule_steps: int = 25
    placement: KeyframePlacement | None = None  # None = the mode's default: release -> cond-slots, paper -> z0-slots
    tap: FeatureTap = "pre-mid"
    feature_noise: bool = True  # release mode: add the released code's tiny noise term (exact emulation)
    noise_aug_strength: float = 0.02
    fps: int = 7  # fed to the U-Net as fps - 1
    motion_bucket_id: int = 127
    seed: int = 0  # global seed mixed into the per-sample content hash
    noise_device: NoiseDevice = "cpu"  # "device": draw on the encoder's device (another feature-cache fingerprint)

    def __post_init__(self) -> None:
        checks = {"mode": (self.mode, SVDMode), "tap": (self.tap, FeatureTap),
                  "noise_device": (self.noise_device, NoiseDevice)}  # fmt: skip
        if self.placement is not None:
            checks["placement"] = (self.placement, KeyframePlacement)
        for name, (value, literal) in checks.items():
            if value not in get_args(literal):
                raise ValueError(
                    f"SVDEncoderConfig.{name}={value!r} is invalid; choose one of {list(get_args(literal))}."
                )
        if self.num_frames < 1:
            raise ValueError(f"SVDEncoderConfig.num_frames must be >= 1, got {self.num_frames}.")
        if not 0 <= self.sigma_index < self.schedule_steps:
            raise ValueError(
                f"SVDEncoderConfig.sigma_index={self.sigma_index} must lie in [0, schedule_steps={self.schedule_steps})."
            )

    @property
    def resolved_placement(self) -> KeyframePlacement:
        if self.placement is not None:
            return self.placement
        return "cond-slots" if self.mode == "release" else "z0-slots"


# The tiny generative encoders (`tiny-*` backbone ids, tests, the CPU demo): seeded random components at 64 px, see
# `svd_components.build_tiny_svd_components`.
TINY_SVD_CONFIG = SVDEncoderConfig(model_id=None, image_size=64)
