"""
pretrain.py

Train a VLM (DyVA, its ablations, the prismatic baselines) for one stage on LLaVA-format data, with FSDP2, DDP or a
single device. Reads top to bottom: config -> VLM (built, frozen, cast) -> feature cache -> data -> strategy ->
(resume) -> train -> export; each step hands its product to the next (docs/architecture.md).

The paper's DyVA-7B run (`train.sh` wraps it):
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

A user error (a bad flag value, a missing dataset file, a bad `--resume`, bad samples under `--on_bad_sample error`)
prints `error: <message>` and exits with status 2; `--debug` or `DYVA_DEBUG=1` shows its traceback
(`prismatic/util/cli.py`). The steps that read what the user supplied run inside `user_errors()`; training does not.
SIGTERM / SIGUSR1 (a scheduler's preemption notice) finish the step, checkpoint, flush the metrics and exit with
`--preemption_exit_code` (0); `--resume auto` continues bit-exactly (docs/reliability.md).
"""

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import draccus

from prismatic.assembly import build_vlm
from prismatic.conf.pretrain import PretrainConfig
from prismatic.models.stages import Stage
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.feature_cache import FeatureCache
from prismatic.preprocessing.materialize import get_dataset_and_collator
from prismatic.preprocessing.sampler import DistributedResumableSampler
from prismatic.training.checkpointing import (
    EXPORTED_WEIGHTS_FILE,
    CheckpointManager,
    export_weights,
    load_pretrained_projector,
)
from prismatic.training.metrics import MetricsLogger
from prismatic.training.rng import seed_everything
from prismatic.training.run_setup import bundle_prompt_embedding, resolve_hf_token, save_run_config
from prismatic.training.strategies import get_train_strategy
from prismatic.training.throughput import ThroughputMeter
from prismatic.training.trainer import Trainer, plan_training
from prismatic.util.cli import run_cli, user_errors
from prismatic.util.distributed import DistributedContext, init_distributed, shutdown_distributed
from prismatic.util.preemption import Preempted, Preemption

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

overwatch = initialize_overwatch(__name__)


def pretrain(cfg: PretrainConfig) -> Path:
    """Run one training stage; returns the run directory. A preemption signal (`--preemption_signals`) received at any
    point stops it after the current step with a checkpoint (Trainer raises `Preempted`, which `run_cli` turns into
    `--preemption_exit_code`)."""
    with user_errors():
        preemption = Preemption(cfg.preemption_signals, cfg.preemption_exit_code)
    with preemption:
        try:
            return train_stage(cfg, preemption)
        except Preempted:
            shutdown_distributed()  # the checkpoint is written; leave the process group cleanly
            raise


def train_stage(cfg: PretrainConfig, preemption: Preemption) -> Path:
    """The stage itself. What the user supplied (flags, files, data, checkpoints) is checked inside `user_errors()`,
    so its problems raise a UserError (a ValueError) naming the fix."""
    # === Config: resolved and validated before anything is built (the world size comes from torchrun's env) ===
    with user_errors():
        cfg.resolve()
        cfg.validate(world_size=int(os.environ.get("WORLD_SIZE", "1")))
        hf_token = resolve_hf_token(cfg.hf_token)

    # === Processes, --resume (a bad path fails before anything is written), run directory, trackers, seeds ===
    ctx = init_distributed()
    run_dir = Path(cfg.run_root_dir) / str(cfg.run_id)
    checkpoints = CheckpointManager(run_dir, ctx, keep_last=cfg.keep_last)
    with user_errors():
        resume_from = checkpoints.resolve_resume(cfg.resume)
    if ctx.is_rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
    with user_errors():  # a video stream's empty-prompt file travels with the run (the config names the copy)
        bundle_prompt_embedding(cfg.model, run_dir, copy=ctx.is_rank_zero)
    if ctx.is_rank_zero:
        config_dict = save_run_config(cfg, run_dir, secret=hf_token)
    else:
        config_dict = {}
    ctx.barrier()
    with user_errors():
        cfg.prepare_dataset(ctx)  # e.g. the demo world, generated on first use
    # Trackers start before any model is built, so a tracker problem (e.g. no wandb login) fails in seconds.
    metrics = MetricsLogger(run_dir, cfg.trackers, ctx.is_rank_zero, str(cfg.run_id), config_dict,
                            cfg.wandb_project, cfg.wandb_entity)  # fmt: skip
    seed_everything(cfg.seed, ctx.rank)
    overwatch.info(f"Run {cfg.run_id}: model {cfg.model.model_id}, stage {cfg.stage}, run directory {run_dir}")

    with user_errors():  # weight sources, the projector checkpoint, the feature cache, the data and its preflight
        # === VLM: built, frozen for the stage, cast for the precision policy ===
        vlm = build_vlm(cfg.model, stage=cfg.stage, hf_token=hf_token)
        if cfg.pretrained_checkpoint is not None and cfg.stage is not Stage.ALIGN:
            load_pretrained_projector(vlm, Path(cfg.pretrained_checkpoint))

        # === Feature cache: the frozen encoders' outputs, for the encoders exactly as built and cast above ===
        feature_cache = None
        if cfg.feature_cache_dir is not None:
            feature_cache = FeatureCache.open(cfg.feature_cache_dir, vlm.vision_backbone)

        # === Data ===
        dataset, collator = get_dataset_and_collator(
            cfg.trainable_stage,
            cfg.dataset,
            vlm.vision_backbone.get_image_transform(),
            vlm.llm_backbone.conversation_tokenizer(),
            vlm.num_visual_tokens,
            padding_side="right",
            on_bad_sample=cfg.on_bad_sample,
            attach_features=feature_cache.attach if feature_cache is not None else None,
            fill_text_only_batches=True,
            truncate_long_samples=cfg.truncate_long_samples,
            preflight_cache=run_dir / "preflight.json",
        )
        optimization = cfg.optimization
        sampler = DistributedResumableSampler(
            dataset.modality_lengths(), optimization.global_batch_size, ctx.world_size, ctx.rank, seed=cfg.seed
        )
        plan = plan_training(optimization, sampler.steps_per_epoch, ctx.world_size)

    # === Strategy (wraps the model, builds the optimizer), then resume ===
    model = cfg.model
    strategy = get_train_strategy(optimization.train_strategy, vlm, ctx, optimization, model.precision,
                                  model.enable_gradient_checkpointing, plan.total_steps,
                                  checkpoint_every=model.gradient_checkpointing_every, loss_kernel=model.loss_kernel,
                                  loss_chunk_rows=model.loss_chunk_rows,
                                  compile_blocks=model.compile_llm_blocks)  # fmt: skip
    strategy.setup()
    start_step = 0
    if resume_from is not None:
        with user_errors():  # a checkpoint of another model, stage or sampler setting
            state = checkpoints.load(resume_from, strategy)
            sampler.load_state_dict(state.sampler)
        start_step = state.step

    # === Train ===
    metrics.begin(plan.total_steps, start_step)
    throughput = ThroughputMeter(vlm, ctx.device, peak_flops=cfg.peak_flops)
    trainer = Trainer(strategy, dataset, collator, sampler, plan, checkpoints, metrics, ctx, cfg.seed,
                      cfg.save_interval, cfg.stop_after_step, cfg.num_workers, throughput,
                      held_out_evaluation(cfg, vlm, ctx), cfg.eval_every, cfg.max_consecutive_skips, preemption,
                      timedelta(seconds=cfg.collective_timeout_s))  # fmt: skip
    step, finished = trainer.run(start_step)

    # === Export ===
    if finished:
        metadata = {"model_id": cfg.model.model_id, "stage": str(cfg.stage), "step": str(step), "format": "pt"}
        export_weights(strategy, run_dir / EXPORTED_WEIGHTS_FILE, ctx, metadata)
    metrics.close()
    if feature_cache is not None:
        overwatch.info(f"Feature cache lookups in this process (loader workers count theirs): {feature_cache.summary()}")
    overwatch.info(f"Done: {step} steps; run directory {run_dir}")
    shutdown_distributed()
    return run_dir


def held_out_evaluation(cfg: PretrainConfig, vlm: "PrismaticVLM", ctx: DistributedContext) -> Callable | None:
    """`--eval_every`: the harness's metrics of `--eval_benchmark` (a fixed subset) for the model being trained."""
    if cfg.eval_every is None:
        return None
    from prismatic.eval.harness import evaluate_in_memory
    from prismatic.eval.registry import get_benchmark

    benchmark, data_root = get_benchmark(cfg.eval_benchmark), Path(str(cfg.eval_data_root))

    def evaluate(step: int) -> dict[str, float]:
        overwatch.info(f"Step {step}: evaluating on {benchmark.name} ({data_root})")
        return evaluate_in_memory(vlm, benchmark, data_root, cfg.eval_batch_size, cfg.eval_max_items,
                                  synced_gpus=ctx.is_distributed)  # fmt: skip

    return evaluate


def main(argv: list[str] | None = None) -> Path:
    """The CLI: `argv` (default `sys.argv[1:]`) parsed as draccus.wrap() would (`--config_path FILE` plus flags on
    top), but inside `user_errors()`, so a malformed YAML file or a flag value of the wrong type is a user error."""
    with user_errors():
        cfg = draccus.parse(PretrainConfig, args=argv)
    return pretrain(cfg)


if __name__ == "__main__":
    run_cli(main)
