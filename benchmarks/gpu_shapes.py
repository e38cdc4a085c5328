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

Every candidate runs once first (an error or out-of-memory is noted and costs only that candidate); those whose timed
calls do not fit the time budget are skipped. Results merge into `<out>/gpu_shapes.{json,md}`, so the parts can run as
separate processes (`--only`), as `benchmarks/gpu_run.sh` does on the GPU machine.

    python -m benchmarks.gpu_shapes [--smoke] [--only svd|train] [--out DIR] [--budget-s S]
    bash benchmarks/gpu_run.sh     # on the GPU machine (no network): installs .whl/*, runs both parts into $OUT
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the GPU machine: a missing tokenizer must fail fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from benchmarks.harness import Comparison, Measurement, measure, time_call
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.backbones.vision.base_vision import collate_pixel_values, feature_key
from prismatic.models.backbones.vision.svd_config import TINY_SVD_CONFIG, SVDEncoderConfig
from prismatic.models.backbones.vision.svd_unet import SVDNoise
from prismatic.models.materialize import get_vision_backbone_and_transform
from prismatic.models.vlms.visual_features import frozen_encoder_context, vision_features
from prismatic.training.options import StageOptimization
from prismatic.training.strategies import get_train_strategy
from prismatic.training.throughput import ThroughputMeter, device_peak_flops, flop_counter
from prismatic.util.constants import IGNORE_INDEX
from prismatic.util.distributed import init_distributed, shutdown_distributed

NAME = "gpu_shapes"
H200_MEASURED_MATMUL = 790e12  # bf16 dense matmul FLOP/s measured on H200s (the reference ceiling)
Candidates = dict[str, tuple[str, Callable[[], Any]]]


# === Shared ===
@dataclass
class Section:
    """One part's results; `notes` also carry the errors of candidates that could not run."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    dimensions: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    save: Callable[[], Any] = field(default=lambda: None, repr=False)  # writes the results so far

    def note(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)
        self.notes.append(f"[{self.name}] {text}")


def matmul_ceiling(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s of this device (square 8192 products on a GPU; 512 on a CPU)."""
    n, iters = (8192, 50) if device.type == "cuda" else (512, 3)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(iters // 3):  # warm-up (clocks, cuBLAS heuristics)
        a @ b
    harness.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    harness.synchronize(device)
    return 2.0 * n**3 * iters / (time.perf_counter() - start)


def run_each(candidates: Candidates, device: torch.device, deadline: float, warmup: int, reps: int, section: Section,
             after: Callable[[str, Measurement], None]) -> dict[str, Measurement]:  # fmt: skip
    """Each candidate alone, in order: a first call (its warm-up; a second one if the first seems too slow), then,
    if `warmup + reps + 1` more calls fit the time budget, `measure` (warm-up, timed calls, one memory call) and
    `after(name, measurement)`; the results so far are saved after each candidate. An error (e.g. out of memory) is
    printed and noted, and costs only that candidate."""
    measured: dict[str, Measurement] = {}
    for name, (description, fn) in candidates.items():
        try:
            wall, _ = time_call(fn, device)
            if time.monotonic() + wall * (warmup + reps + 1) > deadline:  # one-off costs of a first call? time again
                wall, _ = time_call(fn, device)
            if time.monotonic() + wall * (warmup + reps + 1) > deadline:
                section.note(f"{name}: skipped ({warmup + reps + 1} calls of {wall:.2f} s do not fit the time budget)")
                continue
            measured[name] = measure({name: (description, fn)}, device, warmup, reps)[name]
            section.measurements.append(measured[name])
            after(name, measured[name])
        except Exception as error:
            traceback.print_exc()
            section.note(f"{name}: failed ({type(error).__name__}: {str(error)[:300]})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        section.save()
    return measured


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
def start_process_group(device: torch.device) -> Any:
    """World size 1 through the project's own setup (`init_distributed`: NCCL on CUDA, gloo on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    ctx = init_distributed()
    if ctx.device.type != device.type:
        raise ValueError(f"The train part runs on the default device ({ctx.device}), not {device}.")
    return ctx


def make_batch(vlm: Any, b: int, text_len: int, device: torch.device, live: bool) -> dict[str, Any]:
    """b samples of text_len random text tokens (the second half labelled) plus one image each: its features
    precomputed in bf16 (as the frozen-feature cache stores them) or, `live`, pixels for the frozen encoders."""
    g = torch.Generator().manual_seed(b)
    ids = torch.randint(0, len(vlm.llm_backbone.tokenizer), (b, text_len), generator=g)
    labels = ids.clone()
    labels[:, : text_len // 2] = IGNORE_INDEX
    if live:
        transform = vlm.vision_backbone.get_image_transform()
        rng = np.random.default_rng(b)
        images = [Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)) for _ in range(b)]
        pixel_values = collate_pixel_values([transform(image) for image in images])
    else:
        pixel_values = {feature_key(s.name): torch.randn(b, s.num_tokens, s.embed_dim, generator=g).to(torch.bfloat16)
                        for s in vlm.vision_backbone.streams}  # fmt: skip
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "has_image": torch.ones(b, dtype=torch.bool), "pixel_values": pixel_values}  # fmt: skip
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}  # fmt: skip


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
    parser.add_argument("--only", choices=("svd", "train"), default=None, help="run one part (default: both)")
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
    settings, args = harness.parse_settings(parser, argv)
    args.train_reps = args.train_reps or (2 if settings.smoke else 10)
    parts = [args.only] if args.only else ["svd", "train"]
    budget = args.budget_s or (3600.0 if settings.smoke else 90.0 * len(parts))
    deadline = time.monotonic() + budget
    ceiling = matmul_ceiling(settings.device)
    print(f"[{NAME}] {settings.device}: bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s; parts {parts}", flush=True)
    done: list[Section] = []
    for part in parts:
        section = Section(part)
        section.save = lambda section=section: merge_and_write([*done, section], settings.out, settings)
        try:
            (svd_part if part == "svd" else train_part)(section, settings, args, deadline, ceiling)
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


if __name__ == "__main__":
    main()
