"""Benchmark 3: the steady-state DyVA train step with cached frozen features, against live encoders and against the
projector + LLM step alone.

The cache is built for the batch's images with the framework's own builder (`build_feature_cache`, as
`scripts/cache_features.py` runs it) and read back with `FeatureCache` (memory-mapped); the batch carries every
stream's features (all hits: the steady state after the first epoch), so no encoder runs. Three candidates:
- cached: `SingleDeviceStrategy.train_step` on the batch with cached features;
- live: the same step on the same batch without them (both encoders run, per sample as training does by default);
- floor: projector + splice + LLM + loss + backward + clipping + AdamW on the same features held in memory, written
  out here without the strategy or the vision dispatch. Goal: cached / floor time <= 1.1.

    python -m benchmarks.feature_cache [--smoke]
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks import models, steps
from benchmarks.harness import Comparison, argument_parser, measure, parse_settings, ratio_pair, write_results
from prismatic.models.backbones.vision.base_vision import PixelValues, collate_pixel_values
from prismatic.models.vlms.splice import IGNORE_INDEX, next_token_targets, splice_visual_tokens
from prismatic.training.batching import count_label_tokens, label_targets
from prismatic.training.strategies import SingleDeviceStrategy
from prismatic.util.distributed import DistributedContext

NAME = "feature_cache"
TITLE = "Feature cache: train step with cached features vs live encoders vs projector + LLM alone"

try:  # the cache is a separate component; without it this benchmark reports itself skipped, saying why
    from prismatic.preprocessing.feature_cache import BuildOptions, FeatureCache, build_feature_cache

    CACHE_IMPORT_ERROR: str | None = None
except ImportError as error:  # pragma: no cover - depends on the checkout
    CACHE_IMPORT_ERROR = f"the frozen-feature cache is not available ({error})"


def write_images(directory: Path, count: int, size: int) -> list[tuple[str, ...]]:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(directory / f"{i}.png")
    return [(f"{i}.png",) for i in range(count)]


def cached_pixels(vlm: Any, image_dir: Path, items: list[tuple[str, ...]], root: Path, device: torch.device
                  ) -> tuple[PixelValues, PixelValues, float]:  # fmt: skip
    """(live pixel batch, the same batch carrying cached features, cache build seconds)."""
    ctx = DistributedContext(0, 1, 0, 1, device)
    transform = vlm.vision_backbone.get_image_transform()
    report = build_feature_cache(items, image_dir, transform, vlm.vision_backbone, root, ctx,
                                 options=BuildOptions(num_workers=0))  # fmt: skip
    cache = FeatureCache.open(root, vlm.vision_backbone)
    samples = [transform(Image.open(image_dir / item[0]).convert("RGB")) for item in items]
    with_features = collate_pixel_values([cache.attach(sample) for sample in samples])
    missing = [s.name for s in vlm.vision_backbone.streams if f"features:{s.name}" not in with_features]
    if missing or any(key.endswith(":hit") for key in with_features):
        raise RuntimeError(f"The cache did not serve every row and stream (missing {missing}); cannot benchmark it.")
    return collate_pixel_values(samples), with_features, report.seconds


def floor_step(strategy: SingleDeviceStrategy, batch: dict[str, Any], features: dict[str, torch.Tensor]
               ) -> Callable[[], float]:  # fmt: skip
    """Projector + LLM forward/backward + clipping + AdamW, nothing else (features already in memory)."""
    vlm, device = strategy.vlm, strategy.ctx.device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    has_image, labels = batch["has_image"].to(device), batch["labels"].to(device)
    features = {name: value.to(device).clone() for name, value in features.items()}
    label_tokens = count_label_tokens(labels)

    def step() -> float:
        with strategy.autocast():
            dtype = next(vlm.projector.parameters()).dtype
            visual = vlm.projector({name: value.to(dtype) for name, value in features.items()})
            embeds = vlm.llm_backbone.embed_input_ids(ids)
            spliced = splice_visual_tokens(embeds, mask, visual, has_image, labels, "right")
            targets = label_targets(spliced.labels)  # logits where a label follows, as training computes them
            logits = vlm.llm_backbone(
                spliced.inputs_embeds,
                spliced.attention_mask,
                position_ids=spliced.position_ids,
                logits_mask=next_token_targets(spliced.labels) != IGNORE_INDEX,
            ).logits
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / label_tokens
        loss.backward()
        strategy.clip_grad_norm(steps.MAX_GRAD_NORM)
        strategy.optimizer.step()
        strategy.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    settings, args = parse_settings(parser, argv)
    device, dims = settings.device, models.dims_for(settings.smoke)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    run_settings = {**settings.to_dict(), "dtype": dtype}
    if CACHE_IMPORT_ERROR is not None:
        write_results(NAME, TITLE, settings.out, device, run_settings, dims.to_dict(), [], [],
                      skipped=CACHE_IMPORT_ERROR)  # fmt: skip
        return {"skipped": CACHE_IMPORT_ERROR}

    vlm = models.dyva_vlm(dims)
    strategy = steps.our_strategy(vlm, dims, device, dtype)  # casts the frozen encoders first, as training does
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        items = write_images(Path(tmp) / "images", dims.batch_size, max(dims.image_size, dims.svd_image_size))
        live_pixels, cached, build_s = cached_pixels(vlm, Path(tmp) / "images", items, Path(tmp) / "cache", device)
        batch = steps.our_batch(dims, with_svd=True)
        live_batch, cached_batch = {**batch, "pixel_values": live_pixels}, {**batch, "pixel_values": cached}
        features = {s.name: cached[f"features:{s.name}"] for s in vlm.vision_backbone.streams}
        candidates = {
            "cached": ("train step, every stream from the feature cache", lambda: strategy.train_step([cached_batch])),
            "live": ("train step, live encoders", lambda: strategy.train_step([live_batch])),
            "floor": ("projector + LLM step alone (features in memory)", floor_step(strategy, batch, features)),
        }
        measured = measure(candidates, device, settings.warmup, settings.reps)
    for m in measured.values():
        m.extra["samples_per_s"] = dims.batch_size / m.median_s
    to_floor = ratio_pair(lambda c: measured["cached"].median(c) / measured["floor"].median(c), measured)
    saved = ratio_pair(lambda c: measured["live"].median(c) / measured["cached"].median(c), measured)
    comparisons = [
        Comparison("cached-feature step vs projector + LLM step alone", "cached / floor median step time",
                   to_floor[0], "<= 1.1", cpu_ratio=to_floor[1]),
        Comparison("live encoders vs cached features", "live / cached median step time (speed-up)", saved[0], None,
                   cpu_ratio=saved[1], note="what the cache saves per step after the first epoch"),
    ]  # fmt: skip
    notes = [
        f"DyVA model, batch {dims.batch_size}; cache built once for the batch's images in {build_s:.2f} s "
        "(build_feature_cache, storage dtype auto = the encoders' compute dtype).",
        "Steady state: every row hits for every stream. The data loader's lookup (content hash + mapped read) runs in "
        "loader workers in training; it is outside the timed step here, as it is outside the train step there.",
    ]
    write_results(NAME, TITLE, settings.out, device, run_settings, dims.to_dict(), list(measured.values()),
                  comparisons, notes)  # fmt: skip
    return {"measurements": list(measured.values()), "comparisons": comparisons}


if __name__ == "__main__":
    main()
