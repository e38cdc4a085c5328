"""The frozen-feature cache: bit-identical training with and without it, misses (never stale reads) when the encoder
changes, resume after a hard kill, a 2-process build equal to a 1-process build, memory-mapped reads, cached and live
rows mixed in one batch, and a feature pass that never runs the U-Net's mid or up blocks.

Tiny DyVA (`dyva_siglip+tiny`, 2 SVD frame slots, fp32, CPU) on a generated LLaVA-format dataset of distinct noise
images (with duplicates, a two-image row and text-only rows); runs go through `scripts/cache_features.py` and
`scripts/pretrain.py` as a user launches them.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.conf.models import get_model_config
from prismatic.models.backbones.vision.base_vision import VisionBackbone, collate_pixel_values
from prismatic.models.backbones.vision.svd import NOISE_CONVENTION, SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.materialize import get_vision_backbone_and_transform
from prismatic.models.vlms.prismatic import freeze_vision_backbone
from prismatic.preprocessing.feature_cache import (
    BuildOptions,
    FeatureCache,
    StreamIndex,
    build_feature_cache,
    image_groups,
    to_storage,
)
from prismatic.preprocessing.feature_cache.identity import describe_difference, stream_identities
from prismatic.util.distributed import DistributedContext

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TORCHRUN = Path(sys.executable).parent / "torchrun"
CPU = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
TRAIN_FLAGS = (
    "--model.type dyva_siglip+tiny --num_frames 2 --model.finetune_max_steps 6 --model.finetune_global_batch_size 4 "
    "--model.finetune_per_device_batch_size 2 --num_workers 0 --save_interval 100"
)


# === Data and launch helpers ===
def write_dataset(root: Path) -> Path:
    """16 records: 8 distinct noise images, 2 records reusing images, 1 two-image record, 5 text-only rows."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(8):
        h, w = (40 + 4 * i, 56 - 2 * i)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    records = []
    for i, image in enumerate([*range(8), 0, 1, [2, 3]]):
        answer = f"Answer {i}." + " More words here." * (i % 3)
        turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": answer}]
        names = [f"{j}.png" for j in image] if isinstance(image, list) else f"{image}.png"
        records.append({"id": f"img-{i}", "image": names, "conversations": turns})
    for i in range(5):
        turns = [{"from": "human", "value": f"What is {i} plus {i}?"}, {"from": "gpt", "value": f"{2 * i}."}]
        records.append({"id": f"text-{i}", "conversations": turns})
    (root / "finetune.json").write_text(json.dumps(records))
    return root


def common_args(data_root: Path) -> list[str]:
    return [*shlex.split(TRAIN_FLAGS), "--dataset.type", "llava-custom", "--dataset.dataset_root_dir", str(data_root),
            "--dataset.finetune_stage_components", "[finetune.json, images]"]  # fmt: skip


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def build_cache(data_root: Path, cache_dir: Path, *extra: str, nproc: int | None = None):
    script = [str(SCRIPTS / "cache_features.py"), *common_args(data_root), "--feature_cache_dir", str(cache_dir)]
    flags = ["--chunk_size", "3", "--log_every_s", "0", *extra]
    if nproc is None:
        return run([sys.executable, *script, *flags])
    return run([str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), *script, *flags])


def train(data_root: Path, runs: Path, run_id: str, *extra: str) -> tuple[list[float], str]:
    run_dir = runs / run_id
    args = [*common_args(data_root), "--run_root_dir", str(runs), "--run_id", run_id, *extra]
    result = run([sys.executable, str(SCRIPTS / "pretrain.py"), *args])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows], result.stderr


def lookup_counts(log: str) -> list[tuple[str, int, int]]:
    return [(s, int(h), int(m)) for s, h, m in re.findall(r"(\w+): (\d+) hits / (\d+) misses", log)]


def cache_contents(root: Path) -> dict[tuple[str, str], bytes]:
    """Every entry of a cache as raw bytes, keyed by (stream directory, content key), read without the reader."""
    contents = {}
    for index_file in root.glob("*/chunk-*.json"):
        chunk = json.loads(index_file.read_text())
        data = (index_file.parent / chunk["file"]).read_bytes()
        for key, offset, shape, dtype, *_ in chunk["entries"]:
            size = int(np.prod(shape)) * {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
            contents[(index_file.parent.name, key)] = data[offset : offset + size]
    return contents


# === In-process helpers ===
def tiny_backbone(num_frames: int = 2, resize: str = "resize-naive", **model_overrides) -> tuple[VisionBackbone, object]:
    """The tiny DyVA vision backbone exactly as pretrain.py / cache_features.py build and freeze it."""
    cfg = get_model_config("dyva_siglip+tiny")
    for name, value in model_overrides.items():
        setattr(cfg, name, value)
    backbone, transform = get_vision_backbone_and_transform(
        cfg.vision_backbone_id, resize, num_frames=num_frames, svd_config=cfg.svd_encoder_config(num_frames)
    )
    freeze_vision_backbone(backbone, "finetune")
    return backbone.train(), transform


def samples(data_root: Path, transform) -> list[dict[str, torch.Tensor]]:
    images = [Image.open(data_root / "images" / f"{i}.png").convert("RGB") for i in range(4)]
    return [transform(images[0]), transform(images[1]), transform([images[2], images[3]])]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny kernels on a shared 2-core machine: a second intra-op thread only adds contention (30x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_cache(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 1-process build (with a loader worker)."""
    cache_dir = tmp_path_factory.mktemp("cache") / "reference"
    build_cache(data_root, cache_dir, "--num_workers", "1")
    return cache_dir


@pytest.fixture(scope="module")
def live_losses(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return train(data_root, tmp_path_factory.mktemp("runs"), "live")[0]


# === 1. Training with the cache is bit-identical to training without it ===
@pytest.mark.slow
def test_losses_are_bit_identical_with_a_full_cache(data_root: Path, reference_cache: Path, live_losses, tmp_path):
    # Loader workers read the cache here (its mappings are reopened per process); 6 steps span two epochs.
    losses, log = train(data_root, tmp_path, "cached", "--feature_cache_dir", str(reference_cache), "--num_workers", "1")
    assert losses == live_losses  # bit for bit
    counts = lookup_counts(log)
    assert counts and all(misses == 0 for _, _, misses in counts) and any(hits > 0 for _, hits, _ in counts), log
    # 9 distinct image items (two images used twice, one item of two frames) + the dummy row's image. The static
    # stream sees frame 1 only, so the two-frame item shares its SigLIP entry with the single image of that frame.
    entries = {d.name.split("-")[0]: len(StreamIndex.load(d)) for d in reference_cache.iterdir()}
    assert entries == {"vit": 9, "svd": 10}


@pytest.mark.slow
def test_losses_are_bit_identical_with_a_partial_cache(data_root: Path, reference_cache: Path, live_losses, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(reference_cache, partial)
    for index_file in sorted(partial.glob("svd-*/chunk-*.json"))[::2]:
        index_file.unlink()  # those SVD entries now miss: their rows are encoded live next to cached ones
    losses, log = train(data_root, tmp_path, "partial", "--feature_cache_dir", str(partial))
    assert losses == live_losses
    final = dict((s, (h, m)) for s, h, m in lookup_counts(log.split("lookups in this process")[-1]))
    assert final["vit"][1] == 0 and final["svd"][0] > 0 and final["svd"][1] > 0, log


# === 2. A changed encoder never reads stale features ===
def test_encoder_config_changes_miss_and_never_read_stale_features(data_root: Path, tmp_path: Path) -> None:
    backbone, transform = tiny_backbone()
    items = image_groups(json.loads((data_root / "finetune.json").read_text()))
    options = BuildOptions(num_workers=0)
    build_feature_cache(items, data_root / "images", transform, backbone, tmp_path, CPU, options=options)
    base = samples(data_root, transform)

    def hits(backbone: VisionBackbone, transform) -> dict[str, int]:
        cache = FeatureCache.open(tmp_path, backbone)
        found = [cache.lookup(sample) for sample in samples(data_root, transform)]
        return {stream: sum(stream in f for f in found) for stream in ("vit", "svd")}

    assert hits(backbone, transform) == {"vit": 3, "svd": 3}
    cache = FeatureCache.open(tmp_path, backbone)
    live = [backbone.forward_streams(collate_pixel_values([s]), ["vit", "svd"]) for s in base]
    for sample, expected in zip(base, live):
        cached = cache.lookup(sample)
        assert all(torch.equal(cached[k], expected[k][0]) for k in ("vit", "svd"))

    # Each change moves the changed stream to another fingerprint (an empty directory): misses, never old entries.
    assert hits(*tiny_backbone(svd_sigma_index=1)) == {"vit": 3, "svd": 0}
    assert hits(*tiny_backbone(num_frames=3)) == {"vit": 3, "svd": 0}
    assert hits(*tiny_backbone(svd_feature_noise=False)) == {"vit": 3, "svd": 0}
    assert hits(*tiny_backbone(resize="letterbox")) == {"vit": 0, "svd": 3}  # SVD pixels and encoder unchanged
    bf16, bf16_transform = tiny_backbone()
    assert hits(bf16.to(torch.bfloat16), bf16_transform) == {"vit": 0, "svd": 0}
    edited, edited_transform = tiny_backbone()
    with torch.no_grad():
        next(edited.generative.unet.parameters()).add_(1e-3)  # other weights, same config
    assert hits(edited, edited_transform) == {"vit": 3, "svd": 0}
    assert len(list(tmp_path.iterdir())) == 2  # lookups never create directories


def test_svd_fingerprint_records_the_weight_variant_and_the_noise_convention() -> None:
    """The variant names which weight files were read (fp16 files hold other values), and the noise convention which
    draws made the features (2: image 1's all-slot fill has its own draw when K > 1): either changes the fingerprint,
    so old entries are never reused. Where the weights come from stays out (the weights digest covers them)."""
    components = build_tiny_svd_components(seed=0, image_size=32)

    def identity(**options):
        config = SVDEncoderConfig(model_id=None, image_size=32, **options)
        return stream_identities(SVDGenerativeEncoder("svd-tiny", config, components))["svd"]

    plain, fp16 = identity(), identity(variant="fp16")
    assert plain.fingerprint != fp16.fingerprint
    assert describe_difference(plain.description, fp16.description) == ["encoder.config.variant"]
    assert plain.description["encoder"]["noise_convention"] == NOISE_CONVENTION == 2
    assert "model_id" not in plain.description["encoder"]["config"]


# === 3. Resume after a hard kill; 2 processes = 1 process ===
KILLING_BUILD = """
import os, signal, sys, draccus, importlib.util
from prismatic.preprocessing import feature_cache
spec = importlib.util.spec_from_file_location("cache_features", sys.argv[1])
script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script)
add, calls = feature_cache.ChunkWriter.add, [0]
def add_then_die(self, key, features):
    calls[0] += 1
    if calls[0] == 8:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a hard crash mid-chunk
    add(self, key, features)
feature_cache.ChunkWriter.add = add_then_die
script.cache_features(draccus.parse(script.CacheFeaturesConfig, args=sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_killed_build_resumes_and_equals_an_uninterrupted_one(data_root: Path, reference_cache: Path, tmp_path):
    cache_dir = tmp_path / "resumed"
    args = [*common_args(data_root), "--feature_cache_dir", str(cache_dir), "--chunk_size", "3", "--num_workers", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLING_BUILD, str(SCRIPTS / "cache_features.py"), *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    orphans = [p for p in cache_dir.glob("*/chunk-*.bin") if not p.with_suffix(".json").exists()]
    assert orphans and len(cache_contents(cache_dir)) == 6  # 7 adds done: 2 committed chunks of 3, one partial

    result = build_cache(data_root, cache_dir, "--num_workers", "0")
    assert "already cached 3" in result.stderr and "Removed 1 orphan" in result.stderr, result.stderr[-3000:]
    assert not [p for p in cache_dir.glob("*/chunk-*.bin") if not p.with_suffix(".json").exists()]
    assert cache_contents(cache_dir) == cache_contents(reference_cache)


@pytest.mark.slow
def test_two_process_build_equals_one_process_build(data_root: Path, reference_cache: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "two"
    build_cache(data_root, cache_dir, "--num_workers", "0", nproc=2)
    assert {p.name.split("-r")[1][:4] for p in cache_dir.glob("*/chunk-*.json")} == {"0000", "0001"}  # both wrote
    assert cache_contents(cache_dir) == cache_contents(reference_cache)


# === 4. Reads are memory-mapped views, not file reads ===
def test_reads_are_views_of_memory_mapped_chunks(data_root: Path, tmp_path: Path) -> None:
    backbone, transform = tiny_backbone()
    items = image_groups(json.loads((data_root / "finetune.json").read_text()))
    build_feature_cache(items, data_root / "images", transform, backbone, tmp_path, CPU,
                        options=BuildOptions(num_workers=0, chunk_size=100))  # fmt: skip
    cache = FeatureCache.open(tmp_path, backbone)
    features = cache.lookup(samples(data_root, transform)[1])["svd"]
    (data_file,) = (tmp_path / cache.identities["svd"].dirname).glob("chunk-*.bin")
    mappings = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if str(data_file) in line]
    ranges = [tuple(int(x, 16) for x in fields[0].split("-")) for fields in mappings]
    assert any(start <= features.data_ptr() < end for start, end in ranges)  # inside the file's mapping
    assert features.untyped_storage().nbytes() == data_file.stat().st_size  # a view of the whole mapped file
    assert len(mappings) == 1 and mappings[0][1].startswith("r") and mappings[0][1][3] == "p"  # private mapping


# === 5. In the model: cached rows skip the encoders, mixed batches equal live ones bitwise ===
def test_cached_and_live_rows_mix_bitwise_and_cached_rows_skip_the_encoders(data_root, tmp_path, monkeypatch):
    from prismatic.assembly import build_vlm

    vlm = build_vlm("dyva_siglip+tiny")
    vlm.freeze_backbones("finetune")
    backbone, transform = vlm.vision_backbone, vlm.vision_backbone.get_image_transform()
    build_feature_cache([("0.png",), ("2.png", "3.png")], data_root / "images", transform, backbone, tmp_path, CPU,
                        options=BuildOptions(num_workers=0))  # fmt: skip
    cache = FeatureCache.open(tmp_path, backbone)
    batch = samples(data_root, transform)  # rows 0 and 2 are cached, row 1 is not
    live = vlm.encode_images(collate_pixel_values(batch))

    encoded_rows = []
    for member in (backbone.static, backbone.generative):
        forward = member.forward
        monkeypatch.setattr(member, "forward", lambda pv, f=forward: encoded_rows.append(1) or f(pv))
    mixed = collate_pixel_values([cache.attach(sample) for sample in batch])
    assert mixed["features:svd:hit"].tolist() == [True, False, True]
    assert torch.equal(vlm.encode_images(mixed), live)
    assert len(encoded_rows) == 2  # row 1 only, through each member once

    for member in (backbone.static, backbone.generative):
        monkeypatch.setattr(member, "forward", lambda pv: pytest.fail("a fully cached batch ran an encoder"))
    full = collate_pixel_values([cache.attach(batch[0]), cache.attach(batch[2])])
    assert torch.equal(vlm.encode_images(full), live[[0, 2]])


# === 6. The builder's feature pass never runs mid or up blocks ===
@pytest.mark.parametrize("mode", ["release", "paper"])
def test_cache_builder_feature_pass_runs_no_mid_or_up_block(data_root: Path, tmp_path: Path, mode: str) -> None:
    backbone, transform = tiny_backbone(svd_mode=mode)
    unet = backbone.generative.unet
    calls = {"down": 0, "mid": 0, "up": 0}
    counter = lambda name: lambda module, args: calls.__setitem__(name, calls[name] + 1)  # noqa: E731
    unet.down_blocks[-1].register_forward_pre_hook(counter("down"))
    if mode == "release":
        assert unet.mid_block is None and unet.up_blocks is None  # dropped at build: cannot run
    else:
        unet.mid_block.register_forward_pre_hook(counter("mid"))
        unet.up_blocks[0].register_forward_pre_hook(counter("up"))
    build_feature_cache([("0.png",)], data_root / "images", transform, backbone, tmp_path, CPU,
                        streams=["svd"], options=BuildOptions(num_workers=0))  # fmt: skip
    items = 2  # the image and the dummy row's image
    # Paper mode: the first (full) pass needs the whole U-Net for its Euler step; the feature pass stops pre-mid.
    assert calls == {"down": items, "mid": 0, "up": 0} if mode == "release" else {"down": 2 * items, "mid": items,
                                                                                   "up": items}  # fmt: skip


# === 7. Storage dtypes and refusals ===
def test_storage_dtypes_and_refusals(data_root: Path, tmp_path: Path) -> None:
    assert to_storage(torch.tensor([1.0, 3.0]), torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float16's range"):
        to_storage(torch.tensor([1.0, 1e5]), torch.float16)
    backbone, transform = tiny_backbone()
    build_feature_cache([("1.png",)], data_root / "images", transform, backbone, tmp_path, CPU,
                        options=BuildOptions(num_workers=0, storage_dtype="bfloat16"))  # fmt: skip
    cached = FeatureCache.open(tmp_path, backbone).lookup(samples(data_root, transform)[1])
    live = backbone.forward_streams(collate_pixel_values([samples(data_root, transform)[1]]), ["vit", "svd"])
    assert all(cached[k].dtype == torch.bfloat16 and torch.equal(cached[k], live[k][0].bfloat16()) for k in live)
    backbone.generative.unet.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen encoders only"):
        FeatureCache.open(tmp_path, backbone)
