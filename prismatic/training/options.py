"""The option types of training (the config layer exposes them as flags): strategy names, schedules, one stage's
optimisation fields, and the precision policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

TrainStrategy = Literal["fsdp-full-shard", "fsdp-shard-grad-op", "fsdp-hybrid-shard", "ddp", "single"]
TRAIN_STRATEGIES: tuple[str, ...] = get_args(TrainStrategy)
LRSchedulerType = Literal["linear-warmup+cosine-decay", "constant"]
LR_SCHEDULER_TYPES: tuple[str, ...] = get_args(LRSchedulerType)

HALF_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class StageOptimization:
    """The optimisation fields of one stage (a model config's `align_*` or `finetune_*` fields as one object)."""

    epochs: int
    max_steps: int | None
    global_batch_size: int
    per_device_batch_size: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    lr_scheduler_type: LRSchedulerType
    warmup_ratio: float
    train_strategy: TrainStrategy


@dataclass(frozen=True)
class Precision:
    """bf16 compute with fp32 master weights (`mixed`), or everything in bf16 (`pure_bf16`, the released run's
    choice), or plain fp32 (neither). `reduce_in_full_precision` keeps gradient reductions in fp32."""

    mixed: bool = True
    pure_bf16: bool = False
    reduce_in_full_precision: bool = True

    @property
    def low_precision(self) -> bool:
        return self.mixed or self.pure_bf16

    def vision_backbone_dtype(self, vision_trains: bool) -> torch.dtype | None:
        """The dtype the vision backbone is stored in (None: left as built, fp32). A frozen encoder needs no fp32
        master copy (half the memory, no cast per step); pure_bf16 casts the whole model."""
        if self.pure_bf16 or (self.mixed and not vision_trains):
            return HALF_DTYPE
        return None
