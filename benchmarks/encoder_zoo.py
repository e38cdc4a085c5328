"""Benchmark 7: the generative-encoder zoo (CogVideoX, Wan, LTX-Video) - what the truncated feature pass costs against
the pipeline's full first denoising step.

- Real dimensions, counted on the `meta` device (torch FlopCounterMode, nothing allocated or downloaded): per image at
  each family's default resolution and T, the FLOPs of the conditioning (VAE encode, image encoder), of the denoiser up
  to the tapped block, and of the full denoiser pass the pipeline's first step runs; the resident weights (bf16) with
  and without the blocks after the tap; tokens and channels of the feature. Also the authors' release-mode CogVideoX
  (`dyva_dit_siglip+7b`: 448 px, 2 latent frames, raw tokens of block 21).
- The 7B models of the zoo, built on `meta`: visual tokens and parameters per part.
- Tiny dimensions, measured on this machine: features/s of the truncated denoiser pass vs the full pass on the same
  inputs (the tiny twins, 4 blocks, tap 2).
Goal (per family): the truncated denoiser pass costs at most (tap depth / total depth) + 10% of the full pass, where
tap depth = tap + 1 blocks (FLOPs at real dimensions; measured time at tiny ones).

    python -m benchmarks.encoder_zoo [--smoke]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import Comparison, argument_parser, measure, ratio_pair, write_results
from prismatic.models.backbones.vision.registry import VIDEO_KINDS, generative_encoder_class
from prismatic.models.backbones.vision.video_config import TINY_VIDEO_CONFIG, VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import VideoDiTEncoder

NAME = "encoder_zoo"
# (label, family, config) at real dimensions: each family's defaults, and the authors' release-mode CogVideoX.
REAL_SETTINGS: tuple[tuple[str, str, VideoEncoderConfig], ...] = (
    *((kind, kind, VideoEncoderConfig()) for kind in VIDEO_KINDS),
    ("cogvideox release (dyva_dit_siglip+7b)", "cogvideox",
     VideoEncoderConfig(mode="release", pool_grid=0, height=448, width=448, num_frames=2)),
)  # fmt: skip


def _frames(encoder: VideoDiTEncoder, batch: int) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, 1, 3, encoder.height, encoder.width), generator=g, dtype=torch.uint8)
    return frames, [1] * batch


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _bytes(modules: Sequence[torch.nn.Module | None], bytes_per_param: int = 2) -> int:
    return sum(p.numel() * bytes_per_param for m in modules if m is not None for p in m.parameters())


def real_row(label: str, kind: str, config: VideoEncoderConfig) -> dict[str, Any]:
    """FLOPs and resident weights per image at real dimensions (meta device: shapes only)."""
    with torch.device("meta"):
        encoder = generative_encoder_class(kind).from_config(kind, config, load_weights=False)
    frames, counts = _frames(encoder, 1)
    holder: dict[str, Any] = {}
    conditioning = _flops(lambda: holder.setdefault("call", encoder.query(frames, counts)))
    call = holder["call"]
    truncated = _flops(lambda: encoder.run_to_tap(call))
    full = _flops(lambda: encoder.transformer(**call.kwargs, return_dict=False))
    blocks = getattr(encoder.transformer, encoder.blocks_attr)
    kept = [*list(blocks)[: encoder.tap + 1]]
    rest = [m for n, m in encoder.transformer.named_children() if n not in (encoder.blocks_attr, *encoder.head_attrs)]
    vae_encoder = [encoder.vae.encoder, getattr(encoder.vae, "quant_conv", None)]
    stream = encoder.streams[0]
    return {
        "label": label, "tap": encoder.tap, "blocks": encoder.num_blocks, "size": f"{encoder.height}x{encoder.width}",
        "latent_frames": encoder.config.num_frames, "grid": encoder.token_grid(), "tokens": stream.num_tokens,
        "channels": stream.embed_dim, "conditioning_tflop": conditioning / 1e12, "truncated_tflop": truncated / 1e12,
        "full_tflop": full / 1e12, "depth": (encoder.tap + 1) / encoder.num_blocks,
        "weights_full_gb": _bytes([encoder.transformer, encoder.vae, encoder.image_encoder]) / 1e9,
        "weights_kept_gb": _bytes([*kept, *rest, *vae_encoder, encoder.image_encoder]) / 1e9,
        "feature_kb_bf16": stream.num_tokens * stream.embed_dim * 2 / 1e3,
    }  # fmt: skip


def model_rows() -> list[dict[str, Any]]:
    """Every 7B zoo entry of the model registry, built on `meta` through the one assembly path."""
    from prismatic.assembly import build_vlm
    from prismatic.models.registry import MODEL_REGISTRY

    rows = []
    for model_id, spec in MODEL_REGISTRY.items():
        kind = spec.vision_backbone_id.split("+")[-1]
        if not model_id.endswith("+7b") or kind not in VIDEO_KINDS:
            continue
        with torch.device("meta"):
            vlm = build_vlm(model_id, load_weights=False)
        counts = {name: round(count / 1e9, 3) for name, count in vlm.parameter_counts().items()}
        rows.append({"model_id": model_id, "visual_tokens": vlm.num_visual_tokens, "params_b": counts})
    return rows


def model_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | visual tokens | vision backbone (B) | projector (B) | LLM (B) |", "|---|---|---|---|---|"]
    for r in rows:
        p = r["params_b"]
        lines.append(f"| `{r['model_id']}` | {r['visual_tokens']} | {p['vision_backbone']:.3f} | {p['projector']:.3f} | "
                     f"{p['llm_backbone']:.3f} |")  # fmt: skip
    return lines


def real_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| encoder | size, T | tap / blocks | tokens x channels | conditioning TFLOP | denoiser to tap TFLOP | "
             "full denoiser TFLOP | ratio (goal <= depth + 0.1) | weights bf16 GB: kept / full |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = r["truncated_tflop"] / r["full_tflop"]
        lines.append(
            f"| {r['label']} | {r['size']}, {r['latent_frames']} | {r['tap']} / {r['blocks']} | "
            f"{r['tokens']} x {r['channels']} | {r['conditioning_tflop']:.2f} | {r['truncated_tflop']:.2f} | "
            f"{r['full_tflop']:.2f} | {ratio:.3f} (depth {r['depth']:.3f}) | {r['weights_kept_gb']:.1f} / "
            f"{r['weights_full_gb']:.1f} |"
        )
    return lines


def tiny_measurements(kind: str, settings, batch: int) -> tuple[list, Comparison]:
    encoder = generative_encoder_class(kind).from_config(f"tiny-{kind}", replace(TINY_VIDEO_CONFIG))
    frames, counts = _frames(encoder, batch)
    with torch.no_grad():
        call = encoder.query(frames, counts)

    def truncated() -> Any:
        with torch.no_grad():
            return encoder.run_to_tap(call)

    def full() -> Any:
        with torch.no_grad():
            return encoder.transformer(**call.kwargs, return_dict=False)

    candidates = {f"{kind}_truncated": (f"{kind}: denoiser to block {encoder.tap}", truncated),
                  f"{kind}_full": (f"{kind}: full denoiser pass ({encoder.num_blocks} blocks + head)", full)}
    measured = measure(candidates, settings.device, settings.warmup, settings.reps)
    depth = (encoder.tap + 1) / encoder.num_blocks
    for m in measured.values():
        m.extra["features_per_s"] = batch / m.median_s
    ratio = ratio_pair(lambda c: measured[f"{kind}_truncated"].median(c) / measured[f"{kind}_full"].median(c), measured)
    comparison = Comparison(f"{kind}: truncated vs full denoiser pass (tiny, measured)", "truncated / full time",
                            ratio[0], f"<= {depth + 0.1:.3f}", cpu_ratio=ratio[1],
                            note=f"tap depth {encoder.tap + 1}/{encoder.num_blocks}")  # fmt: skip
    return list(measured.values()), comparison


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks.harness import parse_settings

    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="images per tiny call (default 4; smoke 2)")
    settings, args = parse_settings(parser, argv)
    batch = args.batch or (2 if settings.smoke else 4)
    rows = [] if settings.smoke else [real_row(*setting) for setting in REAL_SETTINGS]
    models = [] if settings.smoke else model_rows()
    comparisons = [
        Comparison(f"{r['label']}: denoiser to tap vs full (real dims, FLOPs)", "truncated / full FLOPs",
                   r["truncated_tflop"] / r["full_tflop"], f"<= {r['depth'] + 0.1:.3f}")
        for r in rows
    ]  # fmt: skip
    measurements = []
    for kind in VIDEO_KINDS:
        measured, comparison = tiny_measurements(kind, settings, batch)
        measurements += measured
        comparisons.append(comparison)
    notes = [f"Tiny twins: {batch} images of 64 px, 4 latent frames, no gradients; real dimensions: one image, on meta."]
    path = write_results(NAME, "Generative-encoder zoo: the truncated feature pass vs the full first denoising step",
                         settings.out, settings.device, {**settings.to_dict(), "batch": batch},
                         {"real": rows, "models": models}, measurements, comparisons, notes)  # fmt: skip
    if rows:  # the tables as tables (the shared renderer lists notes as bullets)
        sections = ["", "## Real dimensions (per image, FLOPs counted on `meta`)", "", *real_table(rows), "",
                    "## The zoo's 7B models (built on `meta`)", "", *model_table(models), ""]  # fmt: skip
        markdown = path.with_suffix(".md")
        markdown.write_text(markdown.read_text() + "\n".join(sections))
    return {"rows": rows, "measurements": measurements, "comparisons": comparisons}


if __name__ == "__main__":
    main()
