"""
cache_features.py

Run the frozen vision encoders (static patch tokens, SVD features; each stream optional) once over a dataset and store
their outputs in a memory-mapped cache, so training never runs them again (`scripts/pretrain.py --feature_cache_dir`).
Takes every flag of `pretrain.py` (the same model, dataset, stage and precision flags decide which encoder computes
what; a training YAML works as is with `--config_path`), plus the cache options below. Shards the images over
torchrun ranks; rerunning after an interruption (or on a grown dataset) encodes only what is missing. SIGTERM /
SIGUSR1 (a scheduler's preemption notice) commit what was encoded and exit with `--preemption_exit_code`; `--verify`
checks every stored entry's checksum first and rebuilds damaged chunks (docs/reliability.md).

    torchrun --nproc-per-node 8 scripts/cache_features.py --config_path configs/dyva-7b.yaml \
      --feature_cache_dir cache/dyva-7b
    torchrun --nproc-per-node 8 scripts/pretrain.py --config_path configs/dyva-7b.yaml --feature_cache_dir cache/dyva-7b

Entries are keyed by the content of the transformed pixels each encoder reads and by the encoder's full identity
(config, weights, dtype, library versions), so one directory can hold several encoder configurations and a changed
one never reads stale features. Disk cost, and how to pick `--storage_dtype`: see the README ("Frozen-feature cache").

A user error (no `--feature_cache_dir`, a bad flag value, a missing dataset file) prints `error: <message>` and exits
with status 2; `--debug` or `DYVA_DEBUG=1` shows its traceback (`prismatic/util/cli.py`).
"""

from dataclasses import dataclass
from pathlib import Path

import draccus

from prismatic.assembly import build_vision_backbone
from prismatic.conf.pretrain import PretrainConfig
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.feature_cache import (
    STORAGE_DTYPE_NAMES,
    BuildOptions,
    BuildReport,
    StorageDtype,
    build_feature_cache,
    image_groups,
)
from prismatic.preprocessing.records import load_records
from prismatic.training.rng import seed_everything
from prismatic.util.cli import run_cli, user_errors
from prismatic.util.distributed import init_distributed, shutdown_distributed
from prismatic.util.preemption import Preemption

overwatch = initialize_overwatch(__name__)


@dataclass
class CacheFeaturesConfig(PretrainConfig):
    # fmt: off
    # Which streams to cache ("vit", "svd"): default every stream of the vision backbone. E.g. --streams "[svd]"
    # caches only the generative stream (SigLIP then runs live: under 1/10 of the encoder FLOPs, 37 percent of the disk).
    streams: tuple[str, ...] | None = None
    storage_dtype: StorageDtype = "auto"            # auto: the encoder's compute dtype (exact); float32/bfloat16/float16
    chunk_size: int = 256                           # entries per chunk file (the most an interruption can lose)
    log_every_s: float = 30.0                       # progress line interval
    verify: bool = False                            # check every stored entry first; rebuild the damaged chunks
    # fmt: on


def validate(cfg: CacheFeaturesConfig) -> None:
    """Checks that need no model; errors name the flag and what to do."""
    if cfg.feature_cache_dir is None:
        raise ValueError("Pass --feature_cache_dir DIR: where to write the cache (training then reads it from there).")
    cfg.model.validate()
    if cfg.storage_dtype not in STORAGE_DTYPE_NAMES:
        raise ValueError(f"--storage_dtype {cfg.storage_dtype!r} is invalid; valid: {list(STORAGE_DTYPE_NAMES)}.")
    if cfg.chunk_size < 1 or cfg.num_workers < 0:
        raise ValueError("--chunk_size must be >= 1 and --num_workers >= 0.")
    if cfg.trainable_stage.trains_vision:
        raise ValueError(
            f"Stage {cfg.trainable_stage.value!r} trains vision modules of {cfg.model.vision_backbone_id!r}; only "
            "frozen encoders can be cached. Pick a stage with frozen encoders (align, finetune)."
        )
    if not cfg.dataset.prepares_itself:
        cfg.check_dataset_file()


def cache_features(cfg: CacheFeaturesConfig) -> BuildReport:
    """Build (or complete) the cache for `cfg`'s model, stage and dataset; returns this rank's report. The flags, the
    weight sources and the dataset file are checked inside `user_errors()` (a UserError, a ValueError, names the fix);
    the encoding loop is not. A preemption signal commits what was encoded and exits (`--preemption_exit_code`)."""
    with user_errors():
        cfg.resolve()
        validate(cfg)
        preemption = Preemption(cfg.preemption_signals, cfg.preemption_exit_code)
    with preemption:
        return build(cfg, preemption)


def build(cfg: CacheFeaturesConfig, preemption: Preemption) -> BuildReport:
    ctx = init_distributed()
    with user_errors():
        cfg.prepare_dataset(ctx)  # e.g. the demo world, generated on first use
    seed_everything(cfg.seed, ctx.rank)  # as pretrain.py does before building: the same encoder weights

    with user_errors():
        # The encoders exactly as training builds, freezes and casts them (the one assembly path).
        backbone = build_vision_backbone(cfg.model, cfg.stage)
        trainable = sorted({n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad})
        if trainable:  # e.g. the VAE-only ablation's conv stem, which trains in every stage
            raise ValueError(
                f"Stage {cfg.trainable_stage.value!r} trains vision modules {trainable} of "
                f"{cfg.model.vision_backbone_id!r}; only frozen encoders can be cached. Pick a stage with frozen "
                "encoders (align, finetune) or a backbone without trainable vision modules."
            )
        json_file, image_dir = cfg.dataset.components(cfg.stage)
        items = image_groups(load_records(json_file))
    backbone.to(ctx.device).train()  # the mode training runs it in (no encoder layer depends on it at p = 0)
    if cfg.model.encoder_batching != "per-sample":
        overwatch.warning("--model.encoder_batching batched: live misses will match cached features up to rounding only")

    options = BuildOptions(cfg.storage_dtype, cfg.chunk_size, cfg.num_workers, cfg.log_every_s, cfg.verify)
    streams = list(cfg.streams) if cfg.streams is not None else None
    report = build_feature_cache(items, image_dir, backbone.get_image_transform(), backbone,
                                 Path(cfg.feature_cache_dir), ctx, streams, options, preemption)  # fmt: skip
    shutdown_distributed()
    return report


def main(argv: list[str] | None = None) -> BuildReport:
    """The CLI: `argv` (default `sys.argv[1:]`) parsed as draccus.wrap() would (`--config_path FILE` plus flags on
    top), but inside `user_errors()`, so a malformed YAML file or a flag value of the wrong type is a user error."""
    with user_errors():
        cfg = draccus.parse(CacheFeaturesConfig, args=argv)
    return cache_features(cfg)


if __name__ == "__main__":
    run_cli(main)
