"""Write the demo world as LLaVA-format splits (PNG images + JSON) into a cache directory, once per set of arguments.

Layout under `root` (the image directory of every split is `root` itself; image paths in the JSON are relative to it):

    manifest.json                 arguments + version; written last, so a half-written build is never reused
    train.json                    single-image scenes, then clips (4 single-image and 3 motion question types)
    eval-single.json              held-out scenes, single-image questions
    eval-motion.json              held-out clips, multi-frame questions (`image` is a list of frame paths)
    images/<split>/s000012.png    a scene;  images/<split>/c000003_f1.png  frame 1 of a clip

A record: `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n<question> Answer with one word."},
{"from": "gpt", "value": <answer>}], "question_type", "scene": <description>}`.

Determinism and held-out data: every sample draws from its own numpy stream keyed by (seed, stream, index), so the
same arguments give the same bytes on disk. Train and eval use different streams, and in addition a scene only goes
to the split its content hash assigns it to (even / odd first byte), so no scene description can appear in both
splits, whatever the sizes asked for. Answers are dealt from a shuffled, balanced deck per question type.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prismatic.demo.questions import (
    ANSWERS,
    MOTION_TYPES,
    QUESTION_TYPES,
    SINGLE_TYPES,
    Question,
    QuestionType,
    make_question,
    pick,
    prompt_text,
)
from prismatic.demo.world import Description, Scene, geometry, render
from prismatic.overwatch import initialize_overwatch
from prismatic.util.io import write_text_atomic

overwatch = initialize_overwatch(__name__)

DEMO_VERSION = 2  # bump whenever the generator's output changes, so caches built by older code are regenerated
MANIFEST = "manifest.json"
BUILDING_MARKER = ".demo-building"  # present while a build runs: marks the directory as ours even without a manifest

DemoSplit = Literal["train", "eval-single", "eval-motion"]
DEMO_SPLITS: tuple[DemoSplit, ...] = ("train", "eval-single", "eval-motion")

# Numpy stream ids: one per (split, kind) so that changing one count never changes the samples of another.
_STREAMS = {("train", "scene"): 0, ("train", "clip"): 1, ("eval", "scene"): 2, ("eval", "clip"): 3}
_DECK, _SAMPLE = 0, 1
_PARTITION = {"train": 0, "eval": 1}
MAX_PARTITION_ATTEMPTS = 1000


@dataclass(frozen=True)
class DemoPaths:
    """Where a built demo dataset lives; `image_dir` is the folder the JSON image paths are relative to."""

    root: Path

    @property
    def image_dir(self) -> Path:
        return self.root

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def split(self, name: DemoSplit) -> Path:
        return self.root / f"{name}.json"

    @property
    def train_json(self) -> Path:
        return self.split("train")

    @property
    def eval_single_json(self) -> Path:
        return self.split("eval-single")

    @property
    def eval_motion_json(self) -> Path:
        return self.split("eval-motion")


# The demo world `make demo` trains and scores on (scripts/demo.py's defaults; also the `demo-world` dataset config).
DEMO_WORLD_SIZES: dict[str, int] = {
    "num_train_scenes": 1500,
    "num_train_clips": 1500,
    "num_eval_scenes": 300,
    "num_eval_clips": 450,
}


def default_cache_dir() -> Path:
    """`$DYVA_CACHE/demo` when DYVA_CACHE is set, else `~/.cache/dyva-worldlm/demo`."""
    base = os.environ.get("DYVA_CACHE")
    return Path(base).expanduser() / "demo" if base else Path.home() / ".cache" / "dyva-worldlm" / "demo"


def scene_partition(description: Description) -> int:
    """0 (train) or 1 (eval) from a hash of the description, the same on every machine and Python."""
    canonical = json.dumps(description.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()[0] & 1


def answer_deck(rng: np.random.Generator, answers: Sequence[str], length: int) -> list[str]:
    """`length` answers, each answer appearing floor or ceil of length/len(answers) times, in random order."""
    deck: list[str] = []
    while len(deck) < length:
        deck.extend(answers[i] for i in rng.permutation(len(answers)))
    deck = deck[:length]
    return [deck[i] for i in rng.permutation(length)]


def generate_questions(
    seed: int,
    split: Literal["train", "eval"],
    kind: Literal["scene", "clip"],
    count: int,
    types: Sequence[QuestionType],
    image_size: int,
    clip_frames: Sequence[int],
) -> list[Question]:
    """`count` questions cycling through `types`, answers dealt from balanced decks; no rendering."""
    if count == 0:
        return []
    if not types:
        raise ValueError(f"{count} {kind}s requested for {split} but no {kind} question types are enabled.")
    stream = _STREAMS[(split, kind)]
    deck_rng = np.random.default_rng([seed, stream, _DECK])
    per_type = {t: (count - i + len(types) - 1) // len(types) for i, t in enumerate(types)}
    decks = {t: answer_deck(deck_rng, ANSWERS[t], per_type[t]) for t in types}
    geo = geometry(image_size)
    questions = []
    for index in range(count):
        question_type = types[index % len(types)]
        answer = decks[question_type][index // len(types)]
        rng = np.random.default_rng([seed, stream, _SAMPLE, index])
        num_frames = int(pick(rng, clip_frames))
        for _ in range(MAX_PARTITION_ATTEMPTS):
            question = make_question(question_type, answer, rng, geo, num_frames)
            if scene_partition(question.scene) == _PARTITION[split]:
                break
        else:
            raise RuntimeError(f"Could not draw a {split} scene for {question_type} (the world is too small).")
        questions.append(question)
    return questions


def write_split(
    questions: Sequence[Question], root: Path, split: DemoSplit, progress: _Progress
) -> list[dict[str, Any]]:
    """Render every question's frames as PNGs under images/<split>/ and return the LLaVA records."""
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, question in enumerate(questions):
        frames = render(question.scene)
        single = isinstance(question.scene, Scene)
        prefix = f"s{index:06d}" if single else f"c{index:06d}"
        names = [f"{prefix}.png"] if single else [f"{prefix}_f{t}.png" for t in range(len(frames))]
        for frame, file_name in zip(frames, names):
            frame.save(image_dir / file_name, format="PNG")
        relpaths = [f"images/{split}/{file_name}" for file_name in names]
        records.append(
            {
                "id": f"{split}-{prefix}",
                "image": relpaths[0] if single else relpaths,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{prompt_text(question.text)}"},
                    {"from": "gpt", "value": question.answer},
                ],
                "question_type": question.question_type,
                "scene": question.scene.to_json(),
            }
        )
        progress.step()
    return records


class _Progress:
    """Logs every ~10% of a build (only builds large enough to take a while say anything before the end)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.every = max(500, total // 10)

    def step(self) -> None:
        self.done += 1
        if self.done % self.every == 0 and self.done < self.total:
            elapsed = time.perf_counter() - self.start
            overwatch.info(f"Demo data: {self.done}/{self.total} samples rendered ({elapsed:.1f}s)")


def _write_json(path: Path, data: Any) -> None:
    """One record per line: diffable, compact, and byte-identical for identical data."""
    if isinstance(data, list):
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, sort_keys=False) for r in data) + "\n]\n"
    else:
        text = json.dumps(data, indent=2) + "\n"
    write_text_atomic(path, text)


def _arguments(
    seed: int,
    num_train_scenes: int,
    num_train_clips: int,
    num_eval_scenes: int,
    num_eval_clips: int,
    image_size: int,
    clip_frames: Sequence[int],
    question_types: Sequence[QuestionType],
) -> dict[str, Any]:
    return {
        "seed": seed,
        "num_train_scenes": num_train_scenes,
        "num_train_clips": num_train_clips,
        "num_eval_scenes": num_eval_scenes,
        "num_eval_clips": num_eval_clips,
        "image_size": image_size,
        "clip_frames": list(clip_frames),
        "question_types": list(question_types),
    }


def _validate(arguments: dict[str, Any]) -> None:
    for key in ("seed", "num_train_scenes", "num_train_clips", "num_eval_scenes", "num_eval_clips"):
        value = arguments[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}.")
    geometry(arguments["image_size"])  # raises with advice for an unusable size
    frames = arguments["clip_frames"]
    if not frames or any(not isinstance(f, int) or not 2 <= f <= 4 for f in frames):
        raise ValueError(f"clip_frames must list frame counts between 2 and 4 (e.g. [2, 3, 4]), got {frames!r}.")
    unknown = [t for t in arguments["question_types"] if t not in QUESTION_TYPES]
    if unknown:
        raise ValueError(f"Unknown question types {unknown}; choose from {list(QUESTION_TYPES)}.")


def _prepare_root(root: Path) -> None:
    """Empty a previous build in `root`, refusing to touch a non-empty directory that is not a demo build."""
    if root.exists() and any(root.iterdir()):
        if not (root / MANIFEST).exists() and not (root / BUILDING_MARKER).exists():
            raise FileExistsError(
                f"{root} is not empty and holds no demo manifest; pass an empty or new directory as root (or set "
                "DYVA_CACHE) so that nothing of yours is overwritten."
            )
        (root / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(root / "images", ignore_errors=True)
        for split in DEMO_SPLITS:
            (root / f"{split}.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / BUILDING_MARKER).touch()


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def build_demo_dataset(
    root: Path | str | None = None,
    seed: int = 0,
    num_train_scenes: int = 2000,
    num_train_clips: int = 2000,
    num_eval_scenes: int = 400,
    num_eval_clips: int = 600,
    image_size: int = 64,
    clip_frames: Sequence[int] = (2, 3, 4),
    question_types: Sequence[QuestionType] = QUESTION_TYPES,
    force: bool = False,
) -> DemoPaths:
    """Generate the demo splits into `root` (default `default_cache_dir()`), or reuse them when `root` already holds a
    build with the same arguments and generator version. Returns the paths of the splits."""
    paths = DemoPaths(Path(root).expanduser() if root is not None else default_cache_dir())
    arguments = _arguments(
        seed, num_train_scenes, num_train_clips, num_eval_scenes, num_eval_clips, image_size, clip_frames, question_types
    )
    _validate(arguments)
    manifest = read_manifest(paths.root)
    reusable = bool(manifest) and manifest.get("version") == DEMO_VERSION and manifest.get("arguments") == arguments
    if not force and reusable and all(paths.split(s).is_file() for s in DEMO_SPLITS):
        overwatch.info(f"Reusing the demo data in {paths.root} (same arguments as its manifest).")
        return paths

    start = time.perf_counter()
    _prepare_root(paths.root)
    single = [t for t in question_types if t in SINGLE_TYPES]
    motion = [t for t in question_types if t in MOTION_TYPES]
    total = num_train_scenes + num_train_clips + num_eval_scenes + num_eval_clips
    overwatch.info(f"Generating {total} demo samples ({image_size}px) into {paths.root} ...")
    progress = _Progress(total)

    def questions(split: Literal["train", "eval"], kind: Literal["scene", "clip"], count: int) -> list[Question]:
        return generate_questions(
            seed, split, kind, count, single if kind == "scene" else motion, image_size, clip_frames
        )

    train = questions("train", "scene", num_train_scenes) + questions("train", "clip", num_train_clips)
    splits: dict[DemoSplit, list[Question]] = {
        "train": train,
        "eval-single": questions("eval", "scene", num_eval_scenes),
        "eval-motion": questions("eval", "clip", num_eval_clips),
    }
    counts = {}
    for split, split_questions in splits.items():
        records = write_split(split_questions, paths.root, split, progress)
        _write_json(paths.split(split), records)
        counts[split] = len(records)
    _write_json(paths.manifest, {"version": DEMO_VERSION, "arguments": arguments, "counts": counts})
    (paths.root / BUILDING_MARKER).unlink(missing_ok=True)
    overwatch.info(f"Demo data ready in {paths.root}: {counts} ({time.perf_counter() - start:.1f}s).")
    return paths
