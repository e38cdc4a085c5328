"""Video clips for training the SVD world model: the clip manifest, the preflight of bad clips, the dataset, the split.

Manifest: JSON Lines, one clip per line, either `{"frames": ["a/0001.png", ...]}` (image files in playback order) or
`{"video": "clips/x.mp4"}` (decoded with PyAV, an optional dependency), optionally with `"id"` and `"fps"`. Relative
paths are relative to the manifest's folder. A clip's id is its `"id"`, else its video or first frame path as written
(stable when other clips are added: the split hashes it). A clip's index (`#i` in reports) counts non-blank lines from 0.

Sampling: an item is T frames from the start of the clip at a fixed stride s, source frames 0, s, 2s, ..., (T-1)s. A
clip needs at least (T-1)s + 1 frames; frames after the last sampled one are never read. Frame 0 is the conditioning
frame. Each frame is converted to RGB and resized to S x S as the SVD encoder's transform (`SVDImageTransform`) does:
PIL bilinear, aspect ratio not kept. An item is `{"frames": uint8 [T, 3, S, S], "id": str}`.

Bad clips follow `on_bad_clip` as the training data follows `on_bad_sample` (preprocessing/preflight.py): a preflight
finds them up front (malformed line, missing or corrupt frame image or video, too short), each named with its file and
reason in a `ClipReport`; `error` raises a `DatasetError` carrying the report before any item exists, `skip` drops them
and logs them with counts. A clip that goes bad after the preflight is handled as preprocessing/datasets.py handles a
sample: `error` raises naming it, `skip` substitutes the next good clip and counts it.

`split_clips` assigns each clip to train or validation by a hash of its id, so adding clips never moves existing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.preflight import PreflightOptions, PreflightReport
from prismatic.preprocessing.records import BAD_SAMPLE_POLICIES, BadSamplePolicy, DatasetError, Problem, SampleProblem
from prismatic.preprocessing.samples import PIL_READ_ERRORS, ImageCheck, image_problem, load_rgb

overwatch = initialize_overwatch(__name__)

Split = Literal["all", "train", "val"]
SPLITS: tuple[str, ...] = get_args(Split)
INSTALL_VIDEO = 'pip install av (the "video" extra: pip install -e ".[video]")'
MANIFEST_FORMAT = '{"frames": ["a/0001.png", ...]} or {"video": "clips/x.mp4"}, optionally with "id" and "fps"'


class ClipProblemKind(StrEnum):
    """What can be wrong with a clip (values are what reports print; shared kinds read as the image data's do)."""

    MALFORMED_RECORD = "malformed-record"
    MISSING_IMAGE = "missing-image"
    CORRUPT_IMAGE = "corrupt-image"
    MISSING_VIDEO = "missing-video"
    CORRUPT_VIDEO = "corrupt-video"
    TOO_SHORT = "too-short"


@dataclass(frozen=True)
class ClipRecord:
    """One clip of the manifest: frame image paths or a video path (resolved), its id and its frame rate if given."""

    index: int
    clip_id: str
    frames: tuple[Path, ...] = ()
    video: Path | None = None
    fps: float | None = None


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the well-formed clips and one `malformed-record` problem per line that is not a clip."""

    path: Path
    clips: list[ClipRecord]
    problems: list[Problem]


@dataclass(frozen=True)
class Sampling:
    """T frames from the start of a clip at a fixed stride s: source frames 0, s, ..., (T-1)s."""

    num_frames: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {self.num_frames} and {self.stride}.")

    @property
    def indices(self) -> list[int]:
        return [i * self.stride for i in range(self.num_frames)]

    @property
    def span(self) -> int:
        """How many source frames a clip needs: (T-1)s + 1."""
        return (self.num_frames - 1) * self.stride + 1

    def too_short(self, clip: ClipRecord, have: int, file: Path | None = None) -> SampleProblem:
        detail = (f"{have} frame(s), but {self.num_frames} frames at stride {self.stride} need {self.span}; drop the "
                  "clip, or lower num_frames or stride")
        return SampleProblem(_problem(clip, ClipProblemKind.TOO_SHORT, detail, file))


def _problem(clip: ClipRecord, kind: ClipProblemKind, detail: str, file: Path | None = None) -> Problem:
    # `Problem` is the image data's; its kind is a ClipProblemKind here (same `.value` strings, same report lines).
    return Problem(clip.index, clip.clip_id, kind, detail, str(file) if file is not None else None)  # type: ignore[arg-type]


# === Manifest ===
def read_manifest(path: Path) -> Manifest:
    """Parse a clip manifest; a missing or empty file raises a `DatasetError`, a bad line becomes a problem."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Clip manifest {path} does not exist. Write one JSON object per line: {MANIFEST_FORMAT}.")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise DatasetError(f"Clip manifest {path} is not UTF-8 text ({error}); write it as JSON Lines.") from error
    if not lines:
        raise DatasetError(f"Clip manifest {path} holds no clips. Write one JSON object per line: {MANIFEST_FORMAT}.")
    parsed = [parse_clip(line, index, path.parent) for index, line in enumerate(lines)]
    clips = [clip for clip in parsed if isinstance(clip, ClipRecord)]
    return Manifest(path, clips, [problem for problem in parsed if isinstance(problem, Problem)])


def parse_clip(line: str, index: int, root: Path) -> ClipRecord | Problem:
    """One manifest line -> a `ClipRecord` with paths resolved against `root`, or a `malformed-record` problem."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        record, detail = None, f"not valid JSON ({error})"
    else:
        detail = _record_problem(record)
    given_id = record.get("id") if isinstance(record, dict) else None
    if detail is not None:
        clip_id = str(given_id) if isinstance(given_id, str | int) else f"#{index}"
        return Problem(index, clip_id, ClipProblemKind.MALFORMED_RECORD, detail)  # type: ignore[arg-type]
    clip_id = str(given_id if given_id is not None else record.get("video") or record["frames"][0])
    frames = tuple(root / frame for frame in record.get("frames", ()))  # an absolute path replaces root
    video = root / record["video"] if "video" in record else None
    return ClipRecord(index, clip_id, frames, video, float(record["fps"]) if record.get("fps") is not None else None)


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a clip must be a JSON object ({MANIFEST_FORMAT}), got {type(record).__name__}"
    if ("frames" in record) == ("video" in record):
        return "a clip needs exactly one of 'frames' (a list of image paths) or 'video' (a path)"
    frames, video = record.get("frames"), record.get("video")
    if "frames" in record and (not isinstance(frames, list) or not frames
                               or not all(isinstance(f, str) and f.strip() for f in frames)):
        return f"'frames' must be a non-empty list of image paths, got {frames!r}"
    if "video" in record and not (isinstance(video, str) and video.strip()):
        return f"'video' must be a path, got {video!r}"
    clip_id, fps = record.get("id"), record.get("fps")
    if clip_id is not None and (isinstance(clip_id, bool) or not isinstance(clip_id, str | int)):
        return f"'id' must be a string or an integer, got {clip_id!r}"
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0):
        return f"'fps' must be a positive number, got {fps!r}"
    return None


# === Loading ===
def resize_frames(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """RGB PIL frames -> uint8 [T, 3, S, S], resized exactly as `SVDImageTransform` does (PIL bilinear, aspect ratio
    not kept). Mirrored rather than imported: svd_unet imports diffusers, which data-loader workers need not load."""
    size = (image_size, image_size)
    arrays = [np.asarray(image.resize(size, Image.Resampling.BILINEAR)) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_clip_frames(clip: ClipRecord, sampling: Sampling) -> list[Image.Image]:
    """The clip's sampled frames as RGB PIL images; raises `SampleProblem` naming the file and the reason."""
    if clip.video is not None:
        return read_video_frames(clip, sampling)
    if len(clip.frames) < sampling.span:
        raise sampling.too_short(clip, len(clip.frames))
    return [_load_frame(clip, clip.frames[i]) for i in sampling.indices]


def _load_frame(clip: ClipRecord, path: Path) -> Image.Image:
    try:
        return load_rgb(path)
    except FileNotFoundError:
        raise SampleProblem(_problem(clip, ClipProblemKind.MISSING_IMAGE, "no such file", path)) from None
    except PIL_READ_ERRORS as error:
        detail = f"cannot be read as an image ({type(error).__name__}: {error})"
        raise SampleProblem(_problem(clip, ClipProblemKind.CORRUPT_IMAGE, detail, path)) from None


def import_av() -> Any:
    """PyAV, or an ImportError that says how to install it (only video clips need it)."""
    try:
        import av
    except ImportError as error:
        raise ImportError(f"Decoding video clips needs PyAV, which is not installed: {INSTALL_VIDEO}. Or list each "
                          "clip's frames as image files ({\"frames\": [...]}) instead of a video.") from error
    return av


def read_video_frames(clip: ClipRecord, sampling: Sampling) -> list[Image.Image]:
    """Decode the clip's video from the start up to its last sampled frame (presentation order), as RGB images.

    FFmpeg conceals some damage instead of failing, so a damaged video may show up as too short rather than corrupt.
    """
    path = Path(clip.video or "")
    if not path.is_file():
        detail = "no such file" if not path.exists() else "not a regular file"
        raise SampleProblem(_problem(clip, ClipProblemKind.MISSING_VIDEO, detail, path))
    av = import_av()
    wanted, found, decoded = set(sampling.indices), {}, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SampleProblem(_problem(clip, ClipProblemKind.CORRUPT_VIDEO, "holds no video stream", path))
            for decoded, frame in enumerate(container.decode(container.streams.video[0]), start=1):
                if decoded - 1 in wanted:
                    found[decoded - 1] = frame.to_image()  # RGB24
                if decoded >= sampling.span:
                    break  # later frames are never used: do not decode them
    except (av.FFmpegError, OSError, ValueError) as error:
        detail = f"cannot be decoded as a video ({type(error).__name__}: {error})"
        raise SampleProblem(_problem(clip, ClipProblemKind.CORRUPT_VIDEO, detail, path)) from None
    if len(found) < len(wanted):
        raise sampling.too_short(clip, decoded, path)
    return [found[i] for i in sampling.indices]


# === Preflight ===
class ClipReport(PreflightReport):
    """A `PreflightReport` over clips (same table and merge): kinds are `ClipProblemKind`s, and `num_image_files`
    counts every file checked, frame images and videos."""

    def counts(self) -> dict[Any, int]:
        counts = Counter(problem.kind for problem in self.problems)
        return {kind: counts[kind] for kind in ClipProblemKind if counts[kind]}


def clip_problem(clip: ClipRecord, sampling: Sampling, check: ImageCheck = "load") -> Problem | None:
    """What is wrong with one clip, or None; never raises for bad files. Frame clips: the length, then each sampled
    frame with `image_problem` (as the image data is checked; `check` sets how deep). Video clips: decoded up to the
    last sampled frame unless `check` is "none" (container headers' frame counts are often missing or wrong)."""
    try:
        if clip.video is not None:
            if check != "none":
                read_video_frames(clip, sampling)
            return None
        if len(clip.frames) < sampling.span:
            raise sampling.too_short(clip, len(clip.frames))
    except SampleProblem as bad:
        return bad.problem
    for i in sampling.indices:
        found = image_problem(clip.frames[i], check)
        if found is not None:
            return _problem(clip, ClipProblemKind(found[0].value), found[1], clip.frames[i])
    return None


def preflight_clips(manifest: Manifest, clips: Sequence[ClipRecord], sampling: Sampling,
                    options: PreflightOptions | None = None) -> ClipReport:
    """Check this shard's clips (index % num_shards == shard_index) on a thread pool; the manifest's malformed lines
    are always reported. Shards' reports combine with `ClipReport.merge`."""
    options = options or PreflightOptions()
    mine = [clip for clip in clips if clip.index % options.num_shards == options.shard_index]
    problems = [p for p in manifest.problems if p.index % options.num_shards == options.shard_index]
    workers = options.num_threads or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-preflight") as pool:
        results = pool.map(lambda clip: clip_problem(clip, sampling, options.check_images), mine)
        for done, found in enumerate(results, start=1):
            if found is not None:
                problems.append(found)
            if done % options.progress_every == 0:
                overwatch.info(f"clip preflight: {done}/{len(mine)} clips, {len(problems)} bad so far")
    files = sum(1 if clip.video else len([i for i in sampling.indices if i < len(clip.frames)]) for clip in mine)
    problems.sort(key=lambda p: p.index)
    return ClipReport(f"clip manifest {manifest.path}", len(clips) + len(manifest.problems), files, problems)


def apply_clip_policy(report: PreflightReport, on_bad_clip: BadSamplePolicy) -> set[int]:
    """As `preflight.apply_policy`, for `on_bad_clip`: raise a `DatasetError` with the report (`error`), or log every
    bad clip and return the indices to drop (`skip`)."""
    on_bad_clip = check_clip_policy(on_bad_clip)
    if report.ok:
        overwatch.info(report.table())
        return set()
    if on_bad_clip == "error":
        raise DatasetError(
            f"{report.table()}\nFix or remove these clips (the file and the problem are named above), or set "
            "on_bad_clip=skip to train without them (every skipped clip is counted and logged)."
        )
    overwatch.warning(report.table() + "\non_bad_clip=skip: dropping these clips.")
    for problem in report.problems:
        overwatch.info(f"skipped {problem.describe()}")
    return report.bad_indices()


def check_clip_policy(on_bad_clip: str) -> BadSamplePolicy:
    if on_bad_clip not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"Unknown on_bad_clip={on_bad_clip!r}; valid values are {list(BAD_SAMPLE_POLICIES)}.")
    return on_bad_clip  # type: ignore[return-value]


# === Held-out split ===
def validation_bucket(clip_id: str, salt: str = "") -> float:
    """A clip's position in [0, 1), from a hash of its id alone (stable across runs, machines and manifest edits)."""
    digest = hashlib.sha256(f"{salt}\0{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_clips(clips: Sequence[ClipRecord], val_fraction: float,
                salt: str = "") -> tuple[list[ClipRecord], list[ClipRecord]]:
    """(train, validation): a clip is held out when its bucket is below `val_fraction`. Adding or removing clips never
    moves another clip; raising `val_fraction` only moves clips from train to validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    held_out = [validation_bucket(clip.clip_id, salt) < val_fraction for clip in clips]
    return [c for c, out in zip(clips, held_out) if not out], [c for c, out in zip(clips, held_out) if out]


# === Dataset ===
class ClipItem(TypedDict):
    frames: torch.Tensor  # uint8 [T, 3, S, S]; frames[0] is the conditioning frame
    id: str


class ClipDataset(Dataset[ClipItem]):
    """The clips of a manifest (or of one split of it) as uint8 frame stacks; the preflight runs on construction.

    `report`: a `ClipReport` of these clips made beforehand (e.g. shards' reports merged), used instead of running the
    preflight. `sampled_fps(i)` is clip i's frame rate after the stride (None when the manifest gives no "fps").
    """

    def __init__(self, manifest: Path, *, num_frames: int, image_size: int, stride: int = 1,
                 on_bad_clip: BadSamplePolicy = "error", split: Split = "all", val_fraction: float = 0.0,
                 split_salt: str = "", preflight: PreflightOptions | None = None,
                 report: PreflightReport | None = None) -> None:
        super().__init__()
        self.on_bad_clip = check_clip_policy(on_bad_clip)
        self.sampling = Sampling(num_frames, stride)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}.")
        if split not in SPLITS:
            raise ValueError(f"Unknown split={split!r}; valid values are {list(SPLITS)}.")
        if split == "val" and val_fraction == 0.0:
            raise ValueError("split='val' holds no clips with val_fraction=0; set val_fraction (e.g. 0.05).")
        self.image_size = image_size
        self.manifest = read_manifest(Path(manifest))
        clips = self.manifest.clips
        if split != "all":
            clips = split_clips(clips, val_fraction, split_salt)[0 if split == "train" else 1]
        self.preflight_report = report or preflight_clips(self.manifest, clips, self.sampling, preflight)
        dropped = apply_clip_policy(self.preflight_report, self.on_bad_clip)
        self.clips = [clip for clip in clips if clip.index not in dropped]
        if not self.clips:
            what = "raise val_fraction, the share of clips held out by id hash" if split == "val" else "see the report"
            raise DatasetError(f"No usable clips left in {manifest} (split {split!r}): {what}.")
        self.substitutions: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.clips)

    def sampled_fps(self, index: int) -> float | None:
        fps = self.clips[index].fps
        return None if fps is None else fps / self.sampling.stride

    def __getitem__(self, index: int) -> ClipItem:
        try:
            return self._load(index)
        except SampleProblem as bad:
            if self.on_bad_clip == "error":
                raise DatasetError(
                    f"Bad clip in {self.manifest.path}: {bad.problem.describe()}. Fix or remove it, or set "
                    "on_bad_clip=skip to skip bad clips (each one is counted and logged)."
                ) from None
            return self._substitute(index, bad.problem)

    def _load(self, index: int) -> ClipItem:
        clip = self.clips[index]
        frames = resize_frames(load_clip_frames(clip, self.sampling), self.image_size)
        return {"frames": frames, "id": clip.clip_id}

    def _substitute(self, index: int, problem: Problem) -> ClipItem:
        """The next good clip in order (deterministic, for resumed runs); each bad clip met is counted and logged."""
        for step in range(1, len(self) + 1):
            candidate = (index + step) % len(self)
            self.substitutions[str(problem.kind)] += 1
            overwatch.warning_all(
                f"Skipping bad {problem.describe()} in {self.manifest.path} (on_bad_clip=skip); using clip "
                f"#{self.clips[candidate].index} instead. Skipped so far: {sum(self.substitutions.values())}."
            )
            try:
                return self._load(candidate)
            except SampleProblem as bad:
                problem = bad.problem
        raise DatasetError(f"Every clip of {self.manifest.path} failed to load; last problem: {problem.describe()}.")
