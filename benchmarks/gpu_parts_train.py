"""GPU benchmark parts on training (issue 16), run by `benchmarks/gpu_shapes.py --only levers|dyva7b`:

- `levers`: the DyVA-shaped step (SigLIP + SVD features from the cache, dual projector, Qwen2.5-1.5B) at sequence 2048
  under FSDP2 + bf16 (fp32 masters), each lever on its own against the same baseline (full activation checkpointing,
  plain loss): selective checkpointing (one layer in 2, in 4), no checkpointing (at a smaller batch), the chunked and
  the liger fused loss, `torch.compile` of the decoder blocks, FSDP2 without reshard-after-forward, explicit FSDP2
  prefetch of the next decoder layers. Each lever builds its own model (wrapping and compiling are irreversible).
- `dyva7b`: the real DyVA-7B shapes (Llama-2-7B + SigLIP + SVD, random weights) on one device with the feature cache at
  2048, with fp32 master weights and with `pure_bf16` (as released): batches in increasing size until one does not
  fit; tokens/s, MFU and peak memory of each, the largest that fits, and on paper the LLaVA-665k epoch time.

MFU counts the LLM's model FLOPs (`LLMFlops.train`, no recomputation) over the dense bf16 peak (`device_peak_flops`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks import harness
from benchmarks.gpu_common import Section, make_batch, run_each, start_process_group
from benchmarks.harness import Comparison, Measurement
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.losses import LossKernel, liger_available
from prismatic.training.options import StageOptimization
from prismatic.training.strategies import TrainingStrategy, get_train_strategy
from prismatic.training.throughput import LLMFlops, device_peak_flops
from prismatic.util.distributed import shutdown_distributed

LLAVA_665K_SAMPLES = 665_298
PAPER_EPOCH_HOURS = "10.3 h on 16 x A800"


@dataclass(frozen=True)
class Lever:
    """One training configuration; every field but the one being measured keeps the baseline's value."""

    name: str
    description: str
    checkpointing: bool = True
    every: int = 1
    loss_kernel: LossKernel = "plain"
    compile_blocks: bool = False
    reshard_after_forward: bool = True
    prefetch: int = 0  # explicit FSDP2 prefetch of the next `prefetch` decoder layers, forward and backward
    smaller_batch: bool = False  # runs at --no-ac-batch (no checkpointing does not fit the main batch)


LEVERS: tuple[Lever, ...] = (
    Lever("baseline", "full activation checkpointing, plain loss (today's default)"),
    Lever("ac_every2", "selective activation checkpointing: one decoder layer in 2", every=2),
    Lever("ac_every4", "selective activation checkpointing: one decoder layer in 4", every=4),
    Lever("loss_chunked", "fused linear + cross-entropy, chunked pure PyTorch", loss_kernel="chunked"),
    Lever("loss_liger", "fused linear + cross-entropy, liger-kernel", loss_kernel="liger"),
    Lever("fsdp_no_reshard", "FSDP2 reshard_after_forward=False (fsdp-shard-grad-op)", reshard_after_forward=False),
    Lever("fsdp_prefetch2", "FSDP2 explicit prefetch of the next 2 decoder layers", prefetch=2),
    Lever("no_ac", "no activation checkpointing (at the smaller batch)", checkpointing=False, smaller_batch=True),
    Lever("baseline_small", "full activation checkpointing at the smaller batch (no_ac's reference)",
          smaller_batch=True),
    # Last: its compile time is the least predictable, and what it does not leave to the others is only its own.
    Lever("compile_blocks", "torch.compile of every decoder block", compile_blocks=True),
)


def build_strategy(ctx: Any, device: torch.device, model_type: str, llm_id: str, seq_len: int, batch: int,
                   pure_bf16: bool, lever: Lever) -> TrainingStrategy:  # fmt: skip
    """A DyVA-shaped VLM built with random weights on the device, wrapped by the project's FSDP2 strategy."""
    model_cfg = get_model_config(model_type)
    model_cfg.model_id, model_cfg.llm_backbone_id, model_cfg.llm_max_length = "gpu-shapes-dyva", llm_id, seq_len
    model_cfg.enable_mixed_precision_training, model_cfg.pure_bf16 = True, pure_bf16
    with torch.device(device):
        vlm = build_vlm(model_cfg, stage="finetune", load_weights=False)
    if lever.compile_blocks:  # before wrapping, as torchtitan orders it
        # Inductor on the GPU; on the CPU rehearsal aot_eager (the same tracing, no C++ code generation: seconds).
        backend = "inductor" if device.type == "cuda" else "aot_eager"
        for layer in vlm.llm_backbone.decoder_layers():
            layer.compile(backend=backend)
    sharding = "fsdp-full-shard" if lever.reshard_after_forward else "fsdp-shard-grad-op"
    optimization = StageOptimization(1, None, batch, batch, learning_rate=2e-5, weight_decay=0.0, max_grad_norm=1.0,
                                     lr_scheduler_type="linear-warmup+cosine-decay", warmup_ratio=0.03,
                                     train_strategy=sharding)  # fmt: skip
    strategy = get_train_strategy(sharding, vlm, ctx, optimization, model_cfg.precision, lever.checkpointing, 10_000,
                                  checkpoint_every=lever.every, loss_kernel=lever.loss_kernel)  # fmt: skip
    strategy.setup()
    if lever.prefetch:
        layers = vlm.llm_backbone.decoder_layers()
        for i, layer in enumerate(layers):
            layer.set_modules_to_forward_prefetch(layers[i + 1 : i + 1 + lever.prefetch])
            layer.set_modules_to_backward_prefetch(layers[max(0, i - lever.prefetch) : i][::-1])
    return strategy


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()


def step_extras(strategy: TrainingStrategy, batch: dict[str, Any], m: Measurement, device: torch.device,
                peak: float | None) -> dict[str, Any]:  # fmt: skip
    """tokens/s, LLM MFU, peak memory of a measured step size."""
    vlm = strategy.vlm
    flops = LLMFlops.from_model(vlm.llm_backbone.llm)
    visual = vlm.num_visual_tokens
    tokens = [n + visual for n in batch["attention_mask"].sum(dim=1).tolist()]
    llm_flops = sum(flops.train(n) for n in tokens)
    extra: dict[str, Any] = {"tokens_per_step": sum(tokens), "tokens_per_s": sum(tokens) / m.median_s,
                             "llm_tflops_per_s": llm_flops / m.median_s / 1e12}  # fmt: skip
    if peak:
        extra["llm_mfu"] = llm_flops / m.median_s / peak
    if device.type == "cuda":
        extra["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return extra


def levers_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    batch = args.lever_batch or (2 if smoke else 16)
    small = args.no_ac_batch or (1 if smoke else 8)
    llm_id = args.llm or ("tiny-qwen25" if smoke else "qwen25-1_5b-pure")
    model_type = "dyva_siglip+tiny" if smoke else "dyva_siglip+7b"
    chosen = [lever for lever in LEVERS if not args.levers or lever.name in args.levers]
    peak = device_peak_flops(device, args.peak_flops)
    section.settings = {"levers.batch": batch, "levers.no_ac_batch": small, "levers.llm": llm_id,
                        "levers.liger_installed": liger_available()}  # fmt: skip
    owns_group = not torch.distributed.is_initialized()
    ctx = start_process_group(device)
    rates: dict[str, dict[str, Any]] = {}
    try:
        for lever in chosen:
            if lever.loss_kernel == "liger" and not (liger_available() and device.type == "cuda"):
                section.note(f"{lever.name}: skipped (liger-kernel not installed or not on CUDA: pip install -e .[gpu])")
                continue
            remaining = deadline - time.monotonic()
            if remaining < (10 if smoke else 25):
                section.note(f"{lever.name}: skipped ({remaining:.0f} s of the budget left)")
                continue
            size = small if lever.smaller_batch else batch
            start = time.perf_counter()
            try:
                strategy = build_strategy(ctx, device, model_type, llm_id, args.seq_len, size, False, lever)
            except Exception as error:
                section.note(f"{lever.name}: build failed ({type(error).__name__}: {str(error)[:300]})")
                release(device)
                continue
            visual = strategy.vlm.num_visual_tokens
            seq_len = args.seq_len if not smoke else visual + 48
            inputs = make_batch(strategy.vlm, size, seq_len - visual, device, live=False)
            name = f"levers_{lever.name}_b{size}"
            candidates = {name: (f"{size} x {seq_len} tokens: {lever.description}",
                                 lambda s=strategy, i=inputs: s.train_step([i]))}  # fmt: skip

            def after(_: str, m: Measurement, s: TrainingStrategy = strategy, i: dict = inputs,
                      name: str = lever.name, began: float = start) -> None:  # fmt: skip
                m.extra.update(step_extras(s, i, m, device, peak))
                m.extra["build_s"] = round(time.perf_counter() - began, 1)
                rates[name] = m.extra

            run_each(candidates, device, deadline, settings.warmup, args.lever_reps, section, after)
            del strategy, inputs, candidates, after  # `after` holds the strategy too: free it before the next build
            release(device)
    finally:
        if owns_group:
            shutdown_distributed()
    for name, extra in rates.items():
        reference = "baseline_small" if LEVER_BY_NAME[name].smaller_batch else "baseline"
        memory = f"peak {extra['peak_allocated_gib']:.1f} GiB" if "peak_allocated_gib" in extra else ""
        if reference in rates and name != reference:
            section.comparisons.append(Comparison(f"levers: {name} / {reference}", "tokens/s ratio at the same batch",
                                                  extra["tokens_per_s"] / rates[reference]["tokens_per_s"], None,
                                                  memory))  # fmt: skip
        if "llm_mfu" in extra:
            # The goal: >= 45% with activation checkpointing (no goal on the CPU rehearsal).
            goal = ">= 0.45" if LEVER_BY_NAME[name].checkpointing and not smoke else None
            section.comparisons.append(Comparison(f"levers: LLM MFU, {name}", "LLM model FLOPs / step / dense peak",
                                                  extra["llm_mfu"], goal))  # fmt: skip


LEVER_BY_NAME = {lever.name: lever for lever in LEVERS}


def dyva7b_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    llm_id = args.llm or ("tiny-llama2" if smoke else "llama2-7b-pure")
    model_type = "dyva_siglip+tiny" if smoke else "dyva_siglip+7b"
    batches = sorted(args.dyva7b_batches or ([1, 2] if smoke else [1, 2, 4, 6, 8, 12, 16]))
    peak = device_peak_flops(device, args.peak_flops)
    section.settings = {"dyva7b.llm": llm_id, "dyva7b.batches": batches, "dyva7b.checkpointing": "full"}
    owns_group = not torch.distributed.is_initialized()
    ctx = start_process_group(device)
    share = (deadline - time.monotonic()) / 2  # the two precisions split the budget
    try:
        for precision, pure_bf16 in (("fp32_masters", False), ("pure_bf16", True)):
            part_deadline = min(deadline, time.monotonic() + share) if precision == "fp32_masters" else deadline
            try:
                strategy = build_strategy(ctx, device, model_type, llm_id, args.seq_len, batches[-1], pure_bf16,
                                          LEVER_BY_NAME["baseline"])  # fmt: skip
            except Exception as error:
                section.note(f"{precision}: build failed ({type(error).__name__}: {str(error)[:300]})")
                release(device)
                continue
            visual = strategy.vlm.num_visual_tokens
            seq_len = args.seq_len if not smoke else visual + 48
            largest: tuple[int, dict[str, Any]] | None = None
            for size in batches:
                inputs = make_batch(strategy.vlm, size, seq_len - visual, device, live=False)
                name = f"dyva7b_{precision}_b{size}"
                candidates = {name: (f"DyVA-7B shapes, {precision}, {size} x {seq_len} tokens, cached features",
                                     lambda s=strategy, i=inputs: s.train_step([i]))}  # fmt: skip
                found: dict[str, Any] = {}

                def after(_: str, m: Measurement, s: TrainingStrategy = strategy, i: dict = inputs,
                          f: dict = found) -> None:  # fmt: skip
                    f.update(step_extras(s, i, m, device, peak))
                    m.extra.update(f)

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run_each(candidates, device, part_deadline, settings.warmup, args.lever_reps, section, after)
                del inputs, candidates, after
                if not found:  # out of memory or out of time (run_each noted which): larger batches will not do better
                    break
                largest = (size, found)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if largest is not None:
                size, extra = largest
                hours = [LLAVA_665K_SAMPLES * seq_len / (extra["tokens_per_s"] * gpus) / 3600 for gpus in (8, 16)]
                memory = f", peak {extra['peak_allocated_gib']:.1f} GiB" if "peak_allocated_gib" in extra else ""
                mfu = "llm_mfu" in extra  # the device's dense peak is known (not on the CPU rehearsal)
                section.comparisons.append(Comparison(
                    f"dyva7b: {precision}, largest batch measured {size}",
                    "LLM model FLOPs / step / dense peak" if mfu else "tokens/s (no known peak: no MFU)",
                    extra["llm_mfu"] if mfu else extra["tokens_per_s"], None,
                    f"{extra['tokens_per_s']:.0f} tokens/s{memory}; on paper (every sample at {seq_len} tokens, "
                    f"linear scaling: an upper bound) one LLaVA-665k epoch {hours[0]:.1f} h on 8 and {hours[1]:.1f} h "
                    f"on 16 of these GPUs (paper: {PAPER_EPOCH_HOURS})"))
            del strategy
            release(device)
    finally:
        if owns_group:
            shutdown_distributed()
    harness.synchronize(device)
