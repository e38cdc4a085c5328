"""How the world model's objective is spread over ranks: a single device, DDP, or FSDP2, plus bf16 mixed precision.

- `single`: the objective on one device.
- `ddp`: `DistributedDataParallel` around the whole objective (only trainable parameters are registered, so the frozen
  VAE and CLIP tower cost no communication); the all-reduce is deferred between micro-batches (`no_sync`).
- `fsdp`: FSDP2 `fully_shard` on each of the U-Net's down/mid/up blocks, then on the U-Net itself (the objective calls
  the U-Net's own `forward`, so the root's hooks fire). The frozen VAE and image encoder are not sharded: they stay
  replicated on every rank, with no gradient and no optimizer state. Sharding happens in place, so the objective and
  its `unet` attribute are unchanged objects.

Mixed precision (`--mixed_precision`): fp32 master weights and optimizer state. single / ddp run the forward under bf16
autocast (the frozen encoders too); fsdp uses FSDP2's policy instead (the framework's, `training/strategies/fsdp.py`):
parameters all-gathered and computed in bf16, gradients reduced in fp32, the U-Net's output in fp32; its frozen
encoders then run in fp32 (autocast on top of the policy fails on CPU). Without it, everything is fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from prismatic.training.optimizer import clip_grad_norm_global
from prismatic.training.options import HALF_DTYPE
from prismatic.util.distributed import DistributedContext
from prismatic.world_model.options import WorldModelStrategy
from prismatic.world_model.svd_objective import SVDWorldModelObjective

STRATEGIES: tuple[str, ...] = get_args(WorldModelStrategy)


def check_strategy(name: str, world_size: int) -> WorldModelStrategy:
    """The strategy name, validated against the number of processes."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {list(STRATEGIES)}.")
    if name == "single" and world_size > 1:
        raise ValueError(f"strategy=single runs one process but {world_size} were launched; use ddp or fsdp.")
    return name  # type: ignore[return-value]


@dataclass
class ParallelObjective:
    """The objective as this rank runs it: `objective` (always the unwrapped module: checkpoints, validation) and
    `forward_module` (what training calls: the DDP wrapper or the objective itself)."""

    objective: SVDWorldModelObjective
    forward_module: nn.Module
    strategy: WorldModelStrategy
    ctx: DistributedContext
    mixed_precision: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        # FSDP2's policy already computes the U-Net in bf16; autocast on top of it breaks on CPU (group_norm's fp32
        # autocast input against bf16 parameters), so under fsdp the frozen encoders run in fp32.
        if not self.mixed_precision or self.strategy == "fsdp":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=HALF_DTYPE)

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Defer DDP's all-reduce until the last micro-batch (FSDP2 reduce-scatters each time: correct, simpler)."""
        if self.strategy == "ddp" and not is_last_micro_batch:
            return self.forward_module.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.objective.trainable_parameters()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm of the trainable gradients (across shards under FSDP), then clip to `max_norm` (0 = off)."""
        return clip_grad_norm_global(self.trainable_parameters(), max_norm)

    def full_unet_state(self) -> dict[str, torch.Tensor]:
        """Collective: the U-Net's weights, unsharded, on the CPU (rank 0 gets them, the others an empty dict)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.objective.unet, options=options)


def _shard_unet(unet: nn.Module, ctx: DistributedContext, mixed_precision: bool) -> None:
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("shard",))
    param_dtype = HALF_DTYPE if mixed_precision else None
    # Blocks hand bf16 activations to the next unit; only the root returns fp32 (the EDM math upcasts anyway). An
    # fp32 block output would meet the root's bf16 conv_norm_out and fail.
    block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                       output_dtype=torch.float32 if mixed_precision else None)  # fmt: skip
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]  # type: ignore[union-attr]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=block_policy)
    fully_shard(unet, mesh=mesh, mp_policy=root_policy)


def parallelize(
    objective: SVDWorldModelObjective, strategy: WorldModelStrategy, ctx: DistributedContext, mixed_precision: bool
) -> ParallelObjective:
    """Move the objective to this rank's device and wrap it for `strategy` (see the module docstring)."""
    check_strategy(strategy, ctx.world_size)
    objective.to(ctx.device)
    forward_module: nn.Module = objective
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward_module = DistributedDataParallel(objective, device_ids=device_ids, gradient_as_bucket_view=True)
    elif strategy == "fsdp":
        if objective.config.train_vae or objective.config.train_image_encoder:
            raise ValueError("strategy=fsdp shards the U-Net only; use ddp to also train the VAE or image encoder.")
        _shard_unet(objective.unet, ctx, mixed_precision)
    return ParallelObjective(objective, forward_module, strategy, ctx, mixed_precision)
