"""Exact-match scoring of short answers on LLaVA-format splits, broken down by question type.

Reusable by any benchmark with one-word or short answers: a record needs an `id`, `conversations` (the first gpt turn
is the reference answer) and optionally a `question_type` (records without one are scored under `UNTYPED`). Answers
are compared after `normalize_answer`, so "Two." matches "2" and "The Red" matches "red". Chance levels come from
the caller, or for the demo's question types from `prismatic.demo.questions.chance_level`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prismatic.demo.questions import QUESTION_TYPES, QuestionType, chance_level
from prismatic.preprocessing.records import load_records

UNTYPED = "all"  # the question type of records that carry none
ARTICLES = frozenset({"a", "an", "the"})
_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
NUMBER_WORDS: dict[str, str] = {word: str(value) for value, word in enumerate(_NUMBERS)}
# Punctuation becomes a space (so "left-of" and "left of" agree); apostrophes vanish ("it's" -> "its").
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation.replace(chr(39), ''))}]")


def normalize_answer(text: str) -> str:
    """Lowercase; drop punctuation and the articles a/an/the; number words become digits; single spaces."""
    text = _PUNCTUATION.sub(" ", text.lower().replace("'", ""))
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def answers_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def reference_answer(record: Mapping[str, Any]) -> str:
    """The first gpt turn of a record."""
    for turn in record.get("conversations", []):
        if turn.get("from") == "gpt":
            return str(turn["value"])
    raise ValueError(f"Record {record.get('id')!r} has no gpt turn, so there is no reference answer to score against.")


def question_of(record: Mapping[str, Any]) -> str:
    """The first human turn without its `<image>` marker: the text to prompt the model with."""
    for turn in record.get("conversations", []):
        if turn.get("from") == "human":
            return str(turn["value"]).replace("<image>", "").strip()
    raise ValueError(f"Record {record.get('id')!r} has no human turn, so there is no question to ask.")


def question_type_of(record: Mapping[str, Any]) -> str:
    return str(record.get("question_type") or UNTYPED)


def default_chance(question_type: str) -> float | None:
    """Chance level of the demo's question types; None (unknown) for anything else."""
    return chance_level(cast(QuestionType, question_type)) if question_type in QUESTION_TYPES else None


@dataclass
class TypeScore:
    question_type: str
    correct: int = 0
    total: int = 0
    chance: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class ScoreReport:
    """Per-type results (in first-seen order), plus the ids that had no prediction (counted as wrong)."""

    by_type: dict[str, TypeScore] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return sum(s.correct for s in self.by_type.values())

    @property
    def total(self) -> int:
        return sum(s.total for s in self.by_type.values())

    @property
    def accuracy(self) -> float:
        """Micro average over all scored records."""
        return self.correct / self.total if self.total else 0.0

    @property
    def mean_type_accuracy(self) -> float:
        """Macro average: every question type weighs the same."""
        return sum(s.accuracy for s in self.by_type.values()) / len(self.by_type) if self.by_type else 0.0

    def accuracies(self) -> dict[str, float]:
        return {name: s.accuracy for name, s in self.by_type.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "mean_type_accuracy": self.mean_type_accuracy,
            "total": self.total,
            "missing": len(self.missing),
            "by_type": {
                name: {"accuracy": s.accuracy, "correct": s.correct, "n": s.total, "chance": s.chance}
                for name, s in self.by_type.items()
            },
        }


def load_split(dataset: Path | str | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records from a LLaVA-format JSON path, or the records themselves."""
    return load_records(Path(dataset)) if isinstance(dataset, str | Path) else list(dataset)


def score(
    predictions: Mapping[str, str],
    dataset: Path | str | Sequence[Mapping[str, Any]],
    chance: Mapping[str, float] | None = None,
) -> ScoreReport:
    """Exact match after normalisation of `predictions[id]` against each record's reference answer, by question type.

    Every record of `dataset` is scored (a record without a prediction counts as wrong and is listed in `missing`);
    pass a subset of the records to score only those. `chance` overrides the chance level per question type.
    """
    report = ScoreReport()
    for record in load_split(dataset):
        record_id = str(record["id"])
        question_type = question_type_of(record)
        if question_type not in report.by_type:
            level = chance[question_type] if chance and question_type in chance else default_chance(question_type)
            report.by_type[question_type] = TypeScore(question_type, chance=level)
        entry = report.by_type[question_type]
        entry.total += 1
        if record_id not in predictions:
            report.missing.append(record_id)
        elif answers_match(predictions[record_id], reference_answer(record)):
            entry.correct += 1
    return report


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_table(report: ScoreReport, title: str | None = None) -> str:
    """A plain-text table: one row per question type (accuracy %, n, chance %), then the overall rows."""
    rows = [(s.question_type, _percent(s.accuracy), str(s.total), _percent(s.chance)) for s in report.by_type.values()]
    footer = [("overall (per sample)", _percent(report.accuracy), str(report.total), "")]
    if len(report.by_type) > 1:
        footer.append(("mean over types", _percent(report.mean_type_accuracy), "", ""))
    header = ("question type", "accuracy %", "n", "chance %")
    widths = [max(len(row[i]) for row in [header, *rows, *footer]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = (cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    lines = ([title] if title else []) + [line(header), rule, *map(line, rows), rule, *map(line, footer)]
    if report.missing:
        lines.append(f"({len(report.missing)} samples had no prediction and count as wrong)")
    return "\n".join(lines)
