"""Training throughput: FLOPs per step, model FLOPs utilisation (MFU), and where the step time goes.

FLOPs are model FLOPs (useful work; padding, recomputation under activation checkpointing and optimizer arithmetic
are not counted), per device, per optimizer step:
- LLM, analytically from its config, per sequence of T real tokens (text + visual): forward 2*N*T + 4*L*a*T^2 (N = the
  weights of every Linear layer incl. the LM head, L layers, a = attention width, the T^2 term being the QK^T and AV
  products without a causal discount, as torch's FlopCounterMode counts them); backward adds the input gradients
  (2*N*T + 8*L*a*T^2) and, when the LLM trains, the weight gradients (2*N*T). Training: 6*N*T + 12*L*a*T^2.
- Encoders and projector: their forward FLOPs per image row are counted ONCE, with torch's FlopCounterMode, on their
  first call in training (no extra pass), then multiplied by the rows they actually encode in each step (cached
  features encode nothing); x3 when they train (forward + input and weight gradients), x1 when frozen.

MFU = FLOPs / step time / the device's dense bf16 peak, from a table of known accelerators or `--peak_flops`; without
either (e.g. on CPU) it is omitted. Time shares: forward hooks time the encoders and the projector, and gradient hooks
on the LLM's input and output time its backward, so `time_share_llm` is forward + backward; the rest (loss, optimizer,
data wait) is `time_share_other`. On CUDA the hooks synchronise, so they measure only every `timing_every` steps
(default 10) and the last measured shares are repeated in between; on CPU every step is measured (no cost).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched against torch.cuda.get_device_name(): first match wins,
# so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),  # SXM / HBM3
    ("H800", 989.4e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("L40S", 362.0e12),
    ("4090", 165.2e12),
)
DEFAULT_CUDA_TIMING_EVERY = 10


def device_peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `override` if given, else the table entry for a known GPU, else None."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"peak_flops must be positive (FLOP/s per device, e.g. 989e12), got {override}.")
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


# === FLOP counting ===
def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the CPU flash-attention kernels (which it leaves out)."""
    aten = torch.ops.aten
    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    return FlopCounterMode(display=False, custom_mapping=custom)


@dataclass(frozen=True)
class LLMFlops:
    """What the LLM's FLOPs depend on: N (Linear weights incl. LM head), L layers, attention width a."""

    matmul_params: int
    num_layers: int
    attention_dim: int

    @classmethod
    def from_model(cls, llm: nn.Module) -> LLMFlops:
        """From a transformers causal LM (works on the `meta` device and on sharded models: numel is global)."""
        config = llm.config
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        params = sum(m.weight.numel() for m in llm.modules() if isinstance(m, nn.Linear))
        return cls(int(params), int(config.num_hidden_layers), heads * int(head_dim))

    def forward(self, tokens: int) -> float:
        return 2.0 * self.matmul_params * tokens + 4.0 * self.num_layers * self.attention_dim * tokens**2

    def train(self, tokens: int, trains: bool = True) -> float:
        """Forward + backward of one sequence; the weight gradients only when the LLM trains."""
        input_grads = 2.0 * self.matmul_params * tokens + 8.0 * self.num_layers * self.attention_dim * tokens**2
        weight_grads = 2.0 * self.matmul_params * tokens if trains else 0.0
        return self.forward(tokens) + input_grads + weight_grads


def sequence_lengths(micro_batches: Iterable[Mapping[str, Any]], num_visual_tokens: int) -> list[int]:
    """Real tokens (text + visual) of every sample row, from collated batches (as `count_batch` counts them: the
    collator's filler row, the last one when present, is left out)."""
    lengths: list[int] = []
    for batch in micro_batches:
        text = batch["attention_mask"].sum(dim=1)
        visual = batch["has_image"].to(text.dtype) * num_visual_tokens
        rows = (text + visual).tolist()
        lengths.extend(int(n) for n in rows[: len(rows) - batch.get("filler_rows", 0)])
    return lengths


# === Hooks ===
def _rows(value: Any) -> int:
    """Rows of a module's first input: a tensor's batch size, or that of the first tensor in a dict."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, Mapping):
        return next((int(v.shape[0]) for v in value.values() if isinstance(v, torch.Tensor)), 0)
    return 0


@dataclass
class _Component:
    """Counters of one hooked module (an encoder, the projector or the LLM) for the current step."""

    name: str
    trains: bool
    forward_flops_per_row: float | None = None
    rows: int = 0
    seconds: float = 0.0
    _started: float = 0.0
    _counter: FlopCounterMode | None = field(default=None, repr=False)


class ThroughputMeter:
    """Attach to a PrismaticVLM for a training run; call `start_step()` before each step and `finish_step()` after it
    for the metrics of that step. Hooks are light (a clock read, two on CUDA measuring steps, a sync each)."""

    def __init__(self, vlm: nn.Module, device: torch.device, peak_flops: float | None = None,
                 timing_every: int | None = None) -> None:  # fmt: skip
        self.device = device
        self.peak_flops = device_peak_flops(device, peak_flops)
        self.timing_every = timing_every or (DEFAULT_CUDA_TIMING_EVERY if device.type == "cuda" else 1)
        self.llm = LLMFlops.from_model(vlm.llm_backbone.llm)
        self.llm_trains = any(p.requires_grad for p in vlm.llm_backbone.parameters())
        self.num_visual_tokens = int(vlm.num_visual_tokens)
        self.encoders = [_Component(f"encoder:{i}", any(p.requires_grad for p in m.parameters()))
                         for i, m in enumerate(_leaf_encoders(vlm.vision_backbone))]  # fmt: skip
        self.projector = _Component("projector", True)
        self.llm_component = _Component("llm", self.llm_trains)
        self.measuring = True
        self._shares: dict[str, float] = {}
        self._handles: list[Any] = []
        for component, module in zip(self.encoders, _leaf_encoders(vlm.vision_backbone)):
            self._hook(component, module)
        self._hook(self.projector, vlm.projector)
        self._hook_llm(vlm.llm_backbone)

    # --- hooks ---
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _hook(self, component: _Component, module: nn.Module) -> None:
        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            component.rows += _rows(first)
            if component.forward_flops_per_row is None and component._counter is None:
                component._counter = flop_counter()
                component._counter.__enter__()
            if self.measuring:
                self._sync()
                component._started = time.perf_counter()

        def post(_module: nn.Module, args: tuple, kwargs: dict, _output: Any) -> None:
            if self.measuring:
                self._sync()
                component.seconds += time.perf_counter() - component._started
            if component._counter is not None:
                counter, component._counter = component._counter, None
                counter.__exit__(None, None, None)
                first = args[0] if args else next(iter(kwargs.values()), None)
                component.forward_flops_per_row = counter.get_total_flops() / max(_rows(first), 1)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _hook_llm(self, module: nn.Module) -> None:
        component = self.llm_component
        backward_started: list[float] = []

        def grad_of_output(grad: torch.Tensor) -> None:  # the LLM's backward begins
            if self.measuring:
                self._sync()
                backward_started.append(time.perf_counter())

        def grad_of_input(grad: torch.Tensor) -> None:  # the LLM's backward is done
            if self.measuring and backward_started:
                self._sync()
                component.seconds += time.perf_counter() - backward_started.pop()

        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            embeds = kwargs.get("inputs_embeds", args[0] if args else None)
            if isinstance(embeds, torch.Tensor) and embeds.requires_grad:
                embeds.register_hook(grad_of_input)
            if self.measuring:
                self._sync()
                component._started = time.perf_counter()

        def post(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.measuring:
                self._sync()
                component.seconds += time.perf_counter() - component._started
            logits = getattr(output, "logits", None)
            if isinstance(logits, torch.Tensor) and logits.requires_grad:
                logits.register_hook(grad_of_output)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    # --- per step ---
    def start_step(self, step: int) -> None:
        """Reset the counters; `step` (1-based) decides whether this step's times are measured."""
        self.measuring = self.device.type != "cuda" or step % self.timing_every == 1 or self.timing_every == 1
        for component in (*self.encoders, self.projector, self.llm_component):
            component.rows, component.seconds = 0, 0.0

    def step_flops(self, micro_batches: Sequence[Mapping[str, Any]]) -> float:
        """Model FLOPs of this device's step: LLM from the batches, encoders and projector from the rows they ran."""
        lengths = sequence_lengths(micro_batches, self.num_visual_tokens)
        total = sum(self.llm.train(n, self.llm_trains) for n in lengths)
        for component in (*self.encoders, self.projector):
            if component.forward_flops_per_row is not None:
                total += component.forward_flops_per_row * component.rows * (3.0 if component.trains else 1.0)
        return total

    def finish_step(self, micro_batches: Sequence[Mapping[str, Any]], step_seconds: float) -> dict[str, float]:
        """Metrics of the step just run: flops_per_sample, tflops_per_s, mfu (when a peak is known), time shares."""
        seconds = max(step_seconds, 1e-9)
        flops = self.step_flops(micro_batches)
        samples = sum(int(batch["input_ids"].shape[0]) - batch.get("filler_rows", 0) for batch in micro_batches)
        out = {"flops_per_sample": flops / max(samples, 1), "tflops_per_s": flops / seconds / 1e12}
        if self.peak_flops is not None:
            out["mfu"] = flops / seconds / self.peak_flops
        if self.measuring:
            encoders = sum(c.seconds for c in self.encoders)
            parts = {"encoders": encoders, "projector": self.projector.seconds, "llm": self.llm_component.seconds}
            self._shares = {f"time_share_{k}": v / seconds for k, v in parts.items()}
            self._shares["time_share_other"] = max(0.0, 1.0 - sum(self._shares.values()))
        return {**out, **self._shares}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _leaf_encoders(vision_backbone: nn.Module) -> list[nn.Module]:
    """The modules that encode each stream (both members of a dual backbone), each once: hooking these, and not a
    wrapper that may dispatch around its own forward, sees every encoder call exactly once."""
    stream_encoders = getattr(vision_backbone, "stream_encoders", None)
    if stream_encoders is None:
        return [vision_backbone]
    unique: dict[int, nn.Module] = {}
    for module in stream_encoders().values():
        unique.setdefault(id(module), module)
    return list(unique.values())
