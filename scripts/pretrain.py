"""
pretrain.py

Train a VLM (DyVA, its ablations, the prismatic baselines) for one stage on LLaVA-format data, with FSDP2, DDP or a
single device. Reads top to bottom: config -> validate -> seed -> vision backbone -> LLM -> VLM -> freeze -> data ->
strategy -> (resume) -> train -> export.

The paper's DyVA-7B run (SPEC 3; `train.sh` wraps it):
    torchrun --nnodes 1 --nproc-per-node 8 scripts/pretrain.py --model.type "dyva_siglip" \
      --model.model_id "dyva_siglip" --model.arch_specifier "no-align+dual" \
      --model.llm_backbone_id "llama2-7b-pure" --model.llm_max_length 2048 \
      --model.image_resize_strategy "resize-naive" --model.enable_mixed_precision_training True \
      --model.finetune_per_device_batch_size 1 --num_frames 8 --model.finetune_learning_rate 1e-5 \
      --hf_token HF_TOKEN --run_id "example" --run_root_dir "runs" --dataset.type "llava_svd" \
      --wandb_project P --wandb_entity E --stage "finetune"

A YAML file works too (`--config_path configs/dyva-7b.yaml`), with CLI flags overriding it. Plain
`python scripts/pretrain.py ...` runs on one process. The run directory `<run_root_dir>/<run_id>/` receives
config.yaml, config.json, metrics.jsonl, checkpoints/, model.safetensors (the trainable weights) and loss.png.

`--feature_cache_dir DIR` reads the frozen encoders' outputs from a cache built by `scripts/cache_features.py` with the
same model and dataset flags; samples it lacks are encoded live, and the losses are the same as without it.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from prismatic.conf.datasets import DatasetConfig, get_dataset_config
from prismatic.conf.models import DEFAULT_MODEL_TYPE, ModelConfig, OptimStage, get_model_config
from prismatic.models.backbones.vision.registry import VISION_BACKBONES, resolve_vision_backbone_id
from prismatic.models.materialize import get_llm_backbone_and_tokenizer, get_vision_backbone_and_transform, get_vlm
from prismatic.models.projectors import ArchSpecifier
from prismatic.models.vlms.prismatic import STAGE_ENCODER_MODULES, Stage
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.feature_cache import FeatureCache
from prismatic.preprocessing.materialize import get_dataset_and_collator
from prismatic.preprocessing.records import BadSamplePolicy
from prismatic.preprocessing.sampler import DistributedResumableSampler
from prismatic.training.checkpointing import (
    EXPORTED_WEIGHTS_FILE,
    CheckpointManager,
    export_weights,
    load_pretrained_projector,
)
from prismatic.training.distributed import init_distributed, shutdown_distributed
from prismatic.training.metrics import TRACKERS, MetricsLogger
from prismatic.training.rng import seed_everything
from prismatic.training.run_setup import (
    check_hf_token_reference,
    default_run_id,
    resolve_hf_token,
    save_run_config,
)
from prismatic.training.strategies import Precision, get_train_strategy
from prismatic.training.throughput import ThroughputMeter
from prismatic.training.trainer import Trainer, plan_training

overwatch = initialize_overwatch(__name__)


@dataclass
class PretrainConfig:
    # fmt: off
    # ModelConfig (`prismatic/conf/models.py`): one registered type per model id / alias, e.g. `dyva_siglip`
    model: ModelConfig = field(default_factory=lambda: get_model_config(DEFAULT_MODEL_TYPE))
    # DatasetConfig (`prismatic/conf/datasets.py`): `llava-svd` / `llava_svd`, `llava-v15`, `llava-custom`
    dataset: DatasetConfig = field(default_factory=lambda: get_dataset_config("llava-svd"))

    # Stage: align (projector), finetune (the model's finetune set: projector + LLM, or a U-Net ablation's),
    # full-finetune (everything), finetune-unet / finetune-unet-vae (projector + LLM + U-Net [+ VAE], U-Net lr x 0.2)
    stage: Stage = "finetune"
    num_frames: int | None = None                   # SVD frame slots T (honoured); None = the model's default
    pretrained_checkpoint: Path | None = None       # align run dir or .safetensors: projector for `align+` archs

    # Run
    run_id: str | None = None                       # default: <dataset>+<model>+stage-<stage>+x<seed>
    run_root_dir: Path = Path("runs")
    seed: int = 7
    hf_token: str = "HF_TOKEN"                      # NAME of an env var, or a file path; the token is never saved

    # Trackers: jsonl always; wandb when listed or when --wandb_project is given (WANDB_MODE=offline works)
    trackers: tuple[str, ...] = ("jsonl",)
    wandb_project: str | None = None
    wandb_entity: str | None = None                 # no default: wandb's own default entity

    # Checkpoints
    save_interval: int | None = 500                 # steps between checkpoints (one is always written at the end)
    keep_last: int = 3                              # complete checkpoints kept
    resume: str | None = None                       # "auto" (newest complete checkpoint of this run) or a path
    stop_after_step: int | None = None              # end this process after that step, checkpointed (job limits)

    # Data
    on_bad_sample: BadSamplePolicy = "error"        # error: stop before training, naming the files; skip: drop + log
    truncate_long_samples: bool = False             # cut over-long samples to llm_max_length instead of rejecting
    num_workers: int = 2                            # data loader workers per rank
    feature_cache_dir: Path | None = None           # frozen-encoder outputs from scripts/cache_features.py; misses: live

    # Throughput: MFU = model FLOPs / step time / this peak (FLOP/s per device); default: the accelerator table
    # (A100/A800/H100/H200/L40S/4090, dense bf16); on CPU or an unknown GPU MFU is not logged unless this is given
    peak_flops: float | None = None
    # fmt: on

    @property
    def optim_stage(self) -> OptimStage:
        return "align" if self.stage == "align" else "finetune"

    @property
    def trainable_stage(self) -> Stage:
        """What freeze_backbones() gets: `finetune` means the model's own finetune set (e.g. a U-Net ablation's)."""
        return self.model.finetune_stage if self.stage == "finetune" else self.stage

    def resolve(self) -> None:
        """Fill derived values, so the saved config says exactly what ran."""
        if self.num_frames is not None:
            self.model.svd_num_frames = self.num_frames
        self.num_frames = self.model.svd_num_frames
        if self.run_id is None:
            self.run_id = default_run_id(self.dataset.dataset_id, self.model.model_id, self.stage, self.seed)
        if self.wandb_project is not None and "wandb" not in self.trackers:
            self.trackers = (*self.trackers, "wandb")
        if "jsonl" not in self.trackers:
            self.trackers = ("jsonl", *self.trackers)

    def validate(self, world_size: int) -> None:
        """Every check that needs no model: raises a ValueError naming the flag and its valid values."""
        check_hf_token_reference(self.hf_token)  # a pasted token must not reach the saved config
        self.model.validate()
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ValueError(f"--trackers: unknown {unknown}; valid trackers are {list(TRACKERS)}.")
        for name in ("save_interval", "stop_after_step", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer (or null), got {value}.")
        if self.keep_last < 1 or self.num_workers < 0:
            raise ValueError("--keep_last must be >= 1 and --num_workers >= 0.")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"--peak_flops is the device's peak FLOP/s (e.g. 989e12), got {self.peak_flops}.")
        self._validate_stage()
        if self.feature_cache_dir is not None:
            self._validate_feature_cache()
        opt = self.model.optimization(self.optim_stage)
        if opt.train_strategy == "single" and world_size > 1:
            raise ValueError(f"--model.{self.optim_stage}_train_strategy single cannot run on {world_size} processes.")
        if opt.global_batch_size % (opt.per_device_batch_size * world_size):
            raise ValueError(
                f"--model.{self.optim_stage}_global_batch_size={opt.global_batch_size} must be a multiple of "
                f"--model.{self.optim_stage}_per_device_batch_size={opt.per_device_batch_size} x {world_size} "
                "process(es)."
            )
        json_file, _ = self.dataset.components(self.optim_stage)
        if not json_file.is_file():
            raise FileNotFoundError(
                f"Dataset file {json_file} not found (--dataset.type {self.dataset.dataset_id}, --dataset."
                "dataset_root_dir); lay the data out with `python scripts/preprocess.py` or point the paths at it."
            )

    def _validate_feature_cache(self) -> None:
        if self.trainable_stage in ("full-finetune", *STAGE_ENCODER_MODULES):
            raise ValueError(
                f"--feature_cache_dir serves frozen encoders, but stage {self.trainable_stage!r} trains the vision "
                "backbone (its features change every step); drop --feature_cache_dir for this stage."
            )
        if not Path(self.feature_cache_dir).is_dir():  # type: ignore[arg-type]
            raise FileNotFoundError(
                f"--feature_cache_dir {self.feature_cache_dir} does not exist; build it first with "
                "scripts/cache_features.py and this run's model/dataset flags, or drop the flag."
            )

    def _validate_stage(self) -> None:
        arch = ArchSpecifier.parse(self.model.arch_specifier)
        if self.stage == "align" and not arch.align:
            raise ValueError(f"--stage align needs an `align+` arch_specifier, got {self.model.arch_specifier!r}.")
        if self.stage != "align" and arch.align and self.pretrained_checkpoint is None:
            raise ValueError(
                f"arch_specifier {self.model.arch_specifier!r} finetunes an aligned projector: pass "
                "--pretrained_checkpoint <align run dir> (train it with --stage align first), or use a `no-align+` arch."
            )
        if self.pretrained_checkpoint is not None and not Path(self.pretrained_checkpoint).exists():
            raise FileNotFoundError(f"--pretrained_checkpoint {self.pretrained_checkpoint} does not exist.")
        generative = VISION_BACKBONES[resolve_vision_backbone_id(self.model.vision_backbone_id)].generative
        if self.trainable_stage in ("finetune-unet", "finetune-unet-vae") and generative != "svd":
            raise ValueError(
                f"Stage {self.trainable_stage!r} trains the SVD U-Net, but vision backbone "
                f"{self.model.vision_backbone_id!r} has none; use one with an SVD stream (e.g. siglip+svd)."
            )


def pretrain(cfg: PretrainConfig) -> Path:
    """Run one training stage; returns the run directory."""
    # === Validate before anything is built (the world size comes from torchrun's environment) ===
    cfg.resolve()
    cfg.validate(world_size=int(os.environ.get("WORLD_SIZE", "1")))
    hf_token = resolve_hf_token(cfg.hf_token)

    # === Processes, run directory, seeds ===
    ctx = init_distributed()
    run_dir = Path(cfg.run_root_dir) / str(cfg.run_id)
    if ctx.is_rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_dict = save_run_config(cfg, run_dir, secret=hf_token)
    else:
        config_dict = {}
    ctx.barrier()
    # Trackers start before any model is built, so a tracker problem (e.g. no wandb login) fails in seconds.
    metrics = MetricsLogger(run_dir, cfg.trackers, ctx.is_rank_zero, str(cfg.run_id), config_dict,
                            cfg.wandb_project, cfg.wandb_entity)  # fmt: skip
    seed_everything(cfg.seed, ctx.rank)
    overwatch.info(f"Run {cfg.run_id}: model {cfg.model.model_id}, stage {cfg.stage}, run directory {run_dir}")

    # === Model: vision backbone -> LLM -> VLM -> freeze ===
    model_cfg = cfg.model
    vision_backbone, image_transform = get_vision_backbone_and_transform(
        model_cfg.vision_backbone_id,
        model_cfg.image_resize_strategy,
        num_frames=cfg.num_frames,
        svd_config=model_cfg.svd_encoder_config(cfg.num_frames),
        pretrained_path=model_cfg.vision_pretrained_path,
    )
    llm_backbone, _ = get_llm_backbone_and_tokenizer(
        model_cfg.llm_backbone_id,
        llm_max_length=model_cfg.llm_max_length,
        hf_token=hf_token,
        pretrained_path=model_cfg.llm_pretrained_path,
    )
    vlm = get_vlm(model_cfg.model_id, model_cfg.arch_specifier, vision_backbone, llm_backbone,
                  enable_mixed_precision_training=model_cfg.enable_mixed_precision_training,
                  projector_feature_norm=model_cfg.projector_feature_norm)  # fmt: skip
    vlm.encoder_batching = model_cfg.encoder_batching
    if cfg.pretrained_checkpoint is not None and cfg.stage != "align":
        load_pretrained_projector(vlm, Path(cfg.pretrained_checkpoint))
    vlm.freeze_backbones(cfg.trainable_stage)

    # === Data ===
    dataset, collator = get_dataset_and_collator(
        cfg.trainable_stage,
        cfg.dataset,
        image_transform,
        llm_backbone,
        vlm.num_visual_tokens,
        padding_side="right",
        on_bad_sample=cfg.on_bad_sample,
        truncate_long_samples=cfg.truncate_long_samples,
        preflight_cache=run_dir / "preflight.json",
    )
    optimization = model_cfg.optimization(cfg.optim_stage)
    sampler = DistributedResumableSampler(
        dataset.modality_lengths(), optimization.global_batch_size, ctx.world_size, ctx.rank, seed=cfg.seed
    )
    plan = plan_training(optimization, sampler.steps_per_epoch, ctx.world_size)

    # === Strategy (wraps the model), then resume ===
    precision = Precision(
        mixed=model_cfg.enable_mixed_precision_training,
        pure_bf16=model_cfg.pure_bf16,
        reduce_in_full_precision=model_cfg.reduce_in_full_precision,
    )
    strategy = get_train_strategy(
        optimization.train_strategy,
        vlm,
        ctx,
        optimization,
        precision,
        model_cfg.enable_gradient_checkpointing,
        plan.total_steps,
        image_transform,
    )
    strategy.setup()
    feature_cache = None
    if cfg.feature_cache_dir is not None:  # opened after setup: its key covers the dtype the strategy gave the encoder
        feature_cache = FeatureCache.open(cfg.feature_cache_dir, vlm.vision_backbone)
        dataset.feature_cache = feature_cache
        strategy.image_row_filler.attach_features(feature_cache.attach)
    checkpoints = CheckpointManager(run_dir, ctx, keep_last=cfg.keep_last)
    start_step = 0
    resume_from = checkpoints.resolve_resume(cfg.resume)
    if resume_from is not None:
        state = checkpoints.load(resume_from, strategy)
        sampler.load_state_dict(state.sampler)
        start_step = state.step

    # === Train ===
    metrics.begin(plan.total_steps, start_step)
    throughput = ThroughputMeter(vlm, ctx.device, peak_flops=cfg.peak_flops)
    trainer = Trainer(strategy, dataset, collator, sampler, plan, checkpoints, metrics, ctx, cfg.seed,
                      cfg.save_interval, cfg.stop_after_step, cfg.num_workers, throughput)  # fmt: skip
    step, finished = trainer.run(start_step)
    if finished:
        metadata = {"model_id": model_cfg.model_id, "stage": cfg.stage, "step": str(step), "format": "pt"}
        export_weights(strategy, run_dir / EXPORTED_WEIGHTS_FILE, ctx, metadata)
    metrics.close()
    if feature_cache is not None:
        overwatch.info(f"Feature cache lookups in this process (loader workers count theirs): {feature_cache.summary()}")
    overwatch.info(f"Done: {step} steps; run directory {run_dir}")
    shutdown_distributed()
    return run_dir


@draccus.wrap()
def main(cfg: PretrainConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
