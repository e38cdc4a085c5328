"""The training strategy contract: how a PrismaticVLM is placed, wrapped, and stepped on this job's devices.

A strategy is applied AROUND the model (torchtitan style): the model code knows nothing about sharding or precision.
The base class holds everything that does not depend on the parallelism: activation checkpointing, the optimizer and
schedule, the micro-batch loop with the loss normalised by the GLOBAL number of label tokens, gradient clipping on the
global norm, and skipping a step whose gradients are not finite. The model arrives built, frozen and cast
(`prismatic.assembly.build_vlm`: a frozen encoder in bf16 under mixed precision, everything in bf16 under `pure_bf16`);
the strategy only computes in the precision it is given. Subclasses say how to wrap the model (`wrap_model`), how to
compute in mixed precision (`autocast`) and how to defer gradient synchronisation between micro-batches
(`sync_context`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prismatic.models.losses import DEFAULT_CHUNK_ROWS, LossKernel, resolve_loss_kernel
from prismatic.overwatch import initialize_overwatch
from prismatic.training.batching import count_batch, label_targets, spliced_labels
from prismatic.training.optimizer import (
    build_optimizer,
    build_scheduler,
    clip_grad_norm_global,
    step_unless_non_finite,
)
from prismatic.training.options import HALF_DTYPE, Precision, StageOptimization
from prismatic.util.distributed import DistributedContext

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

overwatch = initialize_overwatch(__name__)

@dataclass(frozen=True)
class StepResult:
    loss: float  # sum of token losses / label tokens, over the global batch
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used (first group; the U-Net group uses a fixed multiple)
    label_tokens: int
    tokens: int
    samples: int
    skipped: bool  # gradients were not finite, so the optimizer step was skipped


class TrainingStrategy(ABC):
    def __init__(
        self,
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
    ) -> None:
        """`checkpoint_every` (with `enable_gradient_checkpointing`): checkpoint one LLM decoder layer in that many (1 =
        all of them). `loss_kernel`: how the loss at label positions is computed (`prismatic.models.losses`; "plain"
        is the original path, bit for bit), with chunks of `loss_chunk_rows` rows for "chunked". `compile_blocks`:
        `torch.compile` every LLM decoder layer before wrapping."""
        self.vlm = vlm
        self.ctx = ctx
        self.optimization = optimization
        self.precision = precision
        self.enable_gradient_checkpointing = enable_gradient_checkpointing
        self.total_steps = total_steps
        if checkpoint_every < 1 or loss_chunk_rows < 1:
            raise ValueError(
                f"--model.gradient_checkpointing_every ({checkpoint_every}) and --model.loss_chunk_rows "
                f"({loss_chunk_rows}) must be positive integers (1 = checkpoint every decoder layer)."
            )
        self.checkpoint_every = checkpoint_every
        self.loss_kernel: LossKernel = resolve_loss_kernel(loss_kernel, ctx.device)
        self.loss_chunk_rows = loss_chunk_rows
        self.compile_blocks = compile_blocks
        self.checkpointed_layers: list[int] = []
        self.num_visual_tokens = vlm.num_visual_tokens
        self.model: nn.Module = vlm
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    # === Setup ===
    def setup(self) -> None:
        """Wrap, and build the optimizer over the (wrapped) trainable parameters."""
        if self.enable_gradient_checkpointing:
            # Before wrapping: FSDP's hooks then sit outside each checkpointed region (torchtitan's order).
            self.checkpointed_layers = self.vlm.llm_backbone.enable_gradient_checkpointing(self.checkpoint_every)
        if self.compile_blocks:
            # Inductor where it pays (+23% tokens/s on an H200, docs/performance.md); on a CPU, aot_eager traces the
            # same graphs (graph breaks and errors show up) without Inductor's C++ code generation, which on a few
            # cores costs more than it saves.
            backend = "inductor" if self.ctx.device.type == "cuda" else "aot_eager"
            self.vlm.llm_backbone.compile_decoder_layers(backend)
        self.model = self.wrap_model()
        self.model.train()
        opt = self.optimization
        self.optimizer = build_optimizer(self.vlm, opt.learning_rate, opt.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, opt.lr_scheduler_type, self.total_steps, opt.warmup_ratio)
        trainable = sum(p.numel() for p in self.vlm.parameters() if p.requires_grad)
        overwatch.info(
            f"{type(self).__name__}: {trainable:,} trainable parameters in {len(self.optimizer.param_groups)} "
            f"group(s); precision {self.precision}; gradient checkpointing {self.enable_gradient_checkpointing} "
            f"({len(self.checkpointed_layers)} decoder layers); loss kernel {self.loss_kernel}; compiled decoder "
            f"layers {self.compile_blocks}"
        )

    @abstractmethod
    def wrap_model(self) -> nn.Module:
        """Place the VLM on the device(s) and wrap it for this parallelism; returns the module to call."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context around the forward pass (FSDP casts through its policy instead)."""
        if self.precision.mixed and not self.precision.pure_bf16:
            return torch.autocast(self.ctx.device.type, dtype=HALF_DTYPE)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def inference_context(self) -> Iterator[None]:
        """Around evaluation in the middle of training, which calls the model's own methods (encode, generate) rather
        than the wrapper's forward: the same precision context as the training forward."""
        with self.autocast():
            yield

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Context around a micro-batch's backward; DDP defers its all-reduce to the last micro-batch."""
        return contextlib.nullcontext()

    @property
    def data_parallel_degree(self) -> int:
        """The factor by which the wrapper averages gradients over ranks (the loss is scaled back up by it)."""
        return self.ctx.world_size if self.ctx.is_distributed else 1

    # === One optimizer step ===
    def _prepare_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = self.ctx.device
        input_dtype = HALF_DTYPE if self.precision.pure_bf16 else None

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                cast = input_dtype if (input_dtype is not None and value.is_floating_point()) else value.dtype
                return value.to(device=device, dtype=cast, non_blocking=True)
            if isinstance(value, Mapping):
                return {k: move(v) for k, v in value.items()}
            return value

        return {key: move(value) for key, value in batch.items()}

    def _forward_loss_sum(self, batch: Mapping[str, Any]) -> torch.Tensor:
        padding_side = batch.get("padding_side", "right")
        # chunked / liger: the summed label loss is computed inside the model's forward from the final hidden states,
        # so a wrapper's gathered LM head is what it uses and full-vocabulary logits never exist.
        fused = {} if self.loss_kernel == "plain" else {"label_loss": self.loss_kernel,
                                                        "loss_chunk_rows": self.loss_chunk_rows}  # fmt: skip
        with self.autocast():
            output = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
                labels=batch["labels"],
                has_image=batch["has_image"],
                padding_side=padding_side,
                label_logits_only=True,  # logits at label positions only; the loss is a sum, normalised globally
                **fused,
            )
        if fused:
            return output.loss.float()
        has_visual = batch["pixel_values"] is not None and bool(batch["has_image"].any())
        num_visual = self.num_visual_tokens if has_visual else 0
        labels = spliced_labels(batch["labels"], batch["attention_mask"], batch["has_image"], num_visual, padding_side)
        targets = label_targets(labels).to(output.logits.device)
        return F.cross_entropy(output.logits.float(), targets, reduction="sum")

    def train_step(self, micro_batches: Sequence[Mapping[str, Any]]) -> StepResult:
        """Forward/backward every micro-batch of this rank, then one optimizer step for the global batch."""
        if self.optimizer is None or self.scheduler is None:
            raise RuntimeError("Call setup() before train_step().")
        counts = count_batch(micro_batches, self.num_visual_tokens)
        totals = self.ctx.all_reduce_sum(counts.as_tensor(self.ctx.device)).tolist()
        global_label_tokens = int(totals[0])
        if global_label_tokens == 0:
            raise ValueError("This global batch has no label tokens at all; check the dataset's answers and labels.")

        # Each rank's gradient is sum(token losses) / global tokens; the wrapper averages over ranks, so scale back.
        scale = self.data_parallel_degree / global_label_tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for index, batch in enumerate(micro_batches):
            prepared = self._prepare_batch(batch)
            with self.sync_context(is_last_micro_batch=index == len(micro_batches) - 1):
                micro_loss = self._forward_loss_sum(prepared)
                (micro_loss * scale).backward()
            loss_sum += micro_loss.detach().double()
        global_loss = float(self.ctx.all_reduce_sum(loss_sum)) / global_label_tokens

        lr = float(self.optimizer.param_groups[0]["lr"])
        grad_norm = self.clip_grad_norm(self.optimization.max_grad_norm)
        skipped = step_unless_non_finite(self.optimizer, self.scheduler, grad_norm)
        return StepResult(global_loss, grad_norm, lr, global_label_tokens, int(totals[1]), int(totals[2]), skipped)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm over all trainable gradients (across shards for FSDP), then clip to `max_norm` (0 = off)."""
        return clip_grad_norm_global(self.model.parameters(), max_norm)
