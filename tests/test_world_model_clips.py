"""The world model's clip data (prismatic/world_model/clips.py) on clips written here in real formats: frame lists of
PNG/JPEG files of mixed sizes and modes, an mp4 (when PyAV is installed), the stride rule, the SVD resize, every bad
clip under `error` and `skip`, and the id-hash train/validation split."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prismatic.preprocessing.records import DatasetError
from prismatic.world_model.clips import (
    ClipDataset,
    ClipProblemKind,
    ClipRecord,
    Sampling,
    import_av,
    read_manifest,
    resize_frames,
    split_clips,
)


def colour(index: int) -> tuple[int, int, int]:
    """Frame `index`'s flat colour: the index is readable from any channel after resizing and lossy coding."""
    return (20 * index + 10, 200 - 20 * index, 128)


def save_frame(path: Path, index: int, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour(index))
    if mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(path)


def frame_clip(root: Path, name: str, count: int) -> list[str]:
    """`count` frames of mixed formats, sizes and modes; frame i has `colour(i)`."""
    kinds = [(".png", (24, 16), "RGB"), (".png", (20, 20), "RGBA"), (".png", (32, 18), "P"), (".jpg", (30, 22), "RGB")]
    paths = []
    for i in range(count):
        suffix, size, mode = kinds[i % len(kinds)]
        save_frame(root / name / f"{i:04d}{suffix}", i, size, mode)
        paths.append(f"{name}/{i:04d}{suffix}")
    return paths


def write_manifest(root: Path, clips: list, name: str = "clips.jsonl") -> Path:
    path = root / name
    lines = [line if isinstance(line, str) else json.dumps(line) for line in clips]
    path.write_text("\n".join(lines) + "\n")
    return path


def frame_index(frames: torch.Tensor) -> list[int]:
    """Recover each frame's index from its mean red value (inverse of `colour`)."""
    return [round((float(frame[0].float().mean()) - 10) / 20) for frame in frames]


def write_video(path: Path, count: int, size: int = 32) -> None:
    av = import_av()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(count):
            pixels = np.full((size, size, 3), colour(i), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


# === Frame-list clips ===
def test_frame_clip_item_is_uint8_frames_resized_to_square(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [{"id": "walk", "frames": frame_clip(tmp_path, "walk", 4), "fps": 8}])
    dataset = ClipDataset(manifest, num_frames=4, image_size=16)
    item = dataset[0]
    assert item["id"] == "walk"
    assert item["frames"].shape == (4, 3, 16, 16) and item["frames"].dtype == torch.uint8
    # RGBA, palette and JPEG frames are all RGB now and keep their colour (JPEG up to coding loss).
    for i, frame in enumerate(item["frames"]):
        assert torch.allclose(frame.float().mean(dim=(1, 2)), torch.tensor(colour(i), dtype=torch.float), atol=3)
    assert dataset.sampled_fps(0) == 8.0


def test_stride_two_samples_frames_zero_two_four(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [{"frames": frame_clip(tmp_path, "a", 7)}])
    dataset = ClipDataset(manifest, num_frames=3, stride=2, image_size=8)
    assert frame_index(dataset[0]["frames"]) == [0, 2, 4]
    assert Sampling(3, 2).indices == [0, 2, 4] and Sampling(3, 2).span == 5
    assert dataset[0]["id"] == "a/0000.png"  # no "id": the first frame's path as written
    assert dataset.sampled_fps(0) is None


def test_resize_matches_the_svd_encoder_transform() -> None:
    from prismatic.models.backbones.vision.svd_unet import SVDImageTransform

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(30, 40), (17, 9)]]
    expected = SVDImageTransform(image_size=12, max_images=2)(images)["svd"]
    assert torch.equal(resize_frames(images, 12), expected)


def test_paths_resolve_against_the_manifest_folder_unless_absolute(tmp_path: Path) -> None:
    relative = frame_clip(tmp_path / "data", "rel", 2)
    absolute = [str(tmp_path / "data" / p) for p in frame_clip(tmp_path / "data", "abs", 2)]
    manifest = write_manifest(tmp_path / "data", [{"id": 1, "frames": relative}, {"id": "b", "frames": absolute}])
    clips = read_manifest(manifest).clips
    assert [c.clip_id for c in clips] == ["1", "b"]
    assert clips[0].frames[0] == tmp_path / "data" / "rel" / "0000.png"
    assert clips[1].frames[1] == Path(absolute[1])


def test_batches_collate_with_the_default_collate(tmp_path: Path) -> None:
    clips = [{"id": f"c{i}", "frames": frame_clip(tmp_path, f"c{i}", 3)} for i in range(3)]
    dataset = ClipDataset(write_manifest(tmp_path, clips), num_frames=2, image_size=8)
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["frames"].shape == (3, 2, 3, 8, 8) and batch["id"] == ["c0", "c1", "c2"]


# === Video clips ===
def test_video_clip_decodes_the_written_frames(tmp_path: Path) -> None:
    write_video(tmp_path / "clips" / "x.mp4", count=9)
    manifest = write_manifest(tmp_path, [{"video": "clips/x.mp4"}])
    dataset = ClipDataset(manifest, num_frames=4, stride=2, image_size=32)
    item = dataset[0]
    assert item["id"] == "clips/x.mp4" and item["frames"].shape == (4, 3, 32, 32)
    expected = torch.tensor([colour(i) for i in (0, 2, 4, 6)], dtype=torch.float)
    assert torch.allclose(item["frames"].float().mean(dim=(2, 3)), expected, atol=4)  # yuv420p / crf 10 loss


def test_video_without_pyav_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "x.mp4").write_bytes(b"not checked: PyAV is missing")
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ImportError, match="pip install av"):
        ClipDataset(write_manifest(tmp_path, [{"video": "x.mp4"}]), num_frames=2, image_size=8)


def test_corrupt_and_short_videos_are_bad_clips(tmp_path: Path) -> None:
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01 this is no video" * 50)
    write_video(tmp_path / "short.mp4", count=3)
    manifest = write_manifest(tmp_path, [{"video": "garbage.mp4"}, {"video": "short.mp4"}, {"video": "none.mp4"}])
    with pytest.raises(DatasetError) as caught:
        ClipDataset(manifest, num_frames=2, stride=3, image_size=8)
    message = str(caught.value)
    for expected in ("garbage.mp4", "corrupt-video", "short.mp4", "too-short", "3 frame(s)", "none.mp4",
                     "missing-video"):
        assert expected in message


# === Bad clips ===
def bad_manifest(root: Path) -> Path:
    """Two good clips and one of each bad kind (the missing video needs no PyAV: it is missing before decoding)."""
    missing = frame_clip(root, "missing", 3)
    (root / missing[1]).unlink()
    truncated = frame_clip(root, "truncated", 3)
    png = root / truncated[2]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # cut inside the image data
    return write_manifest(root, [
        {"id": "good-1", "frames": frame_clip(root, "good1", 3)},
        {"id": "missing-frame", "frames": missing},
        {"id": "truncated-png", "frames": truncated},
        {"id": "short", "frames": frame_clip(root, "short", 2)},
        {"id": "no-video", "video": "clips/none.mp4"},
        '{"frames": "not a list"}',
        "{broken json",
        {"id": "good-2", "frames": frame_clip(root, "good2", 4)},
    ])


def test_error_policy_stops_before_any_item_naming_each_bad_clip(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        ClipDataset(bad_manifest(tmp_path), num_frames=3, image_size=8)
    message = str(caught.value)
    for expected in ("missing-frame", "missing/0001.png", "missing-image", "truncated-png", "truncated/0002.png",
                     "corrupt-image", "short", "too-short", "no-video", "clips/none.mp4", "missing-video",
                     "malformed-record", "on_bad_clip=skip"):
        assert expected in message
    assert "good-1" not in message and "good-2" not in message


def test_skip_policy_drops_bad_clips_and_counts_them(tmp_path: Path) -> None:
    dataset = ClipDataset(bad_manifest(tmp_path), num_frames=3, image_size=8, on_bad_clip="skip")
    assert [dataset[i]["id"] for i in range(len(dataset))] == ["good-1", "good-2"]
    report = dataset.preflight_report
    assert report.num_samples == 8 and len(report.problems) == 6
    assert report.counts() == {ClipProblemKind.MALFORMED_RECORD: 2, ClipProblemKind.MISSING_IMAGE: 1,
                               ClipProblemKind.CORRUPT_IMAGE: 1, ClipProblemKind.MISSING_VIDEO: 1,
                               ClipProblemKind.TOO_SHORT: 1}
    assert "6 bad sample(s)" in report.table() and "too-short" in report.table()


def test_clip_going_bad_after_the_preflight_follows_the_policy(tmp_path: Path) -> None:
    clips = [{"id": f"c{i}", "frames": frame_clip(tmp_path, f"c{i}", 2)} for i in range(3)]
    manifest = write_manifest(tmp_path, clips)
    strict = ClipDataset(manifest, num_frames=2, image_size=8)
    lenient = ClipDataset(manifest, num_frames=2, image_size=8, on_bad_clip="skip")
    (tmp_path / "c1" / "0001.png").unlink()
    with pytest.raises(DatasetError, match=r"c1.*c1/0001.png.*missing-image"):
        strict[1]
    assert lenient[1]["id"] == "c2" and lenient.substitutions == {"missing-image": 1}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_frames": 0}, "num_frames and stride must be >= 1"),
    ({"stride": 0}, "num_frames and stride must be >= 1"),
    ({"on_bad_clip": "ignore"}, "on_bad_clip='ignore'"),
    ({"split": "val"}, "set val_fraction"),
    ({"split": "test"}, "Unknown split"),
    ({"split": "train", "val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
])
def test_bad_arguments_say_what_to_change(tmp_path: Path, kwargs: dict, match: str) -> None:
    manifest = write_manifest(tmp_path, [{"frames": frame_clip(tmp_path, "a", 2)}])
    with pytest.raises(ValueError, match=match):
        ClipDataset(manifest, **{"num_frames": 2, "image_size": 8, **kwargs})


def test_missing_or_empty_manifest_explains_the_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'does not exist.*"frames"'):
        ClipDataset(tmp_path / "nope.jsonl", num_frames=2, image_size=8)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="holds no clips"):
        ClipDataset(tmp_path / "empty.jsonl", num_frames=2, image_size=8)


# === Split ===
def test_split_is_deterministic_and_stable_when_clips_are_added(tmp_path: Path) -> None:
    clips = [ClipRecord(i, f"clip-{i}", frames=(Path("f.png"),)) for i in range(400)]
    train, val = split_clips(clips, 0.2)
    assert (train, val) == split_clips(clips, 0.2)
    assert 40 <= len(val) <= 120 and len(train) + len(val) == 400
    more = [ClipRecord(i, f"new-{i}", frames=(Path("f.png"),)) for i in range(100)]
    train2, val2 = split_clips(more[:50] + clips + more[50:], 0.2)  # new clips before and after, indices shuffled
    held_out = {c.clip_id for c in val}
    assert held_out == {c.clip_id for c in val2} - {c.clip_id for c in more}
    assert {c.clip_id for c in train} <= {c.clip_id for c in train2}
    assert {c.clip_id for c in split_clips(clips, 0.3)[1]} >= held_out  # a larger fraction only adds to validation
    assert split_clips(clips, 0.2, salt="other")[1] != val


def test_dataset_splits_partition_the_manifest(tmp_path: Path) -> None:
    frames = frame_clip(tmp_path, "shared", 2)
    manifest = write_manifest(tmp_path, [{"id": f"c{i}", "frames": frames} for i in range(30)])
    options = {"num_frames": 2, "image_size": 8, "val_fraction": 0.3}
    train = ClipDataset(manifest, split="train", **options)
    val = ClipDataset(manifest, split="val", **options)
    ids = [c.clip_id for c in train.clips] + [c.clip_id for c in val.clips]
    assert sorted(ids) == sorted(f"c{i}" for i in range(30)) and len(val) > 0 and len(train) > len(val)
