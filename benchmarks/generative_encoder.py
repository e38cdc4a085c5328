"""Benchmark 2: the generative (SVD) encoder's feature extraction, ours against the released computation and against
the floor of its unavoidable pieces.

- ours: `SVDGenerativeEncoder` in `release` mode on a batch (content-seeded noise, one VAE call, CLIP embedding, ONE
  conditional pass stopped after the down path, the feature scaling); also `per-sample`, how training encodes frozen
  encoders by default (one sample at a time, for batch-independent, cacheable features).
- released: the released code's computation of the same features (`released_svd.py`: CFG-doubled batch through the
  full U-Net, scheduler.step on the features). Goal: >= 4x faster (released / ours time).
- floor: VAE encode + CLIP embedding + one down path, each timed alone on precomputed inputs; their medians summed.
  Goal: ours within 1.1x of it.

    python -m benchmarks.generative_encoder [--smoke]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks import models
from benchmarks.harness import Clock, Comparison, argument_parser, measure, parse_settings, ratio_pair, write_results
from benchmarks.released_svd import ReleasedSVDFeatures
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_unet import run_unet, to_signed_unit, unet_conditioning

NAME = "generative_encoder"


def floor_pieces(encoder: SVDGenerativeEncoder, frames: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The three pieces the features cannot do without, each on precomputed inputs (no noise draws, no glue)."""
    cfg, device, dtype = encoder.config, encoder.unet.device, encoder.unet.dtype
    pixels = to_signed_unit(frames.to(device))  # [B, 1, 3, S, S]
    with torch.no_grad():
        image_embeds = encoder._clip_embeds(pixels[:, 0]).to(dtype)
        cond_latents = encoder._vae_mode(pixels[:, 0])
        time_ids = torch.tensor([[cfg.fps - 1, cfg.motion_bucket_id, cfg.noise_aug_strength]], dtype=dtype,
                                device=device).repeat(len(frames), 1)  # fmt: skip
        conditioning = unet_conditioning(encoder.unet, image_embeds, time_ids, cfg.num_frames)
    noise = torch.randn(len(frames), cfg.num_frames, *cond_latents.shape[1:], device=device, dtype=dtype)
    unet_input = torch.cat([noise, cond_latents.unsqueeze(1).expand(-1, cfg.num_frames, -1, -1, -1)], dim=2)
    timestep = encoder.timesteps[cfg.sigma_index].to(device)
    return {
        "floor_vae": lambda: encoder._vae_mode(pixels[:, 0]),
        "floor_clip": lambda: encoder._clip_embeds(pixels[:, 0]),
        "floor_down": lambda: run_unet(encoder.unet, unet_input, timestep, conditioning, stop="pre-mid"),
    }


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="images per call (default: 4; smoke 2)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="weights of both encoders (default: bf16 on CUDA, the released dtype; fp32 on CPU)")
    settings, args = parse_settings(parser, argv)
    device = settings.device
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    dims = models.dims_for(settings.smoke)
    batch = args.batch or (2 if settings.smoke else 4)

    ours = models.svd_encoder(dims).to(device)
    if dtype != torch.float32:
        ours.to(dtype)
    released = ReleasedSVDFeatures(models.svd_components(dims), models.svd_config(dims))
    for module in (released.pipe.vae, released.pipe.unet, released.pipe.image_encoder):
        module.to(device)
        if dtype != torch.float32:  # (diffusers warns on any dtype cast)
            module.to(dtype)
    g = torch.Generator().manual_seed(0)
    size = dims.svd_image_size
    frames = torch.randint(0, 256, (batch, 1, 3, size, size), generator=g, dtype=torch.uint8)
    pixel_values = {"svd": frames, "svd_count": torch.ones(batch, dtype=torch.long)}

    def per_sample() -> list[torch.Tensor]:
        return [ours({"svd": frames[i : i + 1]})["svd"] for i in range(batch)]

    candidates = {
        "ours": ("SVDGenerativeEncoder release mode, one call per batch", no_grad(lambda: ours(pixel_values))),
        "ours_per_sample": ("the same, one call per sample (training's default for frozen encoders)",
                            no_grad(per_sample)),
        "released": ("released computation: CFG-doubled full U-Net + scheduler.step",
                     no_grad(lambda: released(frames[:, 0]))),
        **{name: (f"floor piece: {name.removeprefix('floor_')}", no_grad(fn))
           for name, fn in floor_pieces(ours, frames).items()},
    }  # fmt: skip
    measured = measure(candidates, device, settings.warmup, settings.reps)
    def floor(clock: Clock) -> float:
        return sum(measured[name].median(clock) for name in ("floor_vae", "floor_clip", "floor_down"))

    def speedup(ours_name: str) -> tuple[float, float | None]:
        return ratio_pair(lambda c: measured["released"].median(c) / measured[ours_name].median(c), measured)

    for m in measured.values():
        m.extra["images_per_s"] = batch / m.median_s
    to_floor = ratio_pair(lambda c: measured["ours"].median(c) / floor(c), measured)
    comparisons = [
        Comparison("ours vs released computation", "released / ours median time", speedup("ours")[0], ">= 4",
                   cpu_ratio=speedup("ours")[1]),
        Comparison("ours per-sample vs released computation", "released / ours_per_sample median time",
                   speedup("ours_per_sample")[0], ">= 4", cpu_ratio=speedup("ours_per_sample")[1],
                   note="training's default encoding of frozen encoders"),
        Comparison("ours vs floor (VAE + CLIP + down path)", "ours / sum of floor-piece medians", to_floor[0],
                   "<= 1.1", cpu_ratio=to_floor[1], note=f"floor {floor('wall'):.4f} s"),
    ]  # fmt: skip
    notes = [
        f"{batch} images of {size} px, T = {dims.svd_frames} frame slots, {models.svd_encoder_tokens(dims)} tokens "
        f"per image, weights in {dtype_name}; no gradients.",
        "The released side includes its uint8 -> PIL -> preprocess round trip and its CPU-side CLIP normalisation, "
        "as the released code runs them; ours includes its content-hash noise draws (what makes features cacheable).",
    ]
    write_results(NAME, "Generative encoder: our release-mode features vs the released computation",
                  settings.out, device, {**settings.to_dict(), "dtype": dtype_name, "batch": batch}, dims.to_dict(),
                  list(measured.values()), comparisons, notes)  # fmt: skip
    return {"measurements": list(measured.values()), "comparisons": comparisons, "floor_s": floor("wall")}


if __name__ == "__main__":
    main()
