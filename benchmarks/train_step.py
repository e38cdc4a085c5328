"""Benchmark 1: one train step (forward + backward + clipping + AdamW) of our VLMs against HF transformers' Llava built
with identical dimensions.

- SigLIP-only: our prism-style VLM (timm ViT without its last block, `gelu-mlp` projector = Llava's projector shape,
  Llama LLM) against `LlavaForConditionalGeneration` (SigLIP tower of the same width/depth/heads/MLP/patch, feature
  layer -2, so the full tower incl. last block, post-norm and pooling head runs; the same LlamaConfig; the same
  sequence length and number of image tokens). Goal: ours / peer time <= 0.9.
- DyVA: our SigLIP + SVD (release mode, dual projector) VLM against the same Llava plus the released SVD computation
  run separately (CFG-doubled full U-Net + scheduler step, `released_svd.py`) whose features go through an SVD
  projector into the sequence at our positions. Goal: ours / peer time <= 0.9.

Also reported: the FLOPs of one step of each side (torch FlopCounterMode, one untimed call), whose ratio is what the
time ratio would be if time were proportional to FLOPs.

    python -m benchmarks.train_step [--smoke] [--dtype fp32|bf16]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import models, steps
from benchmarks.harness import (
    Comparison,
    Measurement,
    argument_parser,
    measure,
    parse_settings,
    ratio_pair,
    write_results,
)
from benchmarks.released_svd import ReleasedSVDFeatures

NAME = "train_step"
GOAL = "<= 0.9"


def step_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (matmuls, convolutions, attention; forward and backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def siglip_candidates(dims: models.BenchDims, device: torch.device, dtype: str) -> dict[str, tuple[str, Any]]:
    vlm = models.siglip_vlm(dims)
    peer = steps.PeerTrainStep(models.llava_peer(dims, vlm.llm_backbone), dims, device, dtype)
    return {
        "ours_siglip": ("our SigLIP-only VLM, SingleDeviceStrategy.train_step", steps.our_train_step(vlm, dims, device,
                                                                                                       dtype)),
        "llava": ("LlavaForConditionalGeneration, same dims, + clip + AdamW", peer),
    }


def dyva_candidates(dims: models.BenchDims, device: torch.device, dtype: str) -> dict[str, tuple[str, Any]]:
    vlm = models.dyva_vlm(dims)
    released = ReleasedSVDFeatures(models.svd_components(dims), models.svd_config(dims))
    projector = steps.svd_projector(dims.unet_channels[-1], dims.llm_hidden)
    peer = steps.PeerTrainStep(models.llava_peer(dims, vlm.llm_backbone), dims, device, dtype, released, projector)
    return {
        "ours_dyva": ("our DyVA VLM (SigLIP + SVD release, dual projector)", steps.our_train_step(vlm, dims, device,
                                                                                                  dtype)),
        "llava_released_svd": ("Llava + released SVD computation + SVD projector", peer),
    }


def run_pair(
    candidates: dict[str, tuple[str, Any]], device: torch.device, warmup: int, reps: int
) -> tuple[list[Measurement], dict[str, float]]:
    measured = measure(candidates, device, warmup, reps)
    flops = {name: step_flops(fn) for name, (_, fn) in candidates.items()}
    for name, m in measured.items():
        m.extra["gflop_per_step"] = flops[name] / 1e9
    return list(measured.values()), flops


def comparison(name: str, ours: Measurement, peer: Measurement, flops: dict[str, float]) -> Comparison:
    flop_ratio = flops[ours.name] / flops[peer.name]
    wall, cpu = ratio_pair(lambda clock: ours.median(clock) / peer.median(clock), {"a": ours, "b": peer})
    return Comparison(name, f"{ours.name} / {peer.name} median step time", wall, GOAL, cpu_ratio=cpu,
                      note=f"FLOP ratio {flop_ratio:.3f} ({flops[ours.name] / 1e9:.1f} vs "
                           f"{flops[peer.name] / 1e9:.1f} GFLOP per step)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="fp32, or bf16 autocast with frozen encoders in bf16 (default: bf16 on CUDA, fp32 on CPU)")
    settings, args = parse_settings(parser, argv)
    device = settings.device
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dims = models.dims_for(settings.smoke)
    torch.manual_seed(0)

    siglip_measured, siglip_flops = run_pair(siglip_candidates(dims, device, dtype), device, settings.warmup,
                                             settings.reps)  # fmt: skip
    dyva_measured, dyva_flops = run_pair(dyva_candidates(dims, device, dtype), device, settings.warmup, settings.reps)
    comparisons = [
        comparison("SigLIP-only VLM vs Llava", siglip_measured[0], siglip_measured[1], siglip_flops),
        comparison("DyVA vs Llava + released SVD", dyva_measured[0], dyva_measured[1], dyva_flops),
    ]
    for m in (*siglip_measured, *dyva_measured):
        m.extra["samples_per_s"] = dims.batch_size / m.median_s
    sequence = {"siglip": 1 + dims.vit_tokens + dims.text_tokens - 1,
                "dyva": dims.text_tokens + dims.vit_tokens + models.svd_encoder_tokens(dims)}  # fmt: skip
    notes = [
        "Both sides: same batch (random token ids, half prompt / half answer labels), same LLM config, same number of "
        "image tokens at the same positions, same optimizer groups, clipping and precision; frozen vision encoders.",
        "Our margin on the SigLIP-only step can only come from work the peer does and we skip: the ViT's last block, "
        "its post-norm and pooling head (the FLOP ratio shows how large that is relative to the LLM step).",
        "The DyVA peer runs the released SVD computation (CFG-doubled batch through the full U-Net, scheduler.step on "
        "the features) and the same projector work for the SVD stream; our static projector branch is wider (C->4C->d "
        "+ shared d->d, as released) than Llava's (C->d->d), which costs us a little.",
        f"Sequence lengths (tokens per sample into the LLM): {sequence}.",
    ]
    write_results(NAME, "Train step: ours vs HF Llava (identical dimensions)", settings.out, device,
                  {**settings.to_dict(), "dtype": dtype}, dims.to_dict(), [*siglip_measured, *dyva_measured],
                  comparisons, notes)  # fmt: skip
    return {"measurements": [*siglip_measured, *dyva_measured], "comparisons": comparisons}


if __name__ == "__main__":
    main()
