"""The training run's config (draccus): a model config, a dataset config, the stage, and the run's own options.

`scripts/pretrain.py` trains from it and `scripts/cache_features.py` extends it (so a training YAML caches as is).
`resolve()` fills derived values so the saved config says exactly what ran; `validate()` checks everything that needs
no model and raises a ValueError / FileNotFoundError naming the flag and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prismatic.conf.datasets import DatasetConfig, get_dataset_config
from prismatic.conf.models import DEFAULT_MODEL_TYPE, ModelConfig, get_model_config
from prismatic.models.backbones.vision.registry import VISION_BACKBONES, resolve_vision_backbone_id
from prismatic.models.projectors import ArchSpecifier
from prismatic.models.stages import Stage
from prismatic.preprocessing.records import BadSamplePolicy
from prismatic.training.metrics import TRACKERS
from prismatic.training.options import StageOptimization
from prismatic.training.run_setup import check_hf_token_reference, default_run_id
from prismatic.util.distributed import DistributedContext
from prismatic.util.preemption import Preemption


@dataclass
class PretrainConfig:
    # fmt: off
    # ModelConfig (`prismatic/conf/models.py`): one registered type per model id / alias, e.g. `dyva_siglip`
    model: ModelConfig = field(default_factory=lambda: get_model_config(DEFAULT_MODEL_TYPE))
    # DatasetConfig (`prismatic/conf/datasets.py`): `llava-svd` / `llava_svd`, `llava-v15`, `llava-custom`
    dataset: DatasetConfig = field(default_factory=lambda: get_dataset_config("llava-svd"))

    # Stage: align (projector), finetune (the model's finetune set: projector + LLM, or a U-Net ablation's),
    # full-finetune (everything), finetune-unet / finetune-unet-vae (projector + LLM + U-Net [+ VAE], U-Net lr x 0.2)
    stage: Stage = Stage.FINETUNE
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

    # Divergence: a step with a non-finite gradient norm is skipped (no update; metrics: skipped, skipped_total); this
    # many skipped steps in a row stop the run with TrainingDiverged, saving nothing after the last good checkpoint
    max_consecutive_skips: int = 10

    # Preemption (docs/reliability.md): on one of these signals (Slurm --signal, a spot notice, torchrun
    # --signals-to-handle forwarding it) the step finishes, a checkpoint is written, metrics are flushed and the
    # process exits with preemption_exit_code (e.g. a status your job script requeues on); [] = the default actions
    preemption_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    preemption_exit_code: int = 0
    # Once training runs, a collective waiting longer than this for a stuck or dead rank fails (setup: 60 min)
    collective_timeout_s: float = 600.0

    # Data
    on_bad_sample: BadSamplePolicy = "error"        # error: stop before training, naming the files; skip: drop + log
    truncate_long_samples: bool = False             # cut over-long samples to llm_max_length instead of rejecting
    num_workers: int = 2                            # data loader workers per rank
    feature_cache_dir: Path | None = None           # frozen-encoder outputs from scripts/cache_features.py; misses: live

    # Throughput: MFU = model FLOPs / step time / this peak (FLOP/s per device); default: the accelerator table
    # (A100/A800/H100/H200/L40S/4090, dense bf16); on CPU or an unknown GPU MFU is not logged unless this is given
    peak_flops: float | None = None

    # Held-out evaluation during training (the evaluation harness, scripts/evaluate.py's protocol): every N steps and
    # at the end, on a prepared benchmark (scripts/prepare_benchmarks.py), logged to metrics.jsonl / wandb as eval/*
    eval_every: int | None = None
    eval_benchmark: str = "demo-world"
    eval_data_root: Path | None = None              # the --data_root the benchmark was prepared into
    eval_max_items: int | None = 256                # a fixed seeded subset (vlm-evaluation's slim rule); null = all
    eval_batch_size: int = 16
    # fmt: on

    @property
    def trainable_stage(self) -> Stage:
        """What trains: `finetune` means the model's own finetune set (e.g. a U-Net ablation's)."""
        return self.model.trainable_stage(self.stage)

    @property
    def optimization(self) -> StageOptimization:
        """The stage's optimisation fields (`align_*` for align, `finetune_*` otherwise)."""
        return self.model.optimization(self.stage)

    def resolve(self) -> None:
        """Fill derived values, so the saved config says exactly what ran."""
        self.stage = Stage(self.stage)
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
        if self.max_consecutive_skips < 1:
            raise ValueError(
                f"--max_consecutive_skips must be >= 1 (skipped steps in a row that stop the run), got "
                f"{self.max_consecutive_skips}."
            )
        for name in ("save_interval", "stop_after_step", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer (or null), got {value}.")
        if self.keep_last < 1 or self.num_workers < 0:
            raise ValueError("--keep_last must be >= 1 and --num_workers >= 0.")
        Preemption(self.preemption_signals, self.preemption_exit_code)  # names and status checked, nothing installed
        if self.collective_timeout_s <= 0:
            raise ValueError(f"--collective_timeout_s must be positive (seconds), got {self.collective_timeout_s}.")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"--peak_flops is the device's peak FLOP/s (e.g. 989e12), got {self.peak_flops}.")
        self._validate_stage()
        if self.eval_every is not None:
            self._validate_eval()
        if self.feature_cache_dir is not None:
            self._validate_feature_cache()
        self.validate_batch(world_size)
        if not self.dataset.prepares_itself:
            self.check_dataset_file()

    def _validate_eval(self) -> None:
        from prismatic.eval.registry import get_benchmark

        for name in ("eval_every", "eval_max_items", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}.")
        if self.eval_data_root is None:
            raise ValueError("--eval_every needs --eval_data_root: the folder scripts/prepare_benchmarks.py wrote.")
        get_benchmark(self.eval_benchmark).load_records(self.eval_data_root)  # fails now, naming the missing file

    def validate_batch(self, world_size: int) -> None:
        opt, prefix = self.optimization, self.stage.recipe.value
        if opt.train_strategy == "single" and world_size > 1:
            raise ValueError(f"--model.{prefix}_train_strategy single cannot run on {world_size} processes.")
        if opt.global_batch_size % (opt.per_device_batch_size * world_size):
            raise ValueError(
                f"--model.{prefix}_global_batch_size={opt.global_batch_size} must be a multiple of "
                f"--model.{prefix}_per_device_batch_size={opt.per_device_batch_size} x {world_size} process(es)."
            )

    def prepare_dataset(self, ctx: DistributedContext) -> None:
        """Create data that is generated rather than downloaded (e.g. the demo world) on rank 0 while the other ranks
        wait, then check it is there; a no-op for other datasets (validate() checked their files)."""
        if not self.dataset.prepares_itself:
            return
        if ctx.is_rank_zero:
            self.dataset.prepare()
        ctx.barrier()
        self.check_dataset_file()

    def check_dataset_file(self) -> None:
        json_file, _ = self.dataset.components(self.stage)
        if not json_file.is_file():
            raise FileNotFoundError(
                f"Dataset file {json_file} not found (--dataset.type {self.dataset.dataset_id}, --dataset."
                "dataset_root_dir); lay the data out with `python scripts/preprocess.py` or point the paths at it."
            )

    def _validate_feature_cache(self) -> None:
        if self.trainable_stage.trains_vision:
            raise ValueError(
                f"--feature_cache_dir serves frozen encoders, but stage {self.trainable_stage.value!r} trains the "
                "vision backbone (its features change every step); drop --feature_cache_dir for this stage."
            )
        if not Path(self.feature_cache_dir).is_dir():  # type: ignore[arg-type]
            raise FileNotFoundError(
                f"--feature_cache_dir {self.feature_cache_dir} does not exist; build it first with "
                "scripts/cache_features.py and this run's model/dataset flags, or drop the flag."
            )

    def _validate_stage(self) -> None:
        arch = ArchSpecifier.parse(self.model.arch_specifier)
        if self.stage is Stage.ALIGN and not arch.align:
            raise ValueError(f"--stage align needs an `align+` arch_specifier, got {self.model.arch_specifier!r}.")
        if self.stage is not Stage.ALIGN and arch.align and self.pretrained_checkpoint is None:
            raise ValueError(
                f"arch_specifier {self.model.arch_specifier!r} finetunes an aligned projector: pass "
                "--pretrained_checkpoint <align run dir> (train it with --stage align first), or use a `no-align+` arch."
            )
        if self.pretrained_checkpoint is not None and not Path(self.pretrained_checkpoint).exists():
            raise FileNotFoundError(f"--pretrained_checkpoint {self.pretrained_checkpoint} does not exist.")
        generative = VISION_BACKBONES[resolve_vision_backbone_id(self.model.vision_backbone_id)].generative
        if self.trainable_stage.generative_parts and generative in (None, "vae"):
            raise ValueError(
                f"Stage {self.trainable_stage.value!r} trains the generative encoder's denoiser (SVD's U-Net, a video "
                f"model's transformer), but vision backbone {self.model.vision_backbone_id!r} has none; use one with a "
                "generative stream (e.g. siglip+svd, siglip+wan)."
            )
