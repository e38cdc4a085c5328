"""GPU benchmark parts on the encoder, generation and evaluation (issue 16), run by `benchmarks/gpu_shapes.py --only
encoder|generate|eval7b`:

- `encoder`: the SVD encoder (release mode, 448 px, T = 8, bf16, random weights) at batch 16 through the production
  path (`vision_features`): content-seeded noise drawn on the CPU (today), drawn on the device (`noise_device="device"`,
  `--model.svd_noise_device device`), the same call timed stage by stage (`StageClock`: CLIP, VAE encoder, U-Net down
  path, the rest), and variants: cuDNN autotuning (`cudnn.benchmark`), the encoder's modules `torch.compile`'d,
  channels-last (only when named: measured slower) (`--encoder-variants` picks); images/s, goal >= 60.
- `generate`: `vlm.generate` of the DyVA-shaped model with Qwen2.5-1.5B (random weights, bf16), greedy, exactly N new
  tokens: decode tokens/s at batch 16 and at batch 1 from the decode steps alone (`StepClock`; goal batch 16 / batch
  1 >= 8), whole-call tokens/s, and the first-token latency at batch 1 (the 1-token call: image transform, both
  encoders, prefill and one decode step).
- `eval7b`: the evaluation harness's closed-form scoring (`candidate_probabilities`, VSR-style True/False items, as
  `benchmarks/eval_scoring.py` times it on the CPU) at the DyVA-7B shapes (SigLIP + SVD + Llama-2-7B, random weights,
  bf16): items/s at two batch sizes, images transformed and encoded inside the timed call.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks import harness
from benchmarks.eval_scoring import harness as scoring
from benchmarks.eval_scoring import items as eval_items
from benchmarks.generation import ours
from benchmarks.gpu_common import Candidates, Section, run_each
from benchmarks.harness import Comparison, Measurement
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.eval.predict import wrap_prompts
from prismatic.models.backbones.vision.svd_config import TINY_SVD_CONFIG, SVDEncoderConfig
from prismatic.models.materialize import get_vision_backbone_and_transform
from prismatic.models.vlms.visual_features import vision_features


def encoder_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_SVD_CONFIG if smoke else SVDEncoderConfig()
    batch = args.encoder_batch or (2 if smoke else 16)
    with torch.device(device):
        encoder, _ = get_vision_backbone_and_transform("tiny-svd" if smoke else "svd", svd_config=config,
                                                       load_weights=False)  # fmt: skip
    encoder.requires_grad_(False).eval().to(device=device, dtype=dtype)  # .to: see gpu_shapes.svd_part
    size = config.image_size
    frames = torch.randint(0, 256, (batch, 1, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    # The collator's frames are on the CPU; the strategy moves the batch to the device before the model runs.
    pixels = {"svd": frames.to(device), "svd_count": torch.ones(batch, dtype=torch.long, device=device)}
    section.settings = {"encoder.dtype": str(dtype).removeprefix("torch."), "encoder.batch": batch,
                        "encoder.image_size": size, "encoder.num_frames": config.num_frames}  # fmt: skip

    def features(noise_device: str) -> Any:
        encoder.config = replace(encoder.config, noise_device=noise_device)
        return vision_features(encoder, pixels, frozen=True, per_sample=False)

    def after(name: str, m: Measurement) -> None:
        m.extra["images_per_s"] = batch / m.median_s
        if name.endswith("_stages"):  # each stage's median over the calls, and what is left: noise, resizes, copies
            medians = clock.medians()
            m.extra.update({f"{stage}_s": round(t, 4) for stage, t in medians.items()})
            m.extra["rest_s"] = round(m.median_s - sum(medians.values()), 4)

    def cudnn_benchmark() -> Any:  # cuDNN times its convolution algorithms per shape on the first call, keeps the best
        torch.backends.cudnn.benchmark = True
        try:
            return features("device")
        finally:
            torch.backends.cudnn.benchmark = False

    def channels_last() -> None:  # the 2-D convolutions' weights (VAE, U-Net); the temporal 3-D ones have no such format
        for module in encoder.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data = module.weight.data.to(memory_format=torch.channels_last)

    def compiled() -> None:  # the modules the encoder calls: CLIP's layers, the VAE encoder, the U-Net stages it runs
        backend = "inductor" if device.type == "cuda" else "aot_eager"
        # CLIP layer by layer: its 32 identical layers share one compiled graph (as `compile_llm_blocks` does for the
        # LLM), where the whole tower would be one graph 32 layers long to compile, in this part's time budget.
        clip_layers = list(encoder.image_encoder.vision_model.encoder.layers)
        for module in [*clip_layers, encoder.vae.encoder, encoder.unet.conv_in, *encoder.unet.down_blocks]:
            module.compile(backend=backend)

    clock = StageClock(device, {"clip": (encoder.image_encoder, encoder.image_encoder),
                                "vae": (encoder.vae.encoder, encoder.vae.encoder),
                                "unet": (encoder.unet.conv_in, encoder.unet.down_blocks[-1])})  # fmt: skip

    def stages() -> Any:  # the device-noise call with the clock's hooks on, taken off before anything is compiled
        with clock:
            return features("device")

    # name: (description, call, irreversible change made before it); the irreversible ones last, in this order.
    variants: dict[str, tuple[str, Any, Any]] = {
        "cpu_noise": ("noise drawn on the CPU (today's default)", lambda: features("cpu"), None),
        "device_noise": ("noise drawn on the device (noise_device='device')", lambda: features("device"), None),
        "device_noise_stages": ("device noise, the device synchronised around CLIP, the VAE encoder and the U-Net "
                                "down path to time each", stages, None),
        "device_noise_cudnn_benchmark": ("device noise, torch.backends.cudnn.benchmark on", cudnn_benchmark, None),
        "device_noise_channels_last": ("device noise, encoder in channels-last", lambda: features("device"),
                                       channels_last),
        "device_noise_compiled": ("device noise, CLIP layers, VAE encoder and U-Net stages torch.compile'd (after "
                                  "channels-last if that ran)", lambda: features("device"), compiled),
        "device_noise_compiled_cudnn_benchmark": ("device noise, compiled, cudnn.benchmark on", cudnn_benchmark,
                                                  compiled),
    }
    # Channels-last only on request: measured slower on the H200 (45.7 against 49.2 images/s), and the compiled
    # variants after it would compile the slower layout.
    chosen = args.encoder_variants or [name for name in variants if name != "device_noise_channels_last"]
    measured: dict[str, Measurement] = {}
    done: set[Any] = set()  # the irreversible changes made so far
    for variant in chosen:
        description, call, change = variants[variant]
        if change is not None and change not in done:
            change()
            done.add(change)
        measured.update(run_each({f"encoder_b{batch}_{variant}": (description, call)}, device, deadline,
                                 settings.warmup, settings.reps, section, after))  # fmt: skip
    baseline = measured.get(f"encoder_b{batch}_cpu_noise") or measured.get(f"encoder_b{batch}_device_noise")
    for name, m in measured.items():
        rate = m.extra["images_per_s"]
        if name.endswith("_stages"):  # slowed by its synchronisations: the breakdown, not a rate to judge
            shares = ", ".join(f"{key.removesuffix('_s')} {m.extra[key]:.3f} s" for key in
                               ("clip_s", "vae_s", "unet_s", "rest_s") if key in m.extra)  # fmt: skip
            section.comparisons.append(Comparison("encoder: stages of the device-noise call (s)", "median seconds "
                                                  "of the call, device synchronised around each stage", m.median_s,
                                                  None, shares))  # fmt: skip
            continue
        section.comparisons.append(Comparison(f"encoder: images/s, {name.split('_', 2)[2]}", f"images/s at batch "
                                              f"{batch}", rate, ">= 60" if not smoke else None))  # fmt: skip
        if baseline is not None and m is not baseline:
            ratio = f"encoder: {name.split('_', 2)[2]} / {baseline.name.split('_', 2)[2]}"
            section.comparisons.append(Comparison(ratio, "images/s ratio", rate / baseline.extra["images_per_s"], None))


class StageClock:
    """Wall time of stages inside real calls, each stage from its first module's forward start to its last module's
    forward end, the device synchronised at both (so the stages' sum is a little slower than an unhooked call). The
    hooks are on only inside `with clock:`."""

    def __init__(self, device: torch.device, stages: dict[str, tuple[torch.nn.Module, torch.nn.Module]]) -> None:
        self.device, self.stages = device, stages
        self.times: dict[str, list[float]] = {name: [] for name in stages}
        self.started: dict[str, float] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> StageClock:
        for name, (first, last) in self.stages.items():
            self.handles += [first.register_forward_pre_hook(lambda *_, n=name: self._start(n)),
                             last.register_forward_hook(lambda *_, n=name: self._stop(n))]  # fmt: skip
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _start(self, name: str) -> None:
        harness.synchronize(self.device)
        self.started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        harness.synchronize(self.device)
        self.times[name].append(time.perf_counter() - self.started.pop(name))

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(times) for name, times in self.times.items() if times}


class StepClock:
    """Start times of the LLM's forward calls inside `generate` (the prefill, then one per decode step), the device
    synchronised first (as `generate` itself does every step to check its stopping criteria). Decode tokens/s from the
    steps alone: the H200 run of 2026-12-04 took it as (N-token call - 1-token call), and at batch 16 the 1-token call
    (image transforms, encoders, prefill) ranged over 1.35-2.03 s, more than the ~0.8 s of decoding the difference was
    to isolate: it gave a 5.6 ms decode step at batch 16 against 25 ms at batch 1, which is not physical."""

    def __init__(self, llm: torch.nn.Module, device: torch.device) -> None:
        self.device, self.ticks = device, {}
        self.current: list[float] = []
        self.handle = llm.register_forward_pre_hook(self.tick)  # `.remove()` it to stop timing

    def tick(self, *_: Any) -> None:
        harness.synchronize(self.device)
        self.current.append(time.perf_counter())

    def timed(self, name: str, fn: Any) -> Any:
        def call() -> Any:
            self.current = []
            self.ticks.setdefault(name, []).append(self.current)
            return fn()

        return call

    def decode_rate(self, name: str, batch: int) -> float:
        """Median over calls of batch x (decode steps after the first) / their time (prefill and step 1 excluded:
        step 1 builds the KV cache's first decode shapes)."""
        rates = [batch * (len(t) - 2) / (t[-1] - t[1]) for t in self.ticks[name] if len(t) > 2]
        return statistics.median(rates)


def generate_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    big = args.generate_batch or (2 if smoke else 16)
    new_tokens = args.new_tokens or (4 if smoke else 32)
    model_cfg = get_model_config("dyva_siglip+tiny" if smoke else "dyva_siglip+7b")
    model_cfg.llm_backbone_id = args.llm or ("tiny-qwen25" if smoke else "qwen25-1_5b-pure")
    with torch.device(device):
        vlm = build_vlm(model_cfg, load_weights=False)
    vlm.to(device)
    if device.type == "cuda":
        vlm.to(torch.bfloat16)  # the README's inference dtype
    image_size = 448
    clock = StepClock(vlm.llm_backbone.llm, device)
    section.settings = {"generate.llm": model_cfg.llm_backbone_id, "generate.new_tokens": new_tokens,
                        "generate.batches": [1, big]}  # fmt: skip
    candidates: Candidates = {
        f"generate_b{b}_n{n}": (f"vlm.generate, batch {b}, {n} new tokens (greedy, stops blocked)",
                                clock.timed(f"generate_b{b}_n{n}", ours(vlm, b, n, image_size)))
        for b, n in ((1, new_tokens), (big, new_tokens), (1, 1))
    }  # fmt: skip

    def after(name: str, m: Measurement) -> None:
        m.extra["calls_per_s"] = 1 / m.median_s
        if name.endswith(f"_n{new_tokens}") and new_tokens > 2:
            m.extra["decode_tokens_per_s"] = clock.decode_rate(name, int(name.split("_b")[1].split("_")[0]))

    measured = run_each(candidates, device, deadline, settings.warmup, settings.reps, section, after)
    one, many = measured.get(f"generate_b1_n{new_tokens}"), measured.get(f"generate_b{big}_n{new_tokens}")
    if one and many and "decode_tokens_per_s" in one.extra:
        rates = one.extra["decode_tokens_per_s"], many.extra["decode_tokens_per_s"]
        section.comparisons.append(Comparison(f"generate: decode tokens/s, batch {big} / batch 1", "decode steps "
                                              "only (LLM forward start times), median over calls", rates[1] / rates[0],
                                              ">= 8" if not smoke else None,
                                              f"{rates[1]:.1f} vs {rates[0]:.1f} tokens/s; whole calls: "
                                              f"{big * new_tokens / many.median_s:.1f} vs "
                                              f"{new_tokens / one.median_s:.1f} tokens/s"))  # fmt: skip
    if "generate_b1_n1" in measured:
        section.comparisons.append(Comparison("generate: first-token latency, batch 1 (s)", "median seconds of a "
                                              "1-token generate: transform, encoders, prefill, one step",
                                              measured["generate_b1_n1"].median_s, None))  # fmt: skip


def eval7b_part(section: Section, settings: Any, args: Any, deadline: float, ceiling: float) -> None:
    device, smoke = settings.device, settings.smoke
    model_cfg = get_model_config("dyva_siglip+tiny" if smoke else "dyva_siglip+7b")
    model_cfg.llm_backbone_id = "tiny-llama2" if smoke else "llama2-7b-pure"
    with torch.device(device):
        vlm = build_vlm(model_cfg, load_weights=False)
    vlm.to(device)  # see gpu_shapes.svd_part: one diffusers buffer ignores the default-device context
    if device.type == "cuda":
        vlm.to(torch.bfloat16)
    vlm.eval()
    count = args.eval_items or (4 if smoke else 48)
    batches = args.eval_batches or ([2] if smoke else [16, 48])
    images, messages = eval_items(count, 448)
    prompts = wrap_prompts(vlm, messages)
    section.settings = {"eval7b.llm": model_cfg.llm_backbone_id, "eval7b.items": count, "eval7b.batches": batches}
    candidates: Candidates = {f"eval7b_harness_b{b}": (f"candidate_probabilities over {count} VSR-style True/False "
                                                       f"items, batch {b}, images encoded in the call",
                                                       scoring(vlm, images, prompts, b)) for b in batches}  # fmt: skip

    def after(name: str, m: Measurement) -> None:
        m.extra["items_per_s"] = count / m.median_s

    measured = run_each(candidates, device, deadline, settings.warmup, min(settings.reps, 3), section, after)
    for name, m in measured.items():
        section.comparisons.append(Comparison(f"eval7b: harness items/s, {name.rsplit('_', 1)[1]}", "items / median "
                                              "call seconds (SigLIP + SVD + Llama-2-7B forward, last-position "
                                              "logits)", m.extra["items_per_s"], None))  # fmt: skip
