"""Evaluation: exact-match scoring of short answers by question type (`scripts/evaluate.py` runs a model on a split)."""

from prismatic.eval.scoring import (
    ScoreReport,
    TypeScore,
    answers_match,
    format_table,
    normalize_answer,
    question_of,
    reference_answer,
    score,
)

__all__ = [
    "ScoreReport",
    "TypeScore",
    "answers_match",
    "format_table",
    "normalize_answer",
    "question_of",
    "reference_answer",
    "score",
]
