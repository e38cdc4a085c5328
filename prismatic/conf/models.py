"""Model configs (draccus `ChoiceRegistry`): which VLM to build and how to optimise each of its training stages.

One registered choice per id and alias of `prismatic.models.registry` (`--model.type dyva_siglip`,
`--model.type dyva_siglip+7b`, `--model.type prism_siglip+tiny`, ...), generated from that registry so a model is
added in one place only. Every field can be overridden from the CLI (`--model.finetune_learning_rate 1e-5`) or YAML.

Fields follow prismatic-vlms: identity (`model_id`, backbones, `arch_specifier`, resize strategy), the generative
encoder's options (`svd_*`, mapped onto `SVDEncoderConfig` by `svd_encoder_config()`, for SVD; `video_*`, mapped onto
`VideoEncoderConfig` by `video_encoder_config()`, for the DiT video models CogVideoX / Wan / LTX), and one set of
optimisation fields per stage (`align_*` for the projector-only align stage, `finetune_*` for every other stage).
`validate()` checks every value before anything is built, naming the field and its valid values.

Tiny backbones (`tiny-*`, CPU-sized) run their SVD stream at 64 px: on seeded random components by default, or on the
tiny world model a local directory holds (`--model.svd_model_id <run_dir>/world_model`, as exported by
`scripts/train_world_model.py --svd_model_id tiny`). They never download a hub checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import get_args

import draccus
from draccus import ChoiceRegistry

from prismatic.models.backbones.llm.registry import LLM_BACKBONES
from prismatic.models.backbones.vision.base_vision import IMAGE_RESIZE_STRATEGIES
from prismatic.models.backbones.vision.registry import (
    VIDEO_KINDS,
    VISION_BACKBONE_ALIASES,
    VISION_BACKBONES,
    resolve_vision_backbone_id,
)
from prismatic.models.backbones.vision.svd_config import (
    DEFAULT_SVD_MODEL_ID,
    TINY_SVD_CONFIG,
    FeatureTap,
    KeyframePlacement,
    NoiseDevice,
    SVDEncoderConfig,
    SVDMode,
)
from prismatic.models.backbones.vision.video_config import (
    TINY_VIDEO_CONFIG,
    VideoEncoderConfig,
    VideoMode,
    VideoQuery,
)
from prismatic.models.losses import DEFAULT_CHUNK_ROWS, LossKernel
from prismatic.models.projectors import ArchSpecifier
from prismatic.models.registry import MODEL_ALIASES, MODEL_REGISTRY, ModelSpec
from prismatic.models.stages import Stage
from prismatic.models.vlms.visual_features import ENCODER_BATCHINGS, EncoderBatching
from prismatic.training.options import (
    LR_SCHEDULER_TYPES,
    TRAIN_STRATEGIES,
    LRSchedulerType,
    Precision,
    StageOptimization,
    TrainStrategy,
)

DEFAULT_MODEL_TYPE = "dyva_siglip+7b"

# Stages are written to config.yaml / config.json by their CLI spelling ("finetune"), which is what draccus decodes
# (its default for enums is the member name).
draccus.encode.register(Stage, lambda stage, declared_type=None: stage.value)


@dataclass
class ModelConfig(ChoiceRegistry):
    # === Identity (defaults come from the model registry entry of the chosen `type`) ===
    model_id: str = "dyva_siglip+7b"  # name recorded with the model; registry ids and aliases resolve in `load()`
    arch_specifier: str = "no-align+dual"  # "<align|no-align>+<projector>", e.g. "no-align+dual"
    # A LayerNorm on each visual stream before its projector MLP; off for the released models (their keys lack it).
    projector_feature_norm: bool = False
    vision_backbone_id: str = "siglip+svd"
    llm_backbone_id: str = "llama2-7b-pure"
    image_resize_strategy: str = "resize-naive"
    llm_max_length: int = 2048
    # The trainable set that `--stage finetune` uses: "finetune" (projector + LLM), or a U-Net ablation's set.
    finetune_stage: Stage = Stage.FINETUNE
    # Local directories instead of the hub (offline machines): the static vision encoder and the LLM.
    vision_pretrained_path: str | None = None
    llm_pretrained_path: str | None = None

    # === Generative (SVD) encoder; ignored by backbones without an SVD stream ===
    # Hub id or local diffusers dir. Tiny backbones: None (seeded random components) or a local tiny world model
    # directory (scripts/train_world_model.py's <run_dir>/world_model).
    svd_model_id: str | None = DEFAULT_SVD_MODEL_ID
    svd_variant: str | None = None  # diffusers weight variant, e.g. "fp16"
    svd_mode: SVDMode = "release"  # "release" (what the released checkpoints saw) or "paper" (the paper's equations)
    svd_num_frames: int = 8  # T frame slots; `--num_frames` on the pretrain config overrides it
    svd_sigma_index: int = 0  # index into the 25-step Karras schedule; 0 = sigma 700
    svd_placement: KeyframePlacement | None = None  # None = the mode's default (release: cond-slots)
    svd_tap: FeatureTap = "pre-mid"
    svd_feature_noise: bool = True  # release mode: the released tiny noise term (exact emulation)

    # === Generative DiT video encoder (CogVideoX / Wan / LTX, docs/encoders.md); ignored by other backbones ===
    # Hub id or local diffusers pipeline dir; None = the family's default hub id (tiny backbones: seeded random).
    video_model_id: str | None = None
    video_variant: str | None = None  # diffusers weight variant, e.g. "fp16"
    video_mode: VideoMode = "pipeline"  # "pipeline" (the diffusers pipeline's first step) or "release" (CogVideoX dev)
    video_query: VideoQuery = "first-step"  # or "noised-image": the image latent over T frames noised to video_timestep
    video_timestep: int = 300  # noised-image query only (0 = clean, 999 = pure noise)
    video_num_frames: int = 8  # T latent frames
    video_height: int | None = None  # None = the family's default (448, or the checkpoint's fixed size)
    video_width: int | None = None
    video_tap_block: int | None = None  # block whose output is the feature; None = mid depth
    video_pool_grid: int = 7  # g x g tokens per latent token frame (0 = the raw tokens)
    # The empty-prompt embedding file of scripts/encode_empty_prompt.py (None: the model directory's own)
    video_prompt_embeds: str | None = None

    # === Align stage (projector only; LLaVA-1.5's recipe) ===
    align_epochs: int = 1
    align_max_steps: int | None = None
    align_global_batch_size: int = 256
    align_per_device_batch_size: int = 16
    align_learning_rate: float = 1e-3
    align_weight_decay: float = 0.0
    align_max_grad_norm: float = 1.0
    align_lr_scheduler_type: LRSchedulerType = "linear-warmup+cosine-decay"
    align_warmup_ratio: float = 0.03
    align_train_strategy: TrainStrategy = "fsdp-shard-grad-op"

    # === Finetune stages (the paper's recipe, docs/model.md) ===
    finetune_epochs: int = 1
    finetune_max_steps: int | None = None
    finetune_global_batch_size: int = 128
    finetune_per_device_batch_size: int = 16
    finetune_learning_rate: float = 2e-5
    finetune_weight_decay: float = 0.1
    finetune_max_grad_norm: float = 1.0
    finetune_lr_scheduler_type: LRSchedulerType = "linear-warmup+cosine-decay"
    finetune_warmup_ratio: float = 0.03
    finetune_train_strategy: TrainStrategy = "fsdp-full-shard"

    # === LoRA (peft; prismatic/models/lora.py, docs/finetuning.md); rank 0 = off, full fine-tuning ===
    # With a rank > 0 the stage's LLM trains low-rank adapters only (the projector still trains fully).
    lora_rank: int = 0
    lora_alpha: int = 16  # adapter scale alpha / rank
    lora_dropout: float = 0.0
    # LLM modules to adapt (peft `target_modules`); None = every attention and MLP projection of the LLM's family
    lora_target_modules: tuple[str, ...] | None = None
    lora_vision: bool = False  # also adapt the static encoder's attention (it then trains: no feature cache)
    lora_unet: bool = False  # U-Net stages (finetune-unet*): adapt the U-Net's attention instead of training it all

    # === Compute and precision ===
    enable_gradient_checkpointing: bool = True  # on the LLM decoder layers
    enable_mixed_precision_training: bool = True  # bf16 compute, fp32 master weights
    reduce_in_full_precision: bool = True  # fp32 gradient reductions
    pure_bf16: bool = False  # weights and optimizer state in bf16, as the released run (most small updates vanish)
    # Frozen encoders: "per-sample" (features independent of the batch, so the feature cache is exact) or "batched"
    # (one encoder call per micro-batch; may be faster on GPU, equal to cached features up to float rounding only).
    encoder_batching: EncoderBatching = "per-sample"

    # === Performance levers (docs/performance.md); each default computes exactly what training always computed ===
    # Selective activation checkpointing: with enable_gradient_checkpointing, checkpoint one LLM decoder layer in
    # every `gradient_checkpointing_every` (1 = all of them; 2 = half, about half the activation memory saved and half
    # the recomputation). Pick the smallest value whose step fits the memory budget (docs/performance.md says how).
    gradient_checkpointing_every: int = 1
    # The loss at label positions: "plain" (their full-vocabulary logits, then cross-entropy), "chunked" (pure
    # PyTorch, `loss_chunk_rows` rows of logits at a time; exact to float rounding), "liger" (liger-kernel's fused
    # kernel, `pip install -e '.[gpu]'`, CUDA; falls back to plain with a warning where it cannot run).
    loss_kernel: LossKernel = "plain"
    loss_chunk_rows: int = DEFAULT_CHUNK_ROWS
    # torch.compile every LLM decoder layer (Inductor on CUDA; aot_eager on a CPU): equal to eager to float rounding.
    compile_llm_blocks: bool = False
    # Where the SVD encoder draws its per-sample content-seeded noise: "cpu" (the existing cache entries) or "device"
    # (on the encoder's device: no CPU draws; other random streams, hence another feature-cache fingerprint).
    svd_noise_device: NoiseDevice = "cpu"

    @classmethod
    def default_choice_name(cls) -> str | None:
        # Without `--model.type`, CLI overrides apply to DyVA-7B.
        return DEFAULT_MODEL_TYPE

    # === Derived values ===
    def optimization(self, stage: Stage | str) -> StageOptimization:
        """The `align_*` fields (align stage) or `finetune_*` fields (every other stage) as one object."""
        prefix = Stage(stage).recipe.value
        return StageOptimization(**{f: getattr(self, f"{prefix}_{f}") for f in StageOptimization.__dataclass_fields__})

    @property
    def precision(self) -> Precision:
        return Precision(mixed=self.enable_mixed_precision_training, pure_bf16=self.pure_bf16,
                         reduce_in_full_precision=self.reduce_in_full_precision)  # fmt: skip

    def trainable_stage(self, stage: Stage | str) -> Stage:
        """What trains in `stage`: `finetune` means this model's own finetune set (e.g. a U-Net ablation's)."""
        stage = Stage(stage)
        return Stage(self.finetune_stage) if stage is Stage.FINETUNE else stage

    def svd_encoder_config(self, num_frames: int | None = None) -> SVDEncoderConfig:
        """The generative encoder's config; `num_frames` (when given) overrides `svd_num_frames`.

        Tiny backbones run at 64 px (`TINY_SVD_CONFIG`) on the tiny world model in the directory `svd_model_id` names,
        or on seeded random components when it names none (see `tiny_svd_directory`)."""
        spec = VISION_BACKBONES[resolve_vision_backbone_id(self.vision_backbone_id)]
        if spec.tiny:
            directory = self.tiny_svd_directory() if spec.generative is not None else None
            # Without a directory the variant names no files: leave it out, so the random encoder (and its feature
            # cache fingerprint) stays what it always was.
            variant = self.svd_variant if directory is not None else None
            base = replace(TINY_SVD_CONFIG, model_id=directory, variant=variant)
        else:
            base = SVDEncoderConfig(model_id=self.svd_model_id, variant=self.svd_variant)
        return replace(
            base,
            mode=self.svd_mode,
            num_frames=self.svd_num_frames if num_frames is None else num_frames,
            sigma_index=self.svd_sigma_index,
            placement=self.svd_placement,
            tap=self.svd_tap,
            feature_noise=self.svd_feature_noise,
            noise_device=self.svd_noise_device,
        )

    def video_encoder_config(self) -> VideoEncoderConfig:
        """The DiT video encoder's config (tiny backbones: 64 px unless given, seeded random components unless
        `video_model_id` names a local tiny pipeline directory)."""
        tiny = VISION_BACKBONES[resolve_vision_backbone_id(self.vision_backbone_id)].tiny
        height, width = self.video_height, self.video_width
        if tiny and height is None and width is None:
            height, width = TINY_VIDEO_CONFIG.height, TINY_VIDEO_CONFIG.width
        return VideoEncoderConfig(
            model_id=self.video_model_id, variant=self.video_variant, mode=self.video_mode, query=self.video_query,
            timestep=self.video_timestep, num_frames=self.video_num_frames, height=height, width=width,
            tap_block=self.video_tap_block, pool_grid=self.video_pool_grid, prompt_embeds=self.video_prompt_embeds,
            tiny=tiny,
        )  # fmt: skip

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid field (as `--model.<field>`) and its valid values (a
        FileNotFoundError for a tiny backbone's `svd_model_id` that is not a world model directory)."""
        _check_choice("vision_backbone_id", self.vision_backbone_id, [*VISION_BACKBONES, *VISION_BACKBONE_ALIASES])
        _check_choice("llm_backbone_id", self.llm_backbone_id, list(LLM_BACKBONES))
        _check_choice("image_resize_strategy", self.image_resize_strategy, list(IMAGE_RESIZE_STRATEGIES))
        _check_choice("finetune_stage", self.finetune_stage, [s.value for s in Stage])
        _check_choice("svd_mode", self.svd_mode, list(get_args(SVDMode)))
        _check_choice("svd_tap", self.svd_tap, list(get_args(FeatureTap)))
        _check_choice("encoder_batching", self.encoder_batching, list(ENCODER_BATCHINGS))
        _check_choice("loss_kernel", self.loss_kernel, list(get_args(LossKernel)))
        _check_choice("svd_noise_device", self.svd_noise_device, list(get_args(NoiseDevice)))
        _check_positive("gradient_checkpointing_every", self.gradient_checkpointing_every)
        _check_positive("loss_chunk_rows", self.loss_chunk_rows)
        self._validate_tiny_svd()
        self._validate_video()
        if self.svd_placement is not None:
            _check_choice("svd_placement", self.svd_placement, list(get_args(KeyframePlacement)))
        try:
            ArchSpecifier.parse(self.arch_specifier)
        except ValueError as error:
            raise ValueError(f"--model.arch_specifier: {error}") from error
        _check_positive("llm_max_length", self.llm_max_length)
        _check_positive("svd_num_frames", self.svd_num_frames)
        if not 0 <= self.svd_sigma_index < SVDEncoderConfig.schedule_steps:
            raise ValueError(
                f"--model.svd_sigma_index={self.svd_sigma_index} must lie in [0, {SVDEncoderConfig.schedule_steps})."
            )
        for stage in (Stage.ALIGN, Stage.FINETUNE):
            self._validate_optimization(stage)

    def tiny_svd_directory(self) -> str | None:
        """A tiny backbone's SVD source: the local world model directory `svd_model_id` names, or None for seeded
        random components. The hub default that full-size model types carry (e.g. `--model.type dyva_siglip` with a
        tiny backbone swapped in) also means random components, as it always did; any other value must be a directory
        (a FileNotFoundError says what to pass)."""
        if self.svd_model_id is None or self.svd_model_id == DEFAULT_SVD_MODEL_ID:
            return None
        return str(check_tiny_svd_directory(self.svd_model_id, self.vision_backbone_id))

    def _validate_tiny_svd(self) -> None:
        spec = VISION_BACKBONES[resolve_vision_backbone_id(self.vision_backbone_id)]
        if not spec.tiny or spec.generative is None:
            return  # full-size backbones read any hub id; without an SVD stream the svd_* fields are unused
        if self.tiny_svd_directory() is None and self.svd_variant is not None:
            raise ValueError(
                f"--model.svd_variant={self.svd_variant!r} names weight files of an SVD directory, but "
                f"{self.vision_backbone_id!r} builds tiny random SVD components and reads none: drop it, or pass "
                "--model.svd_model_id DIR (a tiny world model exported by scripts/train_world_model.py)."
            )

    def _validate_video(self) -> None:
        spec = VISION_BACKBONES[resolve_vision_backbone_id(self.vision_backbone_id)]
        if spec.generative not in VIDEO_KINDS:
            return
        _check_choice("video_mode", self.video_mode, list(get_args(VideoMode)))
        _check_choice("video_query", self.video_query, list(get_args(VideoQuery)))
        if self.video_mode == "release" and spec.generative != "cogvideox":
            raise ValueError(
                f"--model.video_mode=release emulates the authors' CogVideoX encoder; {spec.generative!r} has no "
                "released computation: use --model.video_mode pipeline."
            )
        try:
            self.video_encoder_config()
        except ValueError as error:  # name the CLI flag, not the dataclass field
            raise ValueError(str(error).replace("VideoEncoderConfig.", "--model.video_")) from error

    def _validate_optimization(self, stage: Stage) -> None:
        opt = self.optimization(stage)
        _check_choice(f"{stage}_train_strategy", opt.train_strategy, list(TRAIN_STRATEGIES))
        _check_choice(f"{stage}_lr_scheduler_type", opt.lr_scheduler_type, list(LR_SCHEDULER_TYPES))
        for name in ("epochs", "global_batch_size", "per_device_batch_size"):
            _check_positive(f"{stage}_{name}", getattr(opt, name))
        if opt.max_steps is not None:
            _check_positive(f"{stage}_max_steps", opt.max_steps)
        if opt.global_batch_size % opt.per_device_batch_size != 0:
            raise ValueError(
                f"--model.{stage}_global_batch_size={opt.global_batch_size} must be a multiple of "
                f"--model.{stage}_per_device_batch_size={opt.per_device_batch_size}."
            )
        if not opt.learning_rate > 0:
            raise ValueError(f"--model.{stage}_learning_rate must be > 0, got {opt.learning_rate}.")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(opt, name) < 0:
                raise ValueError(f"--model.{stage}_{name} must be >= 0, got {getattr(opt, name)}.")
        if not 0 <= opt.warmup_ratio < 1:
            raise ValueError(f"--model.{stage}_warmup_ratio must lie in [0, 1), got {opt.warmup_ratio}.")


def check_tiny_svd_directory(path: str | Path, vision_backbone_id: str) -> Path:
    """The tiny world model directory a tiny backbone reads its SVD from; a FileNotFoundError saying what to pass when
    `path` is not one (tiny backbones never download: the hub SVD is 448/576 px and far too large for them)."""
    directory = Path(path)
    if not (directory / "unet").is_dir():
        problem = "has no unet/ folder" if directory.is_dir() else "is not a local directory"
        raise FileNotFoundError(
            f"svd_model_id={str(path)!r} {problem}. The tiny backbone {vision_backbone_id!r} reads its SVD only from "
            "a local diffusers directory exported by scripts/train_world_model.py (`--svd_model_id tiny` writes "
            "<run_dir>/world_model/, 64 px tiny components); it cannot download a hub checkpoint (the hub SVD is "
            "448/576 px and far too large). Pass that directory, or None / null for seeded random components."
        )
    return directory


def _check_choice(name: str, value: object, valid: list[str]) -> None:
    if value not in valid:
        raise ValueError(f"--model.{name}={value!r} is invalid; valid values are: {', '.join(sorted(valid))}.")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"--model.{name} must be a positive integer, got {value!r}.")


# === Registration: one choice per model registry id and alias ===
# Tiny models train on CPU in seconds: small batches, a high learning rate, fp32 (CPU bf16 is slow and inexact).
_TINY_DEFAULTS: dict[str, object] = {
    "finetune_global_batch_size": 8,
    "finetune_per_device_batch_size": 4,
    "finetune_learning_rate": 1e-3,
    "finetune_weight_decay": 0.0,
    "align_global_batch_size": 8,
    "align_per_device_batch_size": 4,
    "enable_gradient_checkpointing": False,
    "enable_mixed_precision_training": False,
    "svd_model_id": None,
    "video_num_frames": TINY_VIDEO_CONFIG.num_frames,
    "video_pool_grid": TINY_VIDEO_CONFIG.pool_grid,
}


def _spec_defaults(name: str, spec: ModelSpec) -> dict[str, object]:
    defaults: dict[str, object] = {
        "model_id": name,
        "arch_specifier": spec.arch_specifier,
        "vision_backbone_id": spec.vision_backbone_id,
        "llm_backbone_id": spec.llm_backbone_id,
        "image_resize_strategy": spec.image_resize_strategy,
        "finetune_stage": spec.stage,
        "svd_mode": spec.svd_mode,
        "svd_num_frames": spec.num_frames,
        "svd_tap": spec.tap,
    }
    if VISION_BACKBONES[resolve_vision_backbone_id(spec.vision_backbone_id)].tiny:
        defaults.update(_TINY_DEFAULTS)
    defaults.update(dict(spec.options))
    return defaults


def _make_choice(name: str, spec: ModelSpec) -> type[ModelConfig]:
    annotations = ModelConfig.__annotations__
    fields = [(key, annotations[key], field(default=value)) for key, value in _spec_defaults(name, spec).items()]
    class_name = "ModelConfig_" + re.sub(r"\W", "_", name)
    cls = make_dataclass(class_name, fields, bases=(ModelConfig,), namespace={"__module__": __name__})
    cls.__doc__ = spec.description if name == spec.model_id else f"{spec.description} (alias of {spec.model_id!r})"
    return cls


def _register_all() -> dict[str, type[ModelConfig]]:
    # Aliases get their own subclass (same values), so a saved config.yaml writes back the spelling the user chose.
    names = {**{model_id: model_id for model_id in MODEL_REGISTRY}, **MODEL_ALIASES}
    choices: dict[str, type[ModelConfig]] = {}
    for name, model_id in names.items():
        choices[name] = ModelConfig.register_subclass(name, _make_choice(name, MODEL_REGISTRY[model_id]))
    return choices


MODEL_CONFIGS: dict[str, type[ModelConfig]] = _register_all()


def get_model_config(model_type: str) -> ModelConfig:
    """A default-valued config by registered type (any id or alias of the model registry)."""
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model type {model_type!r}; registered types are: {', '.join(sorted(MODEL_CONFIGS))}.")
    return MODEL_CONFIGS[model_type]()
