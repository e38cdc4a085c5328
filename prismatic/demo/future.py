"""Single-image questions about the future of the demo world: shown one still frame, say how it will come to rest.

The law (`physics.py`): everything falls one cell per frame until it rests on the floor or on another object, except
purple objects, which stay where they are. Two question types, each with one fixed wording and a one-word answer:

| type | question | answers |
| --- | --- | --- |
| `floor-count` | How many shapes end on the floor? | one..four |
| `red-stop` | Where does the red shape stop? | top / second / third / bottom (the row it rests in) |

The image is the first frame of a falling clip; the answer is a fact about its last frame, which the model never sees.
A model that has learned the law (from video, or from enough of these labels) can answer; the first frame alone, read
without the law, cannot: the scenes are drawn by rejection from random layouts, so the answer depends on the
interplay of colours (purple stays), columns and stacking, not on one visible cue. Answers are balanced per type (the
dataset builder deals them from a deck; the generators draw a layout until its future has the dealt answer) and each
generator re-derives its answer from the scene with the law.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from prismatic.demo import questions
from prismatic.demo.physics import FIXED_COLOR, Piece, first_frame, random_layout, resting_cells
from prismatic.demo.questions import COUNT_WORDS, Question
from prismatic.demo.world import GRID, Geometry, Scene

FutureQuestionType = Literal["floor-count", "red-stop"]
FUTURE_TYPES: tuple[FutureQuestionType, ...] = get_args(FutureQuestionType)
ROW_WORDS: tuple[str, ...] = ("top", "second", "third", "bottom")  # the row a shape rests in, from the top
FUTURE_ANSWERS: dict[FutureQuestionType, tuple[str, ...]] = {"floor-count": COUNT_WORDS, "red-stop": ROW_WORDS}
FUTURE_TEXT: dict[FutureQuestionType, str] = {
    "floor-count": "How many shapes end on the floor?",
    "red-stop": "Where does the red shape stop?",
}
MAX_DRAWS = 100_000  # layouts tried per question; the rarest answer (four on the floor) needs ~50 on average


def pieces_of(scene: Scene, geo: Geometry) -> list[Piece]:
    """The layout a still frame shows (objects on cell centres)."""
    return [Piece(o.color, o.shape, geo.cell_of(o.x, o.y)) for o in scene.objects]


def floor_count(pieces: list[Piece]) -> str:
    """How many objects rest in the bottom row once everything has fallen (as a word)."""
    resting = sum(1 for _, row in resting_cells(pieces) if row == GRID - 1)
    return COUNT_WORDS[resting - 1] if resting else "none"


def red_stop(pieces: list[Piece]) -> str:
    """The row (as a word) the red object rests in."""
    index = next(i for i, p in enumerate(pieces) if p.color == "red")
    return ROW_WORDS[resting_cells(pieces)[index][1]]


FUTURE_FACTS: dict[FutureQuestionType, Callable[[list[Piece]], str]] = {"floor-count": floor_count, "red-stop": red_stop}


def future_answer(question_type: FutureQuestionType, scene: Scene, geo: Geometry) -> str:
    """The answer the law gives for `scene` (what the generators check and the tests recompute)."""
    return FUTURE_FACTS[question_type](pieces_of(scene, geo))


def _eligible(question_type: FutureQuestionType, pieces: list[Piece]) -> bool:
    colors = {p.color for p in pieces}
    if question_type == "red-stop":
        return "red" in colors
    return any(p.color != FIXED_COLOR for p in pieces)  # something falls


def future_question(question_type: FutureQuestionType, rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    """A first frame whose future gives `answer`: random 2-4 object layouts until one does."""
    if answer not in FUTURE_ANSWERS[question_type]:
        raise ValueError(f"{answer!r} is not an answer of {question_type!r}: {list(FUTURE_ANSWERS[question_type])}.")
    for _ in range(MAX_DRAWS):
        pieces = random_layout(rng, min_objects=2, max_objects=4)
        if _eligible(question_type, pieces) and FUTURE_FACTS[question_type](pieces) == answer:
            scene = first_frame(pieces, geo)
            recomputed = future_answer(question_type, scene, geo)
            if recomputed != answer:
                raise RuntimeError(f"Generator bug: {question_type} {answer!r} but the scene says {recomputed!r}.")
            return Question(question_type, FUTURE_TEXT[question_type], answer, scene)  # type: ignore[arg-type]
    raise RuntimeError(f"No layout gives {question_type} = {answer!r} in {MAX_DRAWS} draws.")


def chance_level(question_type: str) -> float:
    """Accuracy of a uniform guess among a question type's answers, for every demo question type (future ones here,
    the others from `questions.chance_level`)."""
    if question_type in FUTURE_ANSWERS:
        return 1.0 / len(FUTURE_ANSWERS[question_type])  # type: ignore[index]
    return questions.chance_level(question_type)  # type: ignore[arg-type]
