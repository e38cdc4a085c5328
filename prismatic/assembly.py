"""The one assembly path: a VLM (or its vision half alone) from a resolved model config, built, frozen and cast.

`scripts/pretrain.py`, `prismatic.load()`, `scripts/cache_features.py`, the benchmarks and the tests all build models
here, so a model built for training, for the feature cache and for inference is the same model:
- the pieces come from the registries (`prismatic.models.materialize`): the vision backbone with its generative
  encoder's options (`ModelConfig.svd_encoder_config()` / `video_encoder_config()`), the LLM, the projector sized to
  both;
- `stage` (training) sets what trains (`PrismaticVLM.freeze_backbones`) and applies the precision policy's casts: a
  frozen vision backbone is stored in bf16 under mixed precision (it needs no fp32 master copy, and the feature cache
  keys on that dtype), and `pure_bf16` casts everything, as the released run did. The training strategy then only
  wraps the model and computes in that precision;
- `stage=None` (inference) freezes everything and switches to eval mode; nothing is cast (call `vlm.to(...)`).
- LoRA (`lora_rank > 0`, `prismatic.models.lora`): adapters are injected before freezing, so a LoRA model is the same
  module tree for training, checkpoints and `load()`; `set_trainable` says what trains (the stage, then adapters only
  in each adapted part), for the builder and for the loader's checkpoint coverage alike.

With `load_weights=False` nothing is read from disk but the packaged tokenizer vocabularies, so a 7B model builds
under `with torch.device("meta"):`; `llm_weights=False` builds the LLM's architecture only (a checkpoint fills it).
"""

from __future__ import annotations

from prismatic.conf.models import ModelConfig, get_model_config
from prismatic.models.backbones.vision.base_vision import VisionBackbone
from prismatic.models.lora import LoraSettings, apply_lora, mark_trainable
from prismatic.models.materialize import get_llm_backbone_and_tokenizer, get_vision_backbone_and_transform, get_vlm
from prismatic.models.stages import Stage, parse_stage
from prismatic.models.vlms.prismatic import PrismaticVLM, freeze_vision_backbone
from prismatic.training.options import HALF_DTYPE


def _vision_backbone(model_cfg: ModelConfig, load_weights: bool) -> VisionBackbone:
    backbone, _ = get_vision_backbone_and_transform(
        model_cfg.vision_backbone_id,
        model_cfg.image_resize_strategy,
        num_frames=model_cfg.svd_num_frames,
        svd_config=model_cfg.svd_encoder_config(),
        pretrained_path=model_cfg.vision_pretrained_path,
        load_weights=load_weights,
        video_config=model_cfg.video_encoder_config(),
    )
    return backbone


def _cast_vision_backbone(model_cfg: ModelConfig, backbone: VisionBackbone) -> None:
    vision_trains = any(p.requires_grad for p in backbone.parameters())
    dtype = model_cfg.precision.vision_backbone_dtype(vision_trains)
    if dtype is not None:
        backbone.to(dtype)


def build_vision_backbone(model_cfg: ModelConfig, stage: Stage | str, load_weights: bool = True) -> VisionBackbone:
    """The vision backbone alone, exactly as `build_vlm` builds, freezes and casts it for training `stage` (what the
    feature cache encodes with)."""
    backbone = _vision_backbone(model_cfg, load_weights)
    freeze_vision_backbone(backbone, model_cfg.trainable_stage(stage))
    _cast_vision_backbone(model_cfg, backbone)
    return backbone


def lora_settings(model_cfg: ModelConfig) -> LoraSettings:
    """The model config's `lora_*` fields as the LoRA module's settings; a ValueError naming a bad field."""
    targets = None if model_cfg.lora_target_modules is None else tuple(model_cfg.lora_target_modules)
    settings = LoraSettings(rank=model_cfg.lora_rank, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                            target_modules=targets, vision=model_cfg.lora_vision, unet=model_cfg.lora_unet)  # fmt: skip
    settings.validate()
    return settings


def set_trainable(vlm: PrismaticVLM, model_cfg: ModelConfig, stage: Stage | str) -> None:
    """`requires_grad` for training `stage` (a stage of this model: `finetune` means its own finetune set): the
    stage's set (`PrismaticVLM.freeze_backbones`), then, with LoRA, only the adapters of each adapted part."""
    trained = model_cfg.trainable_stage(parse_stage(stage))
    vlm.freeze_backbones(trained)
    settings = lora_settings(model_cfg)
    if settings.enabled:
        mark_trainable(vlm, settings, trained)


def build_vlm(
    model_cfg: ModelConfig | str,
    stage: Stage | str | None = None,
    hf_token: str | None = None,
    load_weights: bool = True,
    llm_weights: bool = True,
) -> PrismaticVLM:
    """Build the VLM `model_cfg` describes (a config, or a registered model type for its defaults): for training
    `stage` (frozen and cast for it), or for inference (None)."""
    if isinstance(model_cfg, str):
        model_cfg = get_model_config(model_cfg)
    vision_backbone = _vision_backbone(model_cfg, load_weights)
    llm_backbone, _ = get_llm_backbone_and_tokenizer(
        model_cfg.llm_backbone_id,
        llm_max_length=model_cfg.llm_max_length,
        hf_token=hf_token,
        inference_mode=not (load_weights and llm_weights),
        pretrained_path=model_cfg.llm_pretrained_path,
    )
    vlm = get_vlm(model_cfg.model_id, model_cfg.arch_specifier, vision_backbone, llm_backbone,
                  projector_feature_norm=model_cfg.projector_feature_norm,
                  encoder_batching=model_cfg.encoder_batching)  # fmt: skip
    settings = lora_settings(model_cfg)
    if settings.enabled:
        apply_lora(vlm, settings)
    if stage is None:
        vlm.requires_grad_(False)
        return vlm.eval()
    set_trainable(vlm, model_cfg, stage)
    if model_cfg.pure_bf16:
        vlm.to(HALF_DTYPE)
    else:
        _cast_vision_backbone(model_cfg, vlm.vision_backbone)
    return vlm
