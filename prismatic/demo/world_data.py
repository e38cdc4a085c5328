"""The data of the demo's world-model study: unlabelled falling clips for the world model, a labelled question pool to
draw small training sets from, and validation and held-out question splits. docs/demo.md describes the protocol.

Layout under `root` (image paths in the JSON are relative to `root`; the clip manifest's to `root/world`):

    manifest.json                          arguments + version, written last (a half-written build is never reused)
    world/clips.jsonl, world/images/...    unlabelled 4-frame clips of the falling world (world-model pretraining)
    pool.json                              labelled questions, `pool_per_type` per type, to draw training sets from
    val-{single,future,motion}.json        validation questions (hyperparameters are chosen on these)
    eval-{single,future,motion}.json       held-out questions (reported, never used for any choice)
    labelled/n{N}-s{S}.json                a training set: N questions per type drawn from the pool with seed S

Question types: the static single-image ones (`count`, `top-color`, `left-of`), the single-image questions about the
future (`floor-count`, `red-stop`: the image is the first frame of a falling clip) and the multi-frame ones
(`motion-direction`, `which-moved`, `met`: 2-4 frame clips of an object pushed one cell). Every scene belongs to one
partition by a hash of its description (pool and world clips / validation / held-out), so no scene, and no world clip's
first frame, appears in two of them. Answers are dealt from a balanced deck per type and split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prismatic.demo.dataset import _Progress, _write_json, answer_deck, read_manifest, write_split
from prismatic.demo.future import FUTURE_ANSWERS, FUTURE_TYPES, future_question
from prismatic.demo.physics import CLIP_FRAMES, falling_clip, first_frame, random_layout
from prismatic.demo.questions import ANSWERS, MOTION_TYPES, SINGLE_TYPES, Question, make_question, pick
from prismatic.demo.world import Description, geometry, render_clip
from prismatic.overwatch import initialize_overwatch
from prismatic.util.io import write_text_atomic

overwatch = initialize_overwatch(__name__)

WORLD_DATA_VERSION = 2  # bump whenever the generator's output changes, so older builds are regenerated
MANIFEST = "manifest.json"
BUILDING_MARKER = ".world-demo-building"
IMAGE_SIZE = 64
CLIP_FRAME_COUNTS = (2, 3, 4)  # frames of the multi-frame question clips
Partition = Literal["pool", "val", "eval"]
Group = Literal["single", "future", "motion"]
GROUPS: dict[Group, tuple[str, ...]] = {"single": SINGLE_TYPES, "future": FUTURE_TYPES, "motion": MOTION_TYPES}
ALL_TYPES: tuple[str, ...] = (*SINGLE_TYPES, *FUTURE_TYPES, *MOTION_TYPES)
_PARTITION_INDEX: dict[Partition, int] = {"pool": 0, "val": 1, "eval": 2}
_WORLD_STREAM = 99
MAX_PARTITION_ATTEMPTS = 1000

# What `make demo` builds (scripts/demo.py's defaults).
WORLD_DATA_SIZES: dict[str, int] = {"num_world_clips": 4000, "pool_per_type": 400, "val_per_type": 60,
                                    "eval_per_type": 100}  # fmt: skip


def partition_of(description: Description) -> int:
    """0 (pool and world clips), 1 (validation) or 2 (held out), from a hash of the description (any machine). The
    objects are sorted first: the same objects listed in another order are the same image, and must not land in two
    partitions."""
    data = description.to_json()
    data["objects"] = sorted(json.dumps(o, sort_keys=True) for o in data["objects"])
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()[0] % 3


@dataclass(frozen=True)
class WorldDataPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def world_manifest(self) -> Path:
        return self.root / "world" / "clips.jsonl"

    @property
    def pool(self) -> Path:
        return self.root / "pool.json"

    def split(self, partition: Literal["val", "eval"], group: Group) -> Path:
        return self.root / f"{partition}-{group}.json"

    def labelled(self, per_type: int, seed: int) -> Path:
        return self.root / "labelled" / f"n{per_type}-s{seed}.json"


def _question(question_type: str, answer: str, rng: np.random.Generator) -> Question:
    geo = geometry(IMAGE_SIZE)
    if question_type in FUTURE_TYPES:
        return future_question(question_type, rng, answer, geo)  # type: ignore[arg-type]
    return make_question(question_type, answer, rng, geo, int(pick(rng, CLIP_FRAME_COUNTS)))  # type: ignore[arg-type]


def generate(seed: int, partition: Partition, question_type: str, count: int) -> list[Question]:
    """`count` questions of one type in one partition, answers from a balanced deck; no rendering."""
    stream = [seed, _PARTITION_INDEX[partition], ALL_TYPES.index(question_type)]
    answers = FUTURE_ANSWERS[question_type] if question_type in FUTURE_ANSWERS else ANSWERS[question_type]  # type: ignore[index]
    deck = answer_deck(np.random.default_rng([*stream, 0]), answers, count)
    questions = []
    for index, answer in enumerate(deck):
        rng = np.random.default_rng([*stream, 1, index])
        for _ in range(MAX_PARTITION_ATTEMPTS):
            question = _question(question_type, answer, rng)
            if partition_of(question.scene) == _PARTITION_INDEX[partition]:
                break
        else:
            raise RuntimeError(f"Could not draw a {partition} scene for {question_type}.")
        questions.append(question)
    return questions


def write_world_clips(root: Path, seed: int, count: int, progress: _Progress) -> int:
    """Unlabelled falling clips of the pool partition as PNG frames + a clip manifest (prismatic.world_model)."""
    geo = geometry(IMAGE_SIZE)
    folder = root / "world"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, index = [], 0
    rng = np.random.default_rng([seed, _WORLD_STREAM])
    while len(lines) < count:
        pieces = random_layout(rng)
        index += 1
        if partition_of(first_frame(pieces, geo)) != _PARTITION_INDEX["pool"]:
            continue
        names = [f"images/w{len(lines):06d}_f{t}.png" for t in range(CLIP_FRAMES)]
        for frame, name in zip(render_clip(falling_clip(pieces, geo)), names):
            frame.save(folder / name, format="PNG")
        lines.append(json.dumps({"id": f"w{len(lines):06d}", "frames": names}))
        progress.step()
    write_text_atomic(folder / "clips.jsonl", "\n".join(lines) + "\n")
    return len(lines)


def labelled_subset(pool: Sequence[dict[str, Any]], per_type: int, seed: int) -> list[dict[str, Any]]:
    """`per_type` records of every question type drawn without replacement from the pool, in a shuffled order."""
    rng = np.random.default_rng([seed, 7])
    chosen: list[dict[str, Any]] = []
    for question_type in ALL_TYPES:
        members = [r for r in pool if r["question_type"] == question_type]
        if per_type > len(members):
            raise ValueError(f"{per_type} {question_type} questions asked for, the pool holds {len(members)}; "
                             "build the data with a larger pool_per_type.")  # fmt: skip
        chosen += [members[i] for i in sorted(rng.choice(len(members), size=per_type, replace=False))]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def write_labelled_subset(paths: WorldDataPaths, per_type: int, seed: int) -> Path:
    """The training set `labelled/n{per_type}-s{seed}.json` (written once; identical bytes for identical arguments)."""
    target = paths.labelled(per_type, seed)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_json(target, labelled_subset(json.loads(paths.pool.read_text(encoding="utf-8")), per_type, seed))
    return target


def _prepare(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / MANIFEST).exists() and not (root / BUILDING_MARKER).exists():
            raise FileExistsError(f"{root} is not empty and holds no demo manifest; pass an empty or new directory.")
        for name in (MANIFEST, "pool.json", *(f"{p}-{g}.json" for p in ("val", "eval") for g in GROUPS)):
            (root / name).unlink(missing_ok=True)
        for folder in ("world", "images", "labelled"):
            shutil.rmtree(root / folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / BUILDING_MARKER).touch()


def build_world_dataset(
    root: Path | str,
    seed: int = 0,
    num_world_clips: int = WORLD_DATA_SIZES["num_world_clips"],
    pool_per_type: int = WORLD_DATA_SIZES["pool_per_type"],
    val_per_type: int = WORLD_DATA_SIZES["val_per_type"],
    eval_per_type: int = WORLD_DATA_SIZES["eval_per_type"],
) -> WorldDataPaths:
    """Generate the study's data into `root`, or reuse a build with the same arguments."""
    paths = WorldDataPaths(Path(root).expanduser())
    arguments = {"seed": seed, "num_world_clips": num_world_clips, "pool_per_type": pool_per_type,
                 "val_per_type": val_per_type, "eval_per_type": eval_per_type}  # fmt: skip
    for key, value in arguments.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}.")
    manifest = read_manifest(paths.root)
    if manifest and manifest.get("version") == WORLD_DATA_VERSION and manifest.get("arguments") == arguments:
        overwatch.info(f"Reusing the demo world data in {paths.root} (same arguments as its manifest).")
        return paths
    start = time.perf_counter()
    _prepare(paths.root)
    per_split = {"pool": pool_per_type, "val": val_per_type, "eval": eval_per_type}
    total = num_world_clips + len(ALL_TYPES) * sum(per_split.values())
    overwatch.info(f"Generating the demo world ({total} clips and questions) into {paths.root} ...")
    progress = _Progress(total)
    counts = {"world-clips": write_world_clips(paths.root, seed, num_world_clips, progress)}
    for partition, per_type in per_split.items():
        groups: dict[str, list[Question]] = {g: [] for g in GROUPS}
        for group, types in GROUPS.items():
            for question_type in types:
                groups[group] += generate(seed, partition, question_type, per_type)  # type: ignore[arg-type]
        if partition == "pool":
            pool = [q for g in GROUPS for q in groups[g]]
            _write_json(paths.pool, write_split(pool, paths.root, "pool", progress))  # type: ignore[arg-type]
            counts["pool"] = len(pool)
            continue
        for group, questions in groups.items():
            name = f"{partition}-{group}"
            _write_json(paths.root / f"{name}.json", write_split(questions, paths.root, name, progress))  # type: ignore[arg-type]
            counts[name] = len(questions)
    _write_json(paths.manifest, {"version": WORLD_DATA_VERSION, "arguments": arguments, "counts": counts})
    (paths.root / BUILDING_MARKER).unlink(missing_ok=True)
    overwatch.info(f"Demo world data ready in {paths.root}: {counts} ({time.perf_counter() - start:.1f}s).")
    return paths
