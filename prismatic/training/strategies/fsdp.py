"""FSDP2 (`torch.distributed.fsdp.fully_shard`): full shard, shard-grad-op, and hybrid shard across nodes.

Sharding units, innermost first: each LLM decoder layer (`llm_backbone.transformer_layer_cls`), the vision backbone's
own units (`vision_backbone.fsdp_wrap_modules`) when it trains, the projector, then the whole VLM as the root. A
frozen vision backbone is not sharded at all (`ignored_params`): it is stored in bf16, replicated on every rank and
runs with no communication; it holds no gradient and no optimizer state.

- `fsdp-full-shard`: parameters, gradients and optimizer state sharded; parameters resharded after forward.
- `fsdp-shard-grad-op`: the same, but parameters stay gathered between forward and backward (less communication,
  more memory), i.e. `reshard_after_forward=False`.
- `fsdp-hybrid-shard`: a 2-D mesh (replicate across nodes, shard within a node), so all-gathers stay on the fast
  intra-node links and only gradient all-reduces cross nodes.

Mixed precision is FSDP's policy: bf16 parameters for compute, fp32 (by default) gradient reductions, fp32 master
weights in the optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, cast

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from prismatic.overwatch import initialize_overwatch
from prismatic.training.options import HALF_DTYPE
from prismatic.training.strategies.base import TrainingStrategy

overwatch = initialize_overwatch(__name__)

ShardingMode = Literal["full-shard", "shard-grad-op", "hybrid-shard"]


class FSDPStrategy(TrainingStrategy):
    sharding: ShardingMode = "full-shard"

    def __init__(self, *args, sharding: ShardingMode = "full-shard", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sharding = sharding

    def build_mesh(self) -> DeviceMesh:
        device_type = self.ctx.device.type
        if self.sharding == "hybrid-shard":
            shape = (self.ctx.num_nodes, self.ctx.world_size // self.ctx.num_nodes)
            overwatch.info(f"Hybrid sharding: replicate over {shape[0]} node(s), shard over {shape[1]} rank(s) each")
            return init_device_mesh(device_type, shape, mesh_dim_names=("replicate", "shard"))
        return init_device_mesh(device_type, (self.ctx.world_size,), mesh_dim_names=("shard",))

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        precision = self.precision
        param_dtype = HALF_DTYPE if precision.mixed and not precision.pure_bf16 else None
        if precision.reduce_in_full_precision:
            reduce_dtype = torch.float32
        else:
            reduce_dtype = HALF_DTYPE if precision.low_precision else None
        return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        # The mixed-precision policy already computes in bf16 (params cast at all-gather, inputs at each unit).
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def inference_context(self) -> Iterator[None]:
        # Generation calls the LLM and the encoders directly, never the root's forward, whose pre-forward hook is what
        # gathers the root's own parameters (embeddings, final norm, lm_head): gather them here for the duration.
        root = cast(FSDPModule, self.model)
        root.unshard()
        try:
            yield
        finally:
            root.reshard()

    def wrap_model(self) -> nn.Module:
        vlm, device = self.vlm, self.ctx.device
        shard_kwargs = {
            "mesh": self.build_mesh(),
            "mp_policy": self.mixed_precision_policy(),
            "reshard_after_forward": self.sharding != "shard-grad-op",
        }
        vision_trains = any(p.requires_grad for p in vlm.vision_backbone.parameters())
        ignored: set[nn.Parameter] = set()
        if vision_trains:
            for module in _units(vlm.vision_backbone, vlm.vision_backbone.fsdp_wrap_modules):
                fully_shard(module, **shard_kwargs)
        else:
            vlm.vision_backbone.to(device)  # FSDP does not move ignored parameters
            ignored = set(vlm.vision_backbone.parameters())
        for layer in _units(vlm.llm_backbone, (vlm.llm_backbone.transformer_layer_cls,)):
            fully_shard(layer, **shard_kwargs)
        fully_shard(vlm.projector, **shard_kwargs)
        fully_shard(vlm, ignored_params=ignored, **shard_kwargs)
        return vlm


def _units(root: nn.Module, classes: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """Submodules of the given classes that hold parameters, outermost only (a unit never nests in another)."""
    if not classes:
        return []
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in root.modules():
        if id(module) in inside:
            continue
        if isinstance(module, classes) and any(True for _ in module.parameters()):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found
