"""Training strategies (FSDP2, DDP, single device) and `get_train_strategy`, which picks one from the config name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prismatic.models.losses import DEFAULT_CHUNK_ROWS, LossKernel
from prismatic.overwatch import initialize_overwatch
from prismatic.training.options import Precision, StageOptimization, TrainStrategy
from prismatic.training.strategies.base import StepResult, TrainingStrategy
from prismatic.training.strategies.ddp import DDPStrategy
from prismatic.training.strategies.fsdp import FSDPStrategy, ShardingMode
from prismatic.training.strategies.single import SingleDeviceStrategy
from prismatic.util.distributed import DistributedContext

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

__all__ = [
    "DDPStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "StepResult",
    "TrainingStrategy",
    "get_train_strategy",
    "resolve_train_strategy",
]

overwatch = initialize_overwatch(__name__)

_FSDP_SHARDING: dict[str, ShardingMode] = {
    "fsdp-full-shard": "full-shard",
    "fsdp-shard-grad-op": "shard-grad-op",
    "fsdp-hybrid-shard": "hybrid-shard",
}


def resolve_train_strategy(train_strategy: TrainStrategy, ctx: DistributedContext) -> TrainStrategy:
    """A distributed strategy on a single process (plain `python`) runs as `single`: there is nothing to shard."""
    if train_strategy == "single" and ctx.world_size > 1:
        raise ValueError(
            f"train_strategy='single' cannot run on {ctx.world_size} processes; launch with one process or pick "
            "fsdp-full-shard / fsdp-shard-grad-op / fsdp-hybrid-shard / ddp."
        )
    if train_strategy != "single" and not ctx.is_distributed:
        overwatch.info(f"One process without torchrun: running {train_strategy!r} as 'single'")
        return "single"
    return train_strategy


def get_train_strategy(
    train_strategy: TrainStrategy,
    vlm: PrismaticVLM,
    ctx: DistributedContext,
    optimization: StageOptimization,
    precision: Precision,
    enable_gradient_checkpointing: bool,
    total_steps: int,
    checkpoint_every: int = 1,
    loss_kernel: LossKernel = "plain",
    loss_chunk_rows: int = DEFAULT_CHUNK_ROWS,
    compile_blocks: bool = False,
) -> TrainingStrategy:
    """Build (not yet set up) the strategy named `train_strategy`; call `.setup()` to wrap the model. The last four
    are the performance levers of `ModelConfig` (`gradient_checkpointing_every`, `loss_kernel`, `loss_chunk_rows`,
    `compile_llm_blocks`)."""
    resolved = resolve_train_strategy(train_strategy, ctx)
    args = (vlm, ctx, optimization, precision, enable_gradient_checkpointing, total_steps)
    levers = {"checkpoint_every": checkpoint_every, "loss_kernel": loss_kernel, "loss_chunk_rows": loss_chunk_rows,
              "compile_blocks": compile_blocks}  # fmt: skip
    if resolved in _FSDP_SHARDING:
        return FSDPStrategy(*args, sharding=_FSDP_SHARDING[resolved], **levers)
    if resolved == "ddp":
        return DDPStrategy(*args, **levers)
    return SingleDeviceStrategy(*args, **levers)
