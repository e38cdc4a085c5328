"""GPU benchmark at the REAL shapes with random weights (no checkpoint is read): the numbers the issue asks of a GPU.

1. `svd`: `SVDGenerativeEncoder`, release mode, the real `stabilityai/stable-video-diffusion-img2vid` architecture
   (in-code configs, `load_weights=False`) at 448 px, T = 8, bf16: images/s at batch 1, 8, 16, 32 through the
   production path (`vision_features`, content-seeded noise drawn on the CPU), the same with the noise precomputed on
   the device (what the CPU draws cost), one image at a time (training's default), FLOP/s, peak memory.
2. `train`: SigLIP so400m + SVD through the `dual` projector into Qwen2.5-1.5B (`qwen25-1_5b-pure`), trained by the
   project's FSDP2 strategy (`get_train_strategy("fsdp-full-shard")`: `fully_shard` per decoder layer, projector,
   root; one process, NCCL), bf16 mixed precision (fp32 master weights), activation checkpointing, sdpa, frozen
   encoders; 2048-token samples (648 visual + 1,400 text), visual features precomputed (as the feature cache gives
   them), 8 and 16 samples per step (16k / 32k tokens), and one step size with the encoders live on pixels. Reported:
   step time, tokens/s, LLM MFU (the project's `LLMFlops.train` = 6NT + 12LaT^2 over the dense bf16 peak of
   `PEAK_BF16_FLOPS`, over the matmul ceiling measured here, over ~790 TFLOP/s; the issue's goal: >= 40% at sequence
   length 2048), time shares (ThroughputMeter), peak memory.
3. Issue 16's parts, each lever measured on its own: `levers` (the step of 2. with selective activation checkpointing,
   the fused loss, compiled decoder blocks, FSDP2 reshard / prefetch settings; then those that helped, together) and
   `dyva7b` (the real DyVA-7B shapes on one device, fp32 masters and pure bf16, largest batch) in
   `benchmarks/gpu_parts_train.py`; `encoder` (device-side noise, channels-last), `generate` (batch 16 vs 1, first-token
   latency) and `eval7b` (the harness's closed-form scoring at 7B) in `benchmarks/gpu_parts_infer.py`.

Every candidate runs once first (an error or out-of-memory is noted and costs only that candidate); those whose timed
calls do not fit the time budget are skipped. Results merge into `<out>/gpu_shapes.{json,md}`, so the parts can run as
separate processes (`--only`), as `benchmarks/gpu_run.sh` does on the GPU machine.

    python -m benchmarks.gpu_shapes [--smoke] [--only svd|train|encoder|levers|dyva7b|generate|eval7b] [--out DIR]
                                    [--budget-s S]
    bash benchmarks/gpu_run.sh     # on the GPU machine (no network): installs .whl/*, runs the parts into $OUT
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the GPU machine: a missing tokenizer must fail fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.gpu_common import (
    H200_MEASURED_MATMUL,
    Candidates,
    Section,
    make_batch,
    matmul_ceiling,
    run_each,
    start_process_group,
)
from benchmarks.gpu_parts_infer import encoder_part, eval7b_part, generate_part
from benchmarks.gpu_parts_train import dyva7b_part, levers_part
from benchmarks.harness import Comparison, Measurement, time_call
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.backbones.vision.svd_config import TINY_SVD_CONFIG, SVDEncoderConfig
from prismatic.models.backbones.vision.svd_unet import SVDNoise
from prismatic.models.materialize import get_vision_backbone_and_transform
from prismatic.models.vlms.visual_features import frozen_encoder_context, vision_features
from prismatic.training.options import StageOptimization
from prismatic.training.strategies import get_train_strategy
from prismatic.training.throughput import ThroughputMeter, device_peak_flops, flop_counter
from prismatic.util.distributed import shutdown_distributed

NAME = "gpu_shapes"
PARTS: dict[str, Callable[[Section, Any, Any, float, float], None]] = {}  # filled below, after the parts are defined


# === Part 1: the SVD encoder ===
def svd_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_SVD_CONFIG if smoke else SVDEncoderConfig()  # release mode, pre-mid tap, 448 px, T = 8
    batches = sorted(args.svd_batches or ([1, 2] if smoke else [1, 8, 16, 32]))
    per_sample_batch = min(batches[-1], 2 if smoke else 8)
    start = time.perf_counter()
    with torch.device(device):
        encoder, _ = get_vision_backbone_and_transform("tiny-svd" if smoke else "svd", svd_config=config,
                                                       load_weights=False)  # fmt: skip
    # .to(device) too: diffusers' AlphaBlender makes its mix_factor with the legacy torch.Tensor([...]) constructor,
    # which ignores the default-device context and leaves it on the CPU.
    encoder.requires_grad_(False).eval().to(device=device, dtype=dtype)
    harness.synchronize(device)
    build_s = time.perf_counter() - start
    size = config.image_size
    frames_cpu = torch.randint(0, 256, (max(batches), 1, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    frames = frames_cpu.to(device)

    def pixels(b: int) -> dict[str, torch.Tensor]:
        return {"svd": frames[:b], "svd_count": torch.ones(b, dtype=torch.long, device=device)}

    def given_noise(b: int) -> Callable[[], Any]:
        drawn = [encoder.draw_noise(frames_cpu[i, :1]) for i in range(b)]
        noise = [SVDNoise(*(None if t is None else t.to(device) for t in (n.aug, n.unet, n.feat))) for n in drawn]
        px = pixels(b)

        def call() -> Any:
            with frozen_encoder_context(encoder):
                return encoder.encode(px, noise=noise).features

        return call

    candidates: Candidates = {}
    px_per_sample = pixels(per_sample_batch)
    for b in batches:  # the largest batch last: it is the one most likely to fail (see the note below)
        if b == batches[-1]:
            candidates[f"svd_b{per_sample_batch}_per_sample"] = (
                f"{per_sample_batch} images one at a time (training's default for frozen encoders)",
                lambda: vision_features(encoder, px_per_sample, frozen=True, per_sample=True),
            )
            candidates[f"svd_noise_draws_b{b}"] = (
                f"the CPU noise draws alone for {b} images (content hash + seeded randn)",
                lambda: [encoder.draw_noise(frames_cpu[i, :1]) for i in range(batches[-1])])  # fmt: skip
        px = pixels(b)
        candidates[f"svd_b{b}"] = (
            f"batch of {b}: vision_features (content-seeded noise drawn on the CPU)",
            lambda px=px: vision_features(encoder, px, frozen=True, per_sample=False),
        )
        candidates[f"svd_b{b}_noise_given"] = (f"batch of {b}: encode() with the noise precomputed on the device",
                                               given_noise(b))  # fmt: skip

    with flop_counter() as counter:
        vision_features(encoder, pixels(1), frozen=True, per_sample=False)
    flops_per_image = float(counter.get_total_flops())
    peak = device_peak_flops(device, args.peak_flops)
    section.settings = {"svd.dtype": str(dtype).removeprefix("torch."), "svd.batches": batches}
    section.dimensions = {
        "svd.image_size": size,
        "svd.num_frames": config.num_frames,
        "svd.mode": config.mode,
        "svd.tap": config.tap,
        "svd.tokens_per_image": encoder.num_visual_tokens,
        "svd.embed_dim": encoder.embed_dim,
        "svd.parameters": sum(p.numel() for p in encoder.parameters()),
        "svd.build_s": round(build_s, 1),
        "svd.gflop_per_image": round(flops_per_image / 1e9, 1),
        "matmul_ceiling_tflops": round(ceiling / 1e12, 1),
        "svd.weights_gib": round(torch.cuda.memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    section.note(f"built in {build_s:.1f} s (random init on {device.type}); {flops_per_image / 1e12:.3f} TFLOP per "
                 "image (FlopCounterMode: VAE + CLIP + U-Net down path); noise_given rows get noise already on the "
                 "device, so they time the device work alone. The U-Net's temporal attention at the first level runs "
                 f"batch x {encoder.latent_size**2} sequences in one SDPA call: above 65,535 (CUDA's grid limit) the "
                 "flash / mem-efficient kernels fail with 'invalid configuration argument' on torch versions without "
                 "a fix (pytorch#146704), i.e. from 21 images per call at 448 px")  # fmt: skip

    def after(name: str, m: Measurement) -> None:
        images = int(name.split("_b")[1].split("_")[0])
        m.extra["images_per_s"] = images / m.median_s
        if "noise_draws" not in name:
            m.extra["tflops_per_s"] = flops_per_image * images / m.median_s / 1e12
            if peak:
                m.extra["mfu"] = flops_per_image * images / m.median_s / peak

    measured = run_each(candidates, device, deadline, settings.warmup, settings.reps, section, after)
    for b in batches:
        seeded, given = measured.get(f"svd_b{b}"), measured.get(f"svd_b{b}_noise_given")
        if seeded and given:
            section.comparisons.append(
                Comparison(
                    f"svd: b={b}, content-seeded noise / noise given",
                    f"svd_b{b} / svd_b{b}_noise_given median time",
                    seeded.median_s / given.median_s,
                    None,
                    f"CPU noise draws take {1 - given.median_s / seeded.median_s:.0%} of the production call",
                )
            )
    batched, one_by_one = measured.get(f"svd_b{per_sample_batch}"), measured.get(f"svd_b{per_sample_batch}_per_sample")
    if batched and one_by_one:
        section.comparisons.append(Comparison(f"svd: b={per_sample_batch}, per-sample / batched",
                                              "one-at-a-time / batched median time",
                                              one_by_one.median_s / batched.median_s, None))  # fmt: skip


# === Part 2: DyVA-shaped training step under FSDP2 ===

def train_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    batches = args.train_batches or ([1, 2] if smoke else [8, 16, 32])
    live_batch = (1 if smoke else 8) if args.live_batch is None else args.live_batch
    llm_id = args.llm or ("tiny-qwen25" if smoke else "qwen25-1_5b-pure")
    # DyVA-shaped: SigLIP + SVD (release), dual projector, a 1B-class Qwen2.5; bf16 params, fp32 masters.
    model_cfg = get_model_config("dyva_siglip+tiny" if smoke else "dyva_siglip+7b")
    model_cfg.model_id, model_cfg.llm_backbone_id, model_cfg.llm_max_length = "gpu-shapes-dyva", llm_id, args.seq_len
    model_cfg.enable_mixed_precision_training, model_cfg.pure_bf16 = True, False
    owns_group = not torch.distributed.is_initialized()
    ctx = start_process_group(device)
    try:
        start = time.perf_counter()
        with torch.device(device):  # random init directly on the device (seconds on a GPU)
            vlm = build_vlm(model_cfg, stage="finetune", load_weights=False)
        visual = vlm.num_visual_tokens
        seq_len = args.seq_len if not smoke else visual + 48
        text_len = seq_len - visual
        if text_len < 2:
            raise ValueError(f"--seq-len {seq_len} leaves no text after the {visual} visual tokens.")
        optimization = StageOptimization(1, None, max(batches), max(batches), learning_rate=2e-5, weight_decay=0.0,
                                         max_grad_norm=1.0, lr_scheduler_type="linear-warmup+cosine-decay",
                                         warmup_ratio=0.03, train_strategy="fsdp-full-shard")  # fmt: skip
        strategy = get_train_strategy("fsdp-full-shard", vlm, ctx, optimization, model_cfg.precision,
                                      enable_gradient_checkpointing=not args.no_activation_checkpointing,
                                      total_steps=10_000)  # fmt: skip
        strategy.setup()
        harness.synchronize(device)
        build_s = time.perf_counter() - start
        meter = ThroughputMeter(vlm, device)
        llm, results = vlm.llm_backbone.llm, {}
        section.settings = {
            "train.strategy": f"fsdp-full-shard (FSDP2), world size 1, {torch.distributed.get_backend()}",
            "train.precision": "bf16 params / fp32 master + reductions",
            "train.activation_checkpointing": not args.no_activation_checkpointing,
            "train.attention": llm.config._attn_implementation,
            "train.reps": args.train_reps,
        }
        section.dimensions = {
            "train.llm": llm_id,
            "train.seq_len": seq_len,
            "train.visual_tokens": visual,
            "train.text_tokens": text_len,
            "train.batches": batches,
            "train.params": vlm.parameter_counts(),
            "train.build_s": round(build_s, 1),
            "train.llm_matmul_params": meter.llm.matmul_params,
            "matmul_ceiling_tflops": round(ceiling / 1e12, 1),
        }
        section.note(
            f"built + wrapped in {build_s:.1f} s; one step per timed call (no accumulation); inputs already "
            "on the device; MFU counts the LLM's model FLOPs only (no recomputation), over the whole step"
        )

        def step(name: str) -> None:
            meter.start_step(2)  # not a measuring step on CUDA: the hooks do not synchronise
            results.setdefault(name, []).append(strategy.train_step([inputs[name]]))

        inputs = {f"train_b{b}": make_batch(vlm, b, text_len, device, live=False) for b in batches}
        candidates: Candidates = {f"train_b{b}": (f"{b} x {seq_len} tokens, visual features precomputed (bf16)",
                                                  partial(step, f"train_b{b}")) for b in batches}  # fmt: skip
        if live_batch:
            live = f"train_b{live_batch}_live_encoders"
            inputs[live] = make_batch(vlm, live_batch, text_len, device, live=True)
            candidates[live] = (f"{live_batch} x {seq_len} tokens, frozen SigLIP + SVD encoders run on pixels (per "
                                "sample)", partial(step, live))  # fmt: skip
        peak = device_peak_flops(device, args.peak_flops)

        def after(name: str, m: Measurement) -> None:  # one more step with the time-share hooks measuring
            batch, resident = inputs[name], torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            tokens = [n + visual for n in batch["attention_mask"].sum(dim=1).tolist()]
            llm_flops = sum(meter.llm.train(n, meter.llm_trains) for n in tokens)
            meter.start_step(1)
            wall, _ = time_call(lambda: results[name].append(strategy.train_step([batch])), device)
            shares, losses = meter.finish_step([batch], wall), [r.loss for r in results[name]]
            model_flops = shares["flops_per_sample"] * len(tokens)
            m.extra.update({
                "tokens_per_step": sum(tokens), "tokens_per_s": sum(tokens) / m.median_s,
                "llm_tflops_per_s": llm_flops / m.median_s / 1e12, "model_tflop_per_step": model_flops / 1e12,
                "llm_share_of_model_flops": llm_flops / model_flops,
                **{k: v for k, v in shares.items() if k.startswith("time_share")},
                "skipped_steps": sum(r.skipped for r in results[name]), "loss_first_last": [losses[0], losses[-1]],
                "llm_mfu_vs_measured_ceiling": llm_flops / m.median_s / ceiling})  # fmt: skip
            if peak:
                m.extra["llm_mfu"] = llm_flops / m.median_s / peak
                m.extra["llm_mfu_vs_790"] = llm_flops / m.median_s / H200_MEASURED_MATMUL
                m.extra["model_mfu"] = model_flops / m.median_s / peak
            if m.peak_memory_mb is not None and device.type == "cuda":
                m.extra["peak_allocated_gib"] = (m.peak_memory_mb * 2**20 + resident) / 2**30
                m.extra["resident_gib"] = resident / 2**30
            if any(r.skipped for r in results[name]):
                section.note(f"{name}: some steps had non-finite gradients and skipped the optimizer (faster steps)")
            what = "live encoders" if "live" in name else f"{sum(tokens)} tokens/step"
            section.comparisons.append(Comparison(f"train: LLM FLOP/s / measured ceiling, {name} ({what})",
                                                  "LLM model FLOP/s / bf16 matmul ceiling measured here",
                                                  llm_flops / m.median_s / ceiling, None))  # fmt: skip
            if peak and "live" not in name:
                section.comparisons.append(
                    Comparison(
                        f"train: LLM MFU at seq {seq_len}, {name} ({what})",
                        f"LLM FLOPs (6NT + 12LaT^2) / median step / dense bf16 peak {peak / 1e12:.0f} TFLOP/s",
                        llm_flops / m.median_s / peak,
                        ">= 0.4",
                        f"{llm_flops / m.median_s / H200_MEASURED_MATMUL:.1%} of ~790 TFLOP/s",
                    )
                )

        measured = run_each(candidates, device, deadline, settings.warmup, args.train_reps, section, after)
        cached, live_run = measured.get(f"train_b{live_batch}"), measured.get(f"train_b{live_batch}_live_encoders")
        if cached and live_run:
            section.comparisons.append(
                Comparison(
                    f"train: b={live_batch}, live encoders / precomputed features",
                    "median step time ratio",
                    live_run.median_s / cached.median_s,
                    None,
                )
            )
    finally:
        if owns_group:
            shutdown_distributed()


# === Results ===
def merge_and_write(sections: Sequence[Section], out: Path, settings: Any) -> Path:
    """Write gpu_shapes.{json,md}, keeping the parts of an earlier run into the same directory that did not rerun."""
    path, ran = out / f"{NAME}.json", {s.name for s in sections}
    old = json.loads(path.read_text()) if path.is_file() else {}
    old = old if old.get("settings", {}).get("smoke") == settings.smoke else {}

    def earlier(key: str, cls: type, part: Callable[[Any], str]) -> list[Any]:
        rebuild = (lambda d: cls(**{f.name: d[f.name] for f in fields(cls)})) if cls is not str else str
        return [rebuild(item) for item in old.get(key, []) if part(item) not in ran]

    measurements = earlier("measurements", Measurement, lambda d: d["name"].split("_")[0])
    comparisons = earlier("comparisons", Comparison, lambda d: d["name"].split(":")[0])
    notes = earlier("notes", str, lambda note: note[1:].split("]")[0])
    run_settings = {**old.get("settings", {}), **settings.to_dict(), "torch_cuda": torch.version.cuda}
    dimensions = dict(old.get("dimensions", {}))
    for section in sections:
        measurements += section.measurements
        comparisons += section.comparisons
        notes += section.notes
        run_settings.update(section.settings)
        dimensions.update(section.dimensions)
    title = "GPU: SVD encoder and DyVA FSDP2 train step at the real shapes (random weights)"
    return harness.write_results(NAME, title, out, settings.device, run_settings, dimensions, measurements,
                                 comparisons, notes)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> Path:
    parser = harness.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(PARTS), default=None, help="run one part (default: all)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time budget from the start of this process's measuring (default 90 s per part)",
    )
    parser.add_argument("--svd-batches", type=int, nargs="+", default=None, help="default 1 8 16 32 (smoke 1 2)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=None, help="default 8 16 32 (smoke 1 2)")
    parser.add_argument("--train-reps", type=int, default=None, help="timed steps per size (default 10; smoke 2)")
    parser.add_argument("--live-batch", type=int, default=None, help="step size with live encoders (0: none)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sample, visual included")
    parser.add_argument("--llm", default=None, help="registry LLM id (default qwen25-1_5b-pure; smoke tiny-qwen25)")
    parser.add_argument(
        "--no-activation-checkpointing",
        action="store_true",
        help="train without activation checkpointing (what the recomputation costs)",
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for MFU (default: the table)")
    # Issue 16's parts (benchmarks/gpu_parts_train.py, benchmarks/gpu_parts_infer.py).
    parser.add_argument("--levers", nargs="+", default=None, help="levers part: which levers (default: all)")
    parser.add_argument("--lever-batch", type=int, default=None, help="levers part: samples per step (16; smoke 2)")
    parser.add_argument("--no-ac-batch", type=int, default=None, help="levers part: batch without checkpointing (8)")
    parser.add_argument("--lever-reps", type=int, default=None, help="levers, dyva7b parts: timed steps (4; smoke 2)")
    parser.add_argument("--dyva7b-batches", type=int, nargs="+", default=None,
                        help="dyva7b part: batches probed in increasing size until one fails (2 8 16 24 32 48)")
    parser.add_argument("--eval-items", type=int, default=None, help="eval7b part: items per timed call (48)")
    parser.add_argument("--eval-batches", type=int, nargs="+", default=None, help="eval7b part: batches (16 48)")
    parser.add_argument("--encoder-batch", type=int, default=None, help="encoder part: images per call (16; smoke 2)")
    parser.add_argument("--encoder-variants", nargs="+", default=None, help="encoder part: which variants (all)")
    parser.add_argument("--generate-batch", type=int, default=None, help="generate part: the large batch (16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generate part: new tokens per row (32)")
    settings, args = harness.parse_settings(parser, argv)
    args.train_reps = args.train_reps or (2 if settings.smoke else 10)
    args.lever_reps = args.lever_reps or (2 if settings.smoke else 4)
    parts = [args.only] if args.only else list(PARTS)
    budget = args.budget_s or (3600.0 if settings.smoke else 90.0 * len(parts))
    deadline = time.monotonic() + budget
    ceiling = matmul_ceiling(settings.device)
    print(f"[{NAME}] {settings.device}: bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s; parts {parts}", flush=True)
    done: list[Section] = []
    for part in parts:
        section = Section(part)
        section.save = lambda section=section: merge_and_write([*done, section], settings.out, settings)
        try:
            PARTS[part](section, settings, args, deadline, ceiling)
        except Exception as error:  # what was measured so far is kept, and the next part runs
            traceback.print_exc()
            section.note(f"FAILED: {type(error).__name__}: {str(error)[:500]}")
        done.append(section)
        path = merge_and_write(done, settings.out, settings)
        print(f"[{NAME}] {part} done, {path}", flush=True)
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n".join(harness.comparisons_table(json.loads(path.read_text()))), flush=True)
    return path


PARTS.update({"svd": svd_part, "train": train_part, "encoder": encoder_part, "levers": levers_part,
              "dyva7b": dyva7b_part, "generate": generate_part, "eval7b": eval7b_part})  # fmt: skip

if __name__ == "__main__":
    main()
