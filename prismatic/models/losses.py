"""The training loss over label positions, computed from the LM's final hidden states and its output head.

Training needs the summed cross-entropy of the positions that predict a label only (`PrismaticVLM.forward` with
`label_logits_only`). Three ways to get it, chosen by `ModelConfig.loss_kernel`:

- `plain` (default): the LM head makes [n_labels, vocab] logits, upcast to fp32, then `F.cross_entropy`; the
  strategy does it, exactly as every run so far did.
- `chunked`: `ChunkedLinearCrossEntropy` below, pure PyTorch, any device. Label rows go through the head `chunk_rows`
  at a time; each chunk's logits live only while its loss and its gradients (w.r.t. the hidden states, the head weight
  and bias) are computed, in the forward pass, so at most one chunk of logits exists at any time and backward only
  scales the stored gradients. Exact to float rounding: the same fp32 softmax, only the sums are ordered by chunk.
- `liger`: liger-kernel's fused linear + cross-entropy (Triton, CUDA only), when it is installed (`pip install
  -e .[gpu]`); `resolve_loss_kernel` falls back to `plain` with a log line when it is not, or off CUDA.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from prismatic.overwatch import initialize_overwatch
from prismatic.util.constants import IGNORE_INDEX

overwatch = initialize_overwatch(__name__)

LossKernel = Literal["plain", "chunked", "liger"]
LOSS_KERNELS: tuple[str, ...] = get_args(LossKernel)
DEFAULT_CHUNK_ROWS = 1024  # 1024 x 152k fp32 logits = 0.6 GB per chunk for Qwen2.5; 1024 x 32k = 0.13 GB for Llama-2


def liger_available() -> bool:
    """Whether liger-kernel can be imported (it needs Triton and a CUDA device to run)."""
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_loss_kernel(kernel: LossKernel, device: torch.device) -> LossKernel:
    """The kernel that will run: `liger` without liger-kernel installed, or off CUDA, falls back to `plain` (logged)."""
    if kernel not in LOSS_KERNELS:
        raise ValueError(f"loss_kernel={kernel!r} is invalid; choose one of {list(LOSS_KERNELS)}.")
    if kernel != "liger":
        return kernel
    if not liger_available():
        overwatch.warning("loss_kernel='liger' but liger-kernel is not installed (pip install -e '.[gpu]'): using "
                          "the plain loss (full logits at label positions)")  # fmt: skip
        return "plain"
    if device.type != "cuda":
        overwatch.warning(f"loss_kernel='liger' runs on CUDA only, not {device.type}: using the plain loss")
        return "plain"
    return kernel


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden[i] @ weight.T + bias, targets[i]) over rows whose target is not IGNORE_INDEX, chunk by chunk.

    Gradients are computed in forward (d loss / d logits = softmax - one_hot is known there) and stored, so backward
    needs no logits; they are scaled by the incoming gradient in backward. Logits are upcast to fp32 like the plain
    path; the gradient matmuls run in the inputs' dtype (under autocast: bf16, as the plain path's backward does).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:  # fmt: skip
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        # fp32 accumulators over chunks: the plain path's one big matmul accumulates in fp32 too.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h, t = hidden[rows], targets[rows]
            raw = F.linear(h, weight, bias)  # the compute dtype (bf16 under autocast) is the gradient matmuls' too
            logits = raw.float()
            valid = t != IGNORE_INDEX
            safe = torch.where(valid, t, torch.zeros_like(t))
            log_norm = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
            total = total + torch.where(valid, log_norm - picked, torch.zeros_like(log_norm)).sum()
            if not (want_hidden or want_weight or want_bias):
                continue
            grad_logits = torch.softmax(logits, dim=-1)
            grad_logits.scatter_add_(1, safe.unsqueeze(1), -torch.ones_like(picked).unsqueeze(1))
            grad_logits = grad_logits * valid.unsqueeze(1)  # ignored rows contribute nothing
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(raw.dtype)
            del logits, raw
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight.to(grad_logits.dtype)).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.transpose(0, 1) @ h.to(grad_logits.dtype)).float()
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads: list[torch.Tensor | None] = []
        for stored, present, dtype in zip(ctx.saved_tensors, ctx.has, ctx.dtypes):
            grads.append((stored * grad_output).to(dtype) if present else None)
        return grads[0], grads[1], grads[2], None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """The summed cross-entropy of `hidden` [N, d] through the head (`weight` [V, d], `bias` [V] or None) against
    `targets` [N] (IGNORE_INDEX rows skipped), never holding more than `chunk_rows` rows of logits."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}.")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        shapes = f"{tuple(hidden.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"Expected hidden [N, d] and targets [N] (one target per row), got {shapes}.")
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)


def liger_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               targets: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The same sum through liger-kernel's fused Triton kernel (CUDA; `resolve_loss_kernel` checks first)."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss(weight, hidden, targets, bias).float()


def label_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, kernel: LossKernel,
                        chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:  # fmt: skip
    """Summed cross-entropy of the label rows `hidden` [N, d] through the LM head, by `kernel` (resolved already)."""
    if kernel == "chunked":
        return chunked_linear_cross_entropy(hidden, head.weight, head.bias, targets, chunk_rows)
    if kernel == "liger":
        return liger_linear_cross_entropy(hidden, head.weight, head.bias, targets)
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
