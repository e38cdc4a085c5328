"""The frozen-feature cache: frozen encoders' outputs computed once per distinct image and read back during training.

- `identity`: what a cached feature is valid for (each stream's encoder fingerprint and the content key of a sample);
- `store`: the on-disk format, its chunk writer and the memory-mapped reader `FeatureCache`;
- `builder`: `build_feature_cache`, which encodes a dataset's distinct images into a cache (`scripts/cache_features.py`).

Training opens a cache with `FeatureCache.open(root, backbone)` (`scripts/pretrain.py --feature_cache_dir`).
"""

from prismatic.preprocessing.feature_cache.builder import BuildOptions, BuildReport, build_feature_cache, image_groups
from prismatic.preprocessing.feature_cache.identity import (
    CACHE_FORMAT_VERSION,
    StreamIdentity,
    content_key,
    stream_identities,
)
from prismatic.preprocessing.feature_cache.store import (
    STORAGE_DTYPE_NAMES,
    ChunkWriter,
    FeatureCache,
    StorageDtype,
    StreamIndex,
    to_storage,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "STORAGE_DTYPE_NAMES",
    "BuildOptions",
    "BuildReport",
    "ChunkWriter",
    "FeatureCache",
    "StorageDtype",
    "StreamIdentity",
    "StreamIndex",
    "build_feature_cache",
    "content_key",
    "image_groups",
    "stream_identities",
    "to_storage",
]
