"""From a collated pixel dict to the vision streams the projector consumes: cached features where the batch carries
them (`"features:<stream>"`, attached by the frozen-feature cache), the encoders for everything else.

Frozen encoders encode one sample at a time by default (`EncoderBatching` "per-sample"). Kernels round differently
for different batch sizes (measured on CPU in fp32: up to ~4e-6 on the tiny SVD stream between a sample encoded
alone and inside a batch of 8), so a batched encoder's output for a sample depends on its batch mates. Encoded alone,
a sample's features are a pure function of its pixels and the encoder, whatever batch it lands in; the cache builder
encodes the same way (`encode_rows`), so cached features are bitwise what live encoding gives, training with and
without the cache is bit-identical (CPU, fp32), and cached and live rows can share a batch (only the missing rows run
the encoder). On CPU, per-sample encoding measured as fast as batched or faster; on a GPU small per-sample kernels may
cost some encoder throughput, which "batched" (one encoder call per micro-batch) buys back at the price of cache
exactness (cached and live features then agree up to float rounding only).

Frozen encoders also run outside autocast: the strategy already stores a frozen backbone in its compute dtype (bf16
under mixed precision), so its numerics depend on the weights' dtype alone, not on the parallelism strategy (FSDP
never autocasts, single-device and DDP do), which is what lets a cache key on that dtype. Trainable encoders keep the
caller's autocast and gradient mode, always encode the batch at once, and refuse cached features (stale by design).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from prismatic.models.backbones.vision.base_vision import (
    PixelValues,
    VisionBackbone,
    feature_hit_key,
    feature_key,
    is_feature_key,
)

EncoderBatching = Literal["per-sample", "batched"]
ENCODER_BATCHINGS: tuple[str, ...] = get_args(EncoderBatching)


def _batch_size(pixels: PixelValues) -> int:
    if not pixels:
        raise ValueError("Got no pixel tensors to encode; build pixel values with the backbone's get_image_transform().")
    return int(next(iter(pixels.values())).shape[0])


def frozen_encoder_context(backbone: VisionBackbone) -> contextlib.ExitStack:
    """No gradients and no autocast: a frozen encoder computes in its weights' dtype (see the module docstring)."""
    parameter = next(backbone.parameters(), None)
    device_type = parameter.device.type if parameter is not None else "cpu"
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def encode_rows(
    backbone: VisionBackbone, pixel_values: PixelValues, streams: Sequence[str], per_sample: bool
) -> dict[str, torch.Tensor]:
    """Encode `streams` for every row of a pixel dict (feature keys are ignored), one row at a time if `per_sample`.
    The cache builder calls this too, so cached and live features come from the same computation."""
    pixels = {key: value for key, value in pixel_values.items() if not is_feature_key(key)}
    if not per_sample:
        return backbone.forward_streams(pixels, streams)
    rows = [
        backbone.forward_streams({key: value[i : i + 1] for key, value in pixels.items()}, streams)
        for i in range(_batch_size(pixels))
    ]
    return {name: torch.cat([row[name] for row in rows]) for name in streams}


def _rows_to_encode(pixel_values: PixelValues, stream: str, batch_size: int) -> tuple[int, ...]:
    """Rows whose `stream` must be encoded: all without cached features, else the rows the hit mask leaves out."""
    if feature_key(stream) not in pixel_values:
        return tuple(range(batch_size))
    hit = pixel_values.get(feature_hit_key(stream))
    if hit is None:
        return ()
    return tuple(int(i) for i in torch.logical_not(hit).nonzero().flatten().tolist())


def _merge(cached: torch.Tensor, rows: tuple[int, ...], encoded: torch.Tensor) -> torch.Tensor:
    merged = cached.to(torch.promote_types(cached.dtype, encoded.dtype)).clone()
    merged[list(rows)] = encoded.to(merged.dtype)
    return merged


def vision_features(
    backbone: VisionBackbone, pixel_values: PixelValues, frozen: bool, per_sample: bool
) -> dict[str, torch.Tensor]:
    """Every stream of `backbone` for the batch: cached rows as given, the other rows encoded (grouped so that each
    set of rows runs the encoder once per member)."""
    streams = [spec.name for spec in backbone.streams]
    cached = {name: pixel_values[feature_key(name)] for name in streams if feature_key(name) in pixel_values}
    if cached and not frozen:
        raise ValueError(
            f"The batch carries cached features for {sorted(cached)}, but the vision backbone trains in this stage, so "
            "they would be stale after the first step; train without --feature_cache_dir (or freeze the encoders)."
        )
    pixels = {key: value for key, value in pixel_values.items() if not is_feature_key(key)}
    batch_size = int(next(iter(cached.values())).shape[0]) if cached and not pixels else _batch_size(pixels)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in streams:
        rows = _rows_to_encode(pixel_values, name, batch_size)
        if rows:
            groups.setdefault(rows, []).append(name)

    encoded: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}
    context = frozen_encoder_context(backbone) if frozen else contextlib.nullcontext()
    with context:
        for rows, names in groups.items():
            subset = pixels if len(rows) == batch_size else {k: v[list(rows)] for k, v in pixels.items()}
            for name, value in encode_rows(backbone, subset, names, per_sample).items():
                encoded[name] = (rows, value)

    out: dict[str, torch.Tensor] = {}
    for name in streams:
        if name not in cached:
            out[name] = encoded[name][1]
        elif name in encoded:
            out[name] = _merge(cached[name], *encoded[name])
        else:
            out[name] = cached[name]
    return out
