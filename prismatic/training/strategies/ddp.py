"""DDP: a full replica of the VLM per rank, gradients all-reduced once per optimizer step.

Only trainable parameters are registered for reduction (DDP skips `requires_grad=False`), so frozen encoders cost no
communication. Between micro-batches the all-reduce is deferred (`no_sync`). Every rank runs the same parameters in
every micro-batch (text-only micro-batches get a masked dummy image row, see `ImageRowFiller`), so DDP needs no
unused-parameter search. Mixed precision is autocast (bf16 compute over fp32 weights); with
`reduce_in_full_precision=False` gradients travel as bf16.
"""

from __future__ import annotations

import contextlib

import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel

from prismatic.training.strategies.base import TrainingStrategy


class DDPStrategy(TrainingStrategy):
    def wrap_model(self) -> nn.Module:
        device = self.ctx.device
        self.vlm.to(device)
        ddp = DistributedDataParallel(
            self.vlm,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # buffers are deterministic (rotary tables, schedules): nothing to sync
            gradient_as_bucket_view=True,
        )
        if not self.precision.reduce_in_full_precision and self.precision.low_precision:
            ddp.register_comm_hook(state=None, hook=bf16_compress_hook)
        return ddp

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        if is_last_micro_batch or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()
