"""LLaVA-format records: reading the JSON, validating one record, and naming what is wrong with a bad one.

A record is `{"id": ..., "image": path | [paths] (absent for text-only rows), "conversations": [{"from": "human" |
"gpt", "value": str}, ...]}`. Image paths are relative to the dataset's image directory. The preflight pass and the
datasets share these checks so that a sample is judged the same way before training and mid-epoch.

Records are kept packed (`PackedRecords`: one byte buffer plus offsets) rather than as a list of dicts: for the 665k
mix that is a few hundred MB instead of several GB of Python objects, and forked data-loader workers do not touch
(and so do not copy) millions of reference counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

BadSamplePolicy = Literal["error", "skip"]
BAD_SAMPLE_POLICIES: tuple[str, ...] = get_args(BadSamplePolicy)

# Which conversation shape a stage expects: captions (align) or free multi-turn conversations (finetune).
RecordKind = Literal["caption", "conversation"]

HUMAN, GPT = "human", "gpt"


class ProblemKind(StrEnum):
    """Everything the preflight and the datasets can find wrong with a sample (values are what reports print)."""

    MISSING_IMAGE = "missing-image"
    CORRUPT_IMAGE = "corrupt-image"
    MALFORMED_RECORD = "malformed-record"
    MALFORMED_CONVERSATION = "malformed-conversation"
    EMPTY_CONVERSATION = "empty-conversation"
    TOO_LONG = "too-long"
    TOO_MANY_IMAGES = "too-many-images"


class DatasetError(ValueError):
    """Bad training data under `on_bad_sample=error` (or data that cannot be read at all).

    Takes a single message so that PyTorch's data-loader workers can re-raise it in the main process unchanged.
    """


@dataclass(frozen=True)
class Problem:
    """One bad sample: its position in the JSON, its id, the file concerned (if any), what is wrong and details."""

    index: int
    sample_id: str
    kind: ProblemKind
    detail: str
    file: str | None = None

    def describe(self) -> str:
        where = f", file {self.file}" if self.file else ""
        return f"sample {self.sample_id!r} (#{self.index}{where}): {self.kind.value}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.sample_id, "kind": self.kind.value, "detail": self.detail,
                "file": self.file}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Problem:
        return cls(int(data["index"]), str(data["id"]), ProblemKind(data["kind"]), str(data["detail"]), data["file"])


class SampleProblem(Exception):
    """Raised inside a dataset when one sample cannot be used; the dataset applies the bad-sample policy to it."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


def check_policy(on_bad_sample: str) -> BadSamplePolicy:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"Unknown on_bad_sample={on_bad_sample!r}; valid values are {list(BAD_SAMPLE_POLICIES)}.")
    return on_bad_sample  # type: ignore[return-value]


# === Reading ===
def load_records(json_path: Path) -> list[Any]:
    """Read a LLaVA-format JSON list (or JSON Lines, one record per line) with errors that say what to do."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DatasetError(
            f"Dataset file {json_path} does not exist. Lay the data out with `python scripts/preprocess.py --help`, "
            "or point the dataset config at your file (e.g. --dataset.type llava-custom "
            "--dataset.finetune_stage_components '[my.json, my_images/]')."
        )
    try:
        with json_path.open("r", encoding="utf-8") as handle:
            if json_path.suffix == ".jsonl":
                records = [json.loads(line) for line in handle if line.strip()]
            else:
                records = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"Dataset file {json_path} is not valid JSON ({error}); fix or re-download it.") from error
    if not isinstance(records, list):
        raise DatasetError(f"Dataset file {json_path} must hold a JSON list of samples, got a {type(records).__name__}.")
    if not records:
        raise DatasetError(f"Dataset file {json_path} holds no samples.")
    return records


def sample_id(record: Any, index: int) -> str:
    """The record's `id` when it has one, else its position (so every report line names a findable sample)."""
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return f"#{index}"


def image_relpaths(record: dict[str, Any]) -> list[str]:
    """The record's image paths (empty for a text-only row). Raises ValueError for a malformed `image` field."""
    image = record.get("image")
    if image is None:
        return []
    paths = [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ValueError(f"'image' must be a path or a non-empty list of paths, got {image!r}")
    return paths


def conversation_problem(record: Any, kind: RecordKind) -> tuple[ProblemKind, str] | None:
    """Structural checks of one record (no files, no tokenizer); returns (problem kind, detail) or None if fine."""
    if not isinstance(record, dict):
        return ProblemKind.MALFORMED_RECORD, f"a sample must be a JSON object, got {type(record).__name__}"
    try:
        paths = image_relpaths(record)
    except ValueError as error:
        return ProblemKind.MALFORMED_RECORD, str(error)
    turns = record.get("conversations")
    if turns is None:
        return ProblemKind.MALFORMED_CONVERSATION, "no 'conversations' field"
    if not isinstance(turns, list):
        return ProblemKind.MALFORMED_CONVERSATION, f"'conversations' must be a list, got {type(turns).__name__}"
    if not turns:
        return ProblemKind.EMPTY_CONVERSATION, "'conversations' is empty"
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            return ProblemKind.MALFORMED_CONVERSATION, f"turn {position} needs a 'from' and a string 'value'"
        expected = HUMAN if position % 2 == 0 else GPT
        if turn["from"] != expected:
            return (
                ProblemKind.MALFORMED_CONVERSATION,
                f"turn {position} is from {turn['from']!r}, expected {expected!r} (turns alternate human/gpt, "
                "human first)",
            )
    if len(turns) % 2:
        return ProblemKind.MALFORMED_CONVERSATION, "the conversation ends with a human turn (nothing to learn)"
    if not any(turn["value"].replace("<image>", "").strip() for turn in turns[1::2]):
        return ProblemKind.EMPTY_CONVERSATION, "every gpt answer is empty"
    if kind == "caption":
        if len(turns) != 2:
            return ProblemKind.MALFORMED_CONVERSATION, f"a caption sample has 2 turns, got {len(turns)}"
        if not paths:
            return ProblemKind.MALFORMED_RECORD, "a caption sample needs an 'image'"
    return None


def caption_conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    """The align-stage conversation: the image alone, then the caption. The instruction of LLaVA's 558k file (a
    generic "describe the image" line) is dropped, as prismatic-vlms and LLaVA's "plain" template do, so the
    projector learns from image + caption only; the loss covers the caption (and its end marker) only."""
    caption = record["conversations"][1]["value"].replace("<image>", "").strip()
    return [{"from": HUMAN, "value": "<image>"}, {"from": GPT, "value": caption}]


# === Packed storage ===
class PackedRecords(Sequence[dict[str, Any]]):
    """An immutable sequence of JSON records stored as one UTF-8 buffer plus offsets; decoding one costs ~10 us."""

    def __init__(self, records: Iterable[Any]) -> None:
        encoded = [json.dumps(record, ensure_ascii=False).encode("utf-8") for record in records]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(chunk) for chunk in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} out of range for {len(self)} records")
        index %= len(self)
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return json.loads(self._buffer[start:end].tobytes().decode("utf-8"))
