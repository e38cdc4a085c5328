"""Identity of each vision stream's encoder: what it reads, and a fingerprint of everything that determines what it
computes.

A cached feature is only valid for the exact computation that produced it. `stream_identities(backbone)` describes the
encoder of every stream (its member of a dual backbone) by
- its configuration, `VisionBackbone.cache_description()`: the timm spec, pixel statistics and resize strategy of a
  static encoder; every `SVDEncoderConfig` option of the generative one plus its scheduler (sigmas) and CLIP
  preprocessing; and the stream's width and length;
- a SHA-256 of its weights and buffers as they will compute, so the checkpoint, the dtype (bf16 under mixed precision)
  and any local change are covered. Hub ids and local paths are left out on purpose: the same weights loaded from a hub
  id or from a local snapshot share one cache;
- the versions of the libraries that compute it (torch, timm, diffusers, transformers) and the cache format.
The fingerprint (16 hex digits of a SHA-256 of that description) names the stream's cache directory, so a changed
encoder never finds the old entries. The pixel keys a stream reads (probed from its member's transform) define its
content key: `content_key` hashes exactly those tensors (name, dtype, shape, bytes), i.e. what the encoder sees,
all K frames of a multi-frame sample included. Streams are keyed separately, so e.g. the SVD features of SigLIP+SVD and
CLIP+SVD runs are shared, and a new resize strategy of the static encoder leaves cached SVD features valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from PIL import Image

from prismatic.models.backbones.vision.base_vision import PixelValues, VisionBackbone

# Bump when the stored layout or the meaning of a feature changes: every old cache then misses.
CACHE_FORMAT_VERSION = 1
_LIBRARIES = ("torch", "timm", "diffusers", "transformers")
_HASH_BLOCK = 1 << 24  # bytes per hashlib update (bounded temporary copies for large tensors)


@dataclass(frozen=True)
class StreamIdentity:
    """One stream's cache identity: the pixel keys its encoder reads and the description of that encoder."""

    stream: str
    pixel_keys: tuple[str, ...]
    description: dict[str, Any] = field(hash=False)

    @property
    def canonical(self) -> str:
        return json.dumps(self.description, sort_keys=True, default=str)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        """The stream's directory inside a cache root."""
        return f"{self.stream}-{self.fingerprint}"


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The raw bytes of a tensor (any dtype, bf16 included) as a uint8 array, on the CPU."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    data = _tensor_bytes(tensor)
    for start in range(0, data.size, _HASH_BLOCK):
        digest.update(data[start : start + _HASH_BLOCK])


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers: names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        _update(digest, name, tensor)
    return digest.hexdigest()


def content_key(pixel_values: PixelValues, pixel_keys: tuple[str, ...]) -> str:
    """128-bit hex key of one sample's pixel tensors under `pixel_keys` (what the stream's encoder sees)."""
    digest = hashlib.sha256()
    for key in sorted(pixel_keys):
        if key not in pixel_values:
            raise KeyError(
                f"The sample has no pixel tensor {key!r} (got {sorted(pixel_values)}); use the model's image transform."
            )
        _update(digest, key, pixel_values[key])
    return digest.hexdigest()[:32]


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def pixel_keys_of(encoder: VisionBackbone) -> tuple[str, ...]:
    """The pixel-dict keys an encoder's own transform produces (so, the tensors it reads)."""
    return tuple(sorted(encoder.get_image_transform()(Image.new("RGB", (16, 16)))))


def stream_identities(backbone: VisionBackbone, streams: list[str] | None = None) -> dict[str, StreamIdentity]:
    """Identity of each stream (all of the backbone's, or `streams`), computed from the encoder as it is now: call it
    after the encoder got the dtype it will compute in."""
    encoders = backbone.stream_encoders()
    specs = {spec.name: spec for spec in backbone.streams}
    names = list(encoders) if streams is None else list(streams)
    unknown = [name for name in names if name not in encoders]
    if unknown:
        raise ValueError(f"Unknown stream(s) {unknown}; {backbone.identifier!r} has streams {list(encoders)}.")
    digests: dict[int, str] = {}  # one digest per member, shared by its streams
    identities = {}
    for name in names:
        encoder = encoders[name]
        if id(encoder) not in digests:
            digests[id(encoder)] = weights_digest(encoder)
        dtypes = sorted({str(p.dtype) for p in encoder.parameters()})
        spec = specs[name]
        description = {
            "format": CACHE_FORMAT_VERSION,
            "stream": {"name": name, "embed_dim": spec.embed_dim, "num_tokens": spec.num_tokens},
            "encoder": encoder.cache_description(),
            "dtypes": dtypes,
            "weights_sha256": digests[id(encoder)],
            "versions": _library_versions(),
        }
        identities[name] = StreamIdentity(name, pixel_keys_of(encoder), description)
    return identities


def describe_difference(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths where two descriptions differ (to tell a user why a cache directory does not apply)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(path)
            else:
                out.extend(describe_difference(saved[key], current[key], path))
        return out
    return [] if json.dumps(saved, default=str) == json.dumps(current, default=str) else [prefix]
