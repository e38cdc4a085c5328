"""The `native` export: one self-contained directory that `prismatic.load(OUT)` reads with nothing else on disk.

    OUT/config.json          the resolved run config; its model sources name the subdirectories below
    OUT/export.json          the manifest `load` recognises: which subdirectory holds which source, which adapters
    OUT/model.safetensors    the projector
    OUT/vision/              the static encoder (timm `save_for_hf`; DINO+SigLIP: dino/ and siglip/)
    OUT/svd/                 the generative SVD encoder (a diffusers pipeline directory)
    OUT/video/               or a video model's (CogVideoX, Wan, LTX: its image-to-video pipeline directory without text
                             parts, plus the empty-prompt embedding the encoder reads, `empty_prompt_embeds.safetensors`)
    OUT/llm/                 the LLM (transformers `save_pretrained`) with its tokenizer files
    OUT/adapters/<part>/     peft LoRA adapters (`llm`, `vision`, `unet`), unless `merge` folded them in
    OUT/README.md            the model card; OUT/training_config.yaml the run's config.yaml

The model is loaded once (`load_for_export`: `prismatic.load`, so the export holds exactly what `load(source)` runs;
other formats start from it too, calling `merge_lora` when they hold no adapters). Each part is then written through
its library's own saving: adapters via `PeftModel.save_pretrained` (then unloaded) or folded in with
`merge_and_unload`; the static encoder as a full timm model (the weights the backbone keeps overwrite the source's,
the dropped last block comes from the source); the SVD or video-model components likewise (a U-Net stage's trained
U-Net / transformer, or tiny seeded random components, exactly as the model ran them; the blocks after a video model's
tap come from the source, so the directory is a complete checkpoint and the default tap stays where it was); the LLM
with `save_pretrained`. A native export is itself a valid source (e.g. to merge the adapters of an earlier export).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from prismatic.assembly import lora_settings
from prismatic.conf.models import ModelConfig
from prismatic.export.card import TRAINING_CONFIG, CardInputs, model_card
from prismatic.loader import EXPORT_MANIFEST, RUN_CONFIG, RUN_WEIGHTS, load, model_config_of
from prismatic.models.backbones.vision.registry import VIDEO_KINDS, VISION_BACKBONES, resolve_vision_backbone_id
from prismatic.models.lora import lora_config, part_modules, to_peft_model
from prismatic.models.vlms.prismatic import PrismaticVLM
from prismatic.overwatch import initialize_overwatch
from prismatic.training.run_setup import encode_config
from prismatic.weight_sources import WeightSources

overwatch = initialize_overwatch(__name__)

NATIVE_FORMAT_VERSION = 1
VISION_DIR, SVD_DIR, VIDEO_DIR, LLM_DIR, ADAPTERS_DIR = "vision", "svd", "video", "llm", "adapters"


@dataclass(frozen=True)
class ExportOptions:
    """What every export format takes besides the source and the output directory."""

    merge: bool = False  # fold LoRA adapters into the base weights
    hf_token: str | None = None  # the token itself (for gated base models that `load` fetches)
    sources: WeightSources = field(default_factory=WeightSources)  # local copies of what the source does not hold


def load_for_export(source: Path, options: ExportOptions) -> tuple[PrismaticVLM, ModelConfig, dict | None]:
    """What every format writes from: the model in `source` exactly as `load` builds it (LoRA adapters injected), its
    model config (with the given sources applied) and its run config (None for the release layout)."""
    model_cfg, run_config = model_config_of(source)
    options.sources.apply(model_cfg)
    vlm = load(source, hf_token=options.hf_token, **vars(options.sources))
    return vlm, model_cfg, run_config


def merge_lora(vlm: PrismaticVLM, model_cfg: ModelConfig) -> None:
    """Fold every LoRA adapter into its base weights, in place (peft's `merge_and_unload`): a plain model after."""
    settings = lora_settings(model_cfg)
    for part, module in part_modules(vlm, settings.parts()).items():
        to_peft_model(module, lora_config(part, settings, vlm.llm_backbone.spec.family)).merge_and_unload()


def save_adapters(vlm: PrismaticVLM, model_cfg: ModelConfig, out: Path) -> dict[str, str]:
    """Write each LoRA part as a peft adapter directory under `out/adapters/` and remove it from the model (its base
    weights stay); returns {part: directory relative to `out`}."""
    settings = lora_settings(model_cfg)
    written: dict[str, str] = {}
    for part, module in part_modules(vlm, settings.parts()).items():
        peft_model = to_peft_model(module, lora_config(part, settings, vlm.llm_backbone.spec.family))
        written[part] = f"{ADAPTERS_DIR}/{part}"
        peft_model.save_pretrained(str(out / written[part]))
        peft_model.unload()
    return written


def export_native(source: Path, out: Path, options: ExportOptions) -> Path:
    """Export the model in `source` (a run directory, a released-layout directory or a native export) to `out`;
    returns `out`."""
    vlm, model_cfg, run_config = load_for_export(source, options)
    spec = VISION_BACKBONES[resolve_vision_backbone_id(model_cfg.vision_backbone_id)]
    if vlm.llm_backbone.tokenizer_is_fallback:
        raise ValueError(
            "The LLM's tokenizer could not be found, so the export would ship a stand-in vocabulary: pass "
            "--llm_pretrained_path (a local copy of the base LLM with its tokenizer files)."
        )
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    adapters: dict[str, str] = {}
    if options.merge:
        merge_lora(vlm, model_cfg)
    else:
        adapters = save_adapters(vlm, model_cfg, tmp)
    sources: dict[str, str] = {"llm_pretrained_path": LLM_DIR}
    if spec.static_id is not None:
        _save_static(vlm, model_cfg, tmp / VISION_DIR)
        sources["vision_pretrained_path"] = VISION_DIR
    if spec.generative == "svd":
        _save_svd(vlm, model_cfg, tmp / SVD_DIR)
        sources["svd_model_id"] = SVD_DIR
    elif spec.generative in VIDEO_KINDS:
        _save_video(vlm, model_cfg, tmp / VIDEO_DIR)
        sources["video_model_id"] = VIDEO_DIR
    vlm.llm_backbone.llm.save_pretrained(tmp / LLM_DIR)
    vlm.llm_backbone.tokenizer.save_pretrained(tmp / LLM_DIR)
    projector = {f"projector.{k}": v.detach().clone().contiguous() for k, v in vlm.projector.state_dict().items()}
    save_file(projector, str(tmp / RUN_WEIGHTS), metadata={"model_id": model_cfg.model_id, "format": "pt"})

    # The directories hold un-suffixed full-precision files, and the video directory its own prompt embedding.
    exported_cfg = replace(model_cfg, svd_variant=None, video_variant=None, video_prompt_embeds=None, **sources)
    if options.merge:
        exported_cfg = replace(exported_cfg, lora_rank=0, lora_vision=False, lora_unet=False)
    config = dict(run_config or {"stage": "finetune", "num_frames": model_cfg.svd_num_frames})
    config["model"] = encode_config(exported_cfg)
    config.pop("hf_token", None)  # the name of the trainer's token variable means nothing to whoever loads this
    (tmp / RUN_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    manifest = {"format": "native", "format_version": NATIVE_FORMAT_VERSION, "sources": sources,
                "adapters": adapters, "merged_lora": options.merge and model_cfg.lora_rank > 0,
                "exported_from": source.name}  # fmt: skip
    (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # A run's config.yaml, or the copy an earlier export made of it.
    training_config = next((f for f in (source / "config.yaml", source / TRAINING_CONFIG) if f.is_file()), None)
    has_training_config = training_config is not None
    if training_config is not None:
        shutil.copyfile(training_config, tmp / TRAINING_CONFIG)
    card = CardInputs(model_cfg, run_config, source, bool(manifest["merged_lora"]), tuple(adapters),
                      has_training_config)  # fmt: skip
    (tmp / "README.md").write_text(model_card(card))

    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    overwatch.info(f"Exported {source} to {out} ({'merged' if options.merge else 'adapters kept'})")
    return out


def _copy_weights(target: nn.Module, source: nn.Module, what: str) -> None:
    """Overwrite `target`'s weights with every tensor `source` holds (a subset: the backbone drops unused parts)."""
    result = target.load_state_dict(source.state_dict(), strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{what}: the model holds tensors the full module lacks: {result.unexpected_keys[:5]}")


def _save_static(vlm: PrismaticVLM, model_cfg: ModelConfig, directory: Path) -> None:
    """The static encoder as full timm models (what `vision_pretrained_path` reads), with the model's weights."""
    import timm

    from prismatic.models.backbones.vision.dual import DualStreamBackbone
    from prismatic.models.backbones.vision.timm_vit import DinoSigLIPBackbone, TimmViTBackbone, create_timm_model

    backbone = vlm.vision_backbone
    static = backbone.static if isinstance(backbone, DualStreamBackbone) else backbone
    source = model_cfg.vision_pretrained_path
    if isinstance(static, DinoSigLIPBackbone):
        parts = {"dino": static.dino, "siglip": static.siglip}
        paths = {name: None if source is None else Path(source) / name for name in parts}
    elif isinstance(static, TimmViTBackbone):
        parts, paths = {"": static}, {"": source}
    else:
        raise ValueError(f"{backbone.identifier!r}: no timm static encoder to export.")
    for name, encoder in parts.items():
        full = create_timm_model(encoder.spec, pretrained_path=paths[name])
        _copy_weights(full, encoder.featurizer, f"static encoder {encoder.identifier}")
        timm.models.save_for_hf(full, directory / name, safe_serialization=True)


def _save_svd(vlm: PrismaticVLM, model_cfg: ModelConfig, directory: Path) -> None:
    """The SVD components as a diffusers directory: the source's full components (VAE decoder and the U-Net's unused
    blocks included, so it is a valid SVD checkpoint) overwritten with every weight the encoder holds."""
    from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
    from prismatic.models.backbones.vision.svd_components import (
        build_tiny_svd_components,
        load_svd_components,
        save_svd_components,
    )

    encoder = next(m for m in vlm.vision_backbone.modules() if isinstance(m, SVDGenerativeEncoder))
    config = model_cfg.svd_encoder_config()
    if config.model_id is None:  # tiny seeded random components: rebuilt from the same seed, so the same weights
        components = build_tiny_svd_components(config.seed, config.image_size)
    else:
        components = load_svd_components(config.model_id, config.variant, drop_decoder=False)
    for name in ("vae", "unet", "image_encoder"):
        _copy_weights(getattr(components, name), getattr(encoder, name), f"SVD {name}")
    save_svd_components(components, directory)


def _save_video(vlm: PrismaticVLM, model_cfg: ModelConfig, directory: Path) -> None:
    """A video model's components as its pipeline directory (the source's full components overwritten with every
    weight the encoder holds) plus the encoder's empty-prompt embedding, which it finds there when loaded."""
    import torch

    from prismatic.models.backbones.vision.video_encoder import VideoDiTEncoder
    from prismatic.models.backbones.vision.video_prompt import PROMPT_FILE, PromptEmbedding, save_prompt_embedding

    encoder = next(m for m in vlm.vision_backbone.modules() if isinstance(m, VideoDiTEncoder))
    config = model_cfg.video_encoder_config()
    family = type(encoder)
    if config.tiny and config.model_id is None:  # tiny seeded random components: the same seed, the same weights
        components = family.build_tiny_components(config.seed)
    else:
        components = family.load_components(config, torch.float32)
    for name in ("transformer", "vae", "image_encoder"):
        if getattr(encoder, name) is not None:
            _copy_weights(getattr(components, name), getattr(encoder, name), f"{encoder.family} {name}")
    family.save_components(components, directory)
    # The buffers, not `encoder.prompt`: they hold what the model runs with (a checkpoint may have filled them).
    mask = encoder.prompt_attention_mask if encoder.prompt_attention_mask.numel() else None
    prompt = PromptEmbedding(encoder.prompt_embeds, mask, encoder.prompt.provenance)
    save_prompt_embedding(directory / PROMPT_FILE, prompt)
