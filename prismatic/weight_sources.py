"""`WeightSources`: where `prismatic.load` (and `scripts/export.py`) read what a checkpoint does not hold (the frozen
encoders, the base LLM's config and tokenizer, a video model's pipeline and empty-prompt embedding) instead of what the
model's config says, with the checks that turn a source the model has no use for, or a missing local copy, into an
error that says what to pass."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from prismatic.conf.models import ModelConfig, check_tiny_svd_directory
from prismatic.models.backbones.vision.registry import VIDEO_KINDS, VISION_BACKBONES, resolve_vision_backbone_id


@dataclass(frozen=True)
class WeightSources:
    """Where `load` reads what the checkpoint does not hold (frozen encoders, the base LLM's config, tokenizer and, for
    an align-stage export, weights) instead of what the model's config says; None keeps the config's."""

    vision_pretrained_path: str | Path | None = None
    svd_model_id: str | Path | None = None
    svd_variant: str | None = None
    llm_pretrained_path: str | Path | None = None
    video_model_id: str | Path | None = None
    video_prompt_embeds: str | Path | None = None

    def apply(self, model_cfg: ModelConfig) -> None:
        """Write the given sources into `model_cfg`; a ValueError for one this model has no use for."""
        spec = VISION_BACKBONES[resolve_vision_backbone_id(model_cfg.vision_backbone_id)]
        backbone = model_cfg.vision_backbone_id
        self._apply_video(model_cfg, spec.generative in VIDEO_KINDS)
        if spec.generative in VIDEO_KINDS:
            spec = replace(spec, generative=None)  # the svd_* sources below do not apply to a video model
        for name in ("vision_pretrained_path", "svd_model_id", "llm_pretrained_path"):
            if str(getattr(self, name)) == "":
                raise ValueError(f"load({name}='') names nothing: pass a directory, or None to keep the config's.")
        if self.vision_pretrained_path is not None:
            if spec.static_id is None:
                raise ValueError(
                    f"vision_pretrained_path is for the static (timm) encoder, and {backbone!r} has none; drop it."
                )
            model_cfg.vision_pretrained_path = str(_existing_dir("vision_pretrained_path", self.vision_pretrained_path))
        if (self.svd_model_id is not None or self.svd_variant is not None) and spec.generative is None:
            raise ValueError(f"svd_model_id / svd_variant configure the SVD stream, and {backbone!r} has none.")
        if self.svd_model_id is not None:
            # Tiny backbones read a local tiny world model directory only (never the hub): say so before building.
            model_id = check_tiny_svd_directory(self.svd_model_id, backbone) if spec.tiny else self.svd_model_id
            model_cfg.svd_model_id = str(model_id)
        if self.svd_variant is not None:
            if spec.tiny and model_cfg.tiny_svd_directory() is None:
                raise ValueError(
                    f"{backbone!r} builds tiny random SVD components here and reads no SVD files: drop svd_variant, "
                    "or pass svd_model_id (a tiny world model directory exported by scripts/train_world_model.py)."
                )
            model_cfg.svd_variant = self.svd_variant or None  # "": the un-suffixed (full-precision) files
        if self.llm_pretrained_path is not None:
            model_cfg.llm_pretrained_path = str(_existing_dir("llm_pretrained_path", self.llm_pretrained_path))
        if spec.generative is not None:
            model_id = model_cfg.tiny_svd_directory() if spec.tiny else model_cfg.svd_model_id
            _check_svd_variant_files(model_id, model_cfg.svd_variant)

    def _apply_video(self, model_cfg: ModelConfig, has_video: bool) -> None:
        given = {"video_model_id": self.video_model_id, "video_prompt_embeds": self.video_prompt_embeds}
        for name, value in given.items():
            if value is None:
                continue
            if not has_video:
                raise ValueError(
                    f"{name} configures a video-model stream (CogVideoX, Wan, LTX), and "
                    f"{model_cfg.vision_backbone_id!r} has none; drop it."
                )
            if str(value) == "":
                raise ValueError(f"load({name}='') names nothing: pass a path, or None to keep the config's.")
            setattr(model_cfg, name, str(value))


def _existing_dir(name: str, path: str | Path) -> Path:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{name}={str(path)!r} is not a directory; pass the local copy's directory.")
    return Path(path)


def _check_svd_variant_files(model_id: str | None, variant: str | None) -> None:
    """A local SVD copy without the variant's files would fail deep inside diffusers: say what to pass instead."""
    if model_id is None or variant is None or not Path(model_id).is_dir():
        return  # a hub id: diffusers reports a missing variant itself
    vae_dir = Path(model_id) / "vae"
    if not any(f".{variant}." in file.name for file in vae_dir.glob("*")):
        raise FileNotFoundError(
            f"The SVD copy {model_id} has no {variant!r} weight files in {vae_dir} (e.g. "
            f"diffusion_pytorch_model.{variant}.safetensors). Download that variant, or pass svd_variant='' to read "
            "the un-suffixed (full-precision) files."
        )
