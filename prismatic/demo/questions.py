"""Questions about the demo world: their types, closed answer sets, chance levels, and scenes drawn to fit an answer.

Every question type has ONE fixed wording and a one-word answer from a small closed set (`ANSWERS`):

| type | question | answers |
| --- | --- | --- |
| `count` | How many shapes are there? | one..four |
| `top-color` | What colour is the top object? | the five colours |
| `left-of` | Is the top object left of the bottom object? | yes / no |
| `motion-direction` | Which way does the moving object go? | left / right / up / down |
| `which-moved` | What colour is the object that moves? | the five colours (three objects shown) |
| `met` | Do the two objects meet? | yes / no |

Fixed wordings are a choice for the CPU demo: each type then asks one visual query whatever the sample, which a
2-layer LLM trained from scratch learns in a few thousand steps. With templated variants ("the top / bottom /
leftmost / rightmost object") it first has to route the variable word into that query, and in our measurements
stayed near chance on such questions for as long as the demo can train (see docs/demo-random-encoder.md).

The dataset builder fixes the answer first (a balanced deck per type) and asks a generator here for a random scene
with that answer, so answers are uniform per type. Each generator re-derives the answer from the finished description
with the answer functions below and refuses a mismatch, so a stored answer is always what the description says.

Chance level (`chance_level`) is the accuracy of a guess that uses only what a single frame shows. For the motion
types the clip is drawn so that its first frame says nothing about the answer (the layout is fixed before the answer
is applied), so a model that sees only the first frame stays at this level:
- `motion-direction`: the mover starts in one of the four central cells, from which all four moves fit, and
  distractors avoid the cells of all four possible moves.
- `which-moved`: three objects placed alike (each must have a free neighbouring cell); the mover is picked afterwards,
  uniformly, so chance is 1/3 (a guess among the three colours on show).
- `met`: the two objects start two cells apart on a row or column; whether the mover heads for the other one (and
  ends in the neighbouring cell: "meeting") or goes another way is a coin flip made after the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast, get_args

import numpy as np

from prismatic.demo.world import (
    COLORS,
    DIRECTIONS,
    GRID,
    SHAPES,
    Cell,
    Clip,
    ClipObject,
    Color,
    Description,
    Direction,
    Geometry,
    Scene,
    Shape,
    WorldObject,
    board_cells,
    neighbour,
    on_board,
    straight_path,
)

SingleQuestionType = Literal["count", "top-color", "left-of"]
MotionQuestionType = Literal["motion-direction", "which-moved", "met"]
QuestionType = Literal[SingleQuestionType, MotionQuestionType]

SINGLE_TYPES: tuple[SingleQuestionType, ...] = get_args(SingleQuestionType)
MOTION_TYPES: tuple[MotionQuestionType, ...] = get_args(MotionQuestionType)
QUESTION_TYPES: tuple[QuestionType, ...] = SINGLE_TYPES + MOTION_TYPES

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
YES_NO: tuple[str, ...] = ("yes", "no")
WHICH_MOVED_OBJECTS = 3  # objects in a `which-moved` clip

ANSWERS: dict[QuestionType, tuple[str, ...]] = {
    "count": COUNT_WORDS,
    "top-color": COLORS,
    "left-of": YES_NO,
    "motion-direction": DIRECTIONS,
    "which-moved": COLORS,
    "met": YES_NO,
}
QUESTION_TEXT: dict[QuestionType, str] = {
    "count": "How many shapes are there?",
    "top-color": "What colour is the top object?",
    "left-of": "Is the top object left of the bottom object?",
    "motion-direction": "Which way does the moving object go?",
    "which-moved": "What colour is the object that moves?",
    "met": "Do the two objects meet?",
}

PROMPT_SUFFIX = "Answer with one word."
MAX_LAYOUT_ATTEMPTS = 10_000
CENTRAL_CELLS: tuple[Cell, ...] = tuple((c, r) for r in range(1, GRID - 1) for c in range(1, GRID - 1))


def chance_level(question_type: QuestionType) -> float:
    """Accuracy of a uniform guess among the answers one frame leaves open (answers are balanced per type)."""
    if question_type not in ANSWERS:
        raise ValueError(f"Unknown question type {question_type!r}; valid types are {list(QUESTION_TYPES)}.")
    if question_type == "which-moved":
        return 1.0 / WHICH_MOVED_OBJECTS  # the three colours on show
    return 1.0 / len(ANSWERS[question_type])


def is_motion_type(question_type: QuestionType) -> bool:
    return question_type in MOTION_TYPES


@dataclass(frozen=True)
class Question:
    question_type: QuestionType
    text: str
    answer: str
    scene: Description


# === Answers from a description (the generators' own check) ===
def top_and_bottom(scene: Scene) -> tuple[WorldObject, WorldObject] | None:
    """The top and the bottom object, or None unless each is alone in its row (strictly above / below the rest)."""
    ranked = sorted(scene.objects, key=lambda o: o.y)
    if len(ranked) < 2 or ranked[0].y == ranked[1].y or ranked[-1].y == ranked[-2].y:
        return None
    return ranked[0], ranked[-1]


def top_object(scene: Scene) -> WorldObject | None:
    """The object strictly above every other one (None if the top row holds several, or there is one object)."""
    ranked = sorted(scene.objects, key=lambda o: o.y)
    return ranked[0] if len(ranked) > 1 and ranked[0].y < ranked[1].y else None


def direction_of(obj: ClipObject) -> Direction | None:
    """The direction a straight-moving object goes (None when it stands still)."""
    (x0, y0), (x1, y1) = obj.path[0], obj.path[-1]
    if (x0, y0) == (x1, y1):
        return None
    step = (int(np.sign(x1 - x0)), int(np.sign(y1 - y0)))
    matches = [d for d in DIRECTIONS if neighbour((0, 0), d) == step]
    if not matches:
        raise ValueError(f"Object moves diagonally from {(x0, y0)} to {(x1, y1)}; demo motion is axis-aligned.")
    return matches[0]


def objects_meet(clip: Clip, geo: Geometry) -> bool:
    """True when the two objects end side by side: centres one cell apart along a row or a column."""
    first, second = clip.objects
    (ax, ay), (bx, by) = first.path[-1], second.path[-1]
    return abs(ax - bx) + abs(ay - by) == geo.cell and (ax == bx or ay == by)


# === Sampling helpers ===
T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def distinct_colors(rng: np.random.Generator, count: int, first: Color | None = None) -> list[Color]:
    """`count` different colours in random order, starting with `first` when given."""
    rest = [c for c in COLORS if c != first]
    chosen = [rest[i] for i in rng.permutation(len(rest))]
    return [first, *chosen][:count] if first is not None else chosen[:count]


def random_shapes(rng: np.random.Generator, count: int) -> list[Shape]:
    return [pick(rng, SHAPES) for _ in range(count)]


def random_cells(rng: np.random.Generator, count: int, allowed: Sequence[Cell] | None = None) -> list[Cell]:
    """`count` distinct cells drawn uniformly from `allowed` (default: the whole board)."""
    cells = list(board_cells() if allowed is None else allowed)
    if count > len(cells):
        raise RuntimeError(f"Cannot place {count} objects on {len(cells)} free cells.")
    return [cells[i] for i in rng.choice(len(cells), size=count, replace=False)]


def scene_objects(geo: Geometry, cells: Sequence[Cell], colors: Sequence[Color],
                  shapes: Sequence[Shape]) -> tuple[WorldObject, ...]:  # fmt: skip
    return tuple(WorldObject(c, s, *geo.centre(cell), geo.object_size) for cell, c, s in zip(cells, colors, shapes))


def _check(question: Question, recomputed: str) -> Question:
    if recomputed != question.answer:
        raise RuntimeError(
            f"Generator bug: {question.question_type} answer {question.answer!r} but the scene says "
            f"{recomputed!r}: {question.scene}"
        )
    return question


def _question(question_type: QuestionType, answer: str, scene: Description) -> Question:
    return Question(question_type, QUESTION_TEXT[question_type], answer, scene)


# === Single-image questions ===
def count_question(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    count = COUNT_WORDS.index(answer) + 1
    cells = random_cells(rng, count)
    scene = Scene(geo.image_size, scene_objects(geo, cells, distinct_colors(rng, count), random_shapes(rng, count)))
    return _check(_question("count", answer, scene), COUNT_WORDS[len(scene.objects) - 1])


def _layout_with_unique_top(rng: np.random.Generator, need_bottom: bool) -> list[Cell]:
    """2-4 cells whose top row holds exactly one of them (and, if asked, whose bottom row too, in another column)."""
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        cells = sorted(random_cells(rng, int(rng.integers(2, 5))), key=lambda cell: cell[1])
        unique_top = cells[0][1] < cells[1][1]
        unique_bottom = cells[-1][1] > cells[-2][1] and cells[0][0] != cells[-1][0]
        if unique_top and (unique_bottom or not need_bottom):
            return [cells[i] for i in rng.permutation(len(cells))]
    raise RuntimeError("No layout with a unique top object found; the board is too small.")


def top_color(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    cells = _layout_with_unique_top(rng, need_bottom=False)
    target = min(range(len(cells)), key=lambda i: cells[i][1])
    others = iter(distinct_colors(rng, len(cells), first=cast(Color, answer))[1:])
    colors = [cast(Color, answer) if i == target else next(others) for i in range(len(cells))]
    scene = Scene(geo.image_size, scene_objects(geo, cells, colors, random_shapes(rng, len(cells))))
    found = top_object(scene)
    return _check(_question("top-color", answer, scene), found.color if found else "<no unique top object>")


def left_of(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    cells = _layout_with_unique_top(rng, need_bottom=True)
    top, bottom = min(cells, key=lambda c: c[1]), max(cells, key=lambda c: c[1])
    if (top[0] < bottom[0]) != (answer == "yes"):
        cells = [(GRID - 1 - column, row) for column, row in cells]  # the mirror image flips the answer, nothing else
    scene = Scene(geo.image_size, scene_objects(geo, cells, distinct_colors(rng, len(cells)),
                                                random_shapes(rng, len(cells))))  # fmt: skip
    pair = top_and_bottom(scene)
    recomputed = ("yes" if pair[0].x < pair[1].x else "no") if pair else "<no unique top and bottom>"
    return _check(_question("left-of", answer, scene), recomputed)


# === Multi-frame questions ===
def _clip(geo: Geometry, num_frames: int, starts: Sequence[Cell], moves: Sequence[Direction | None],
          colors: Sequence[Color], shapes: Sequence[Shape]) -> Clip:  # fmt: skip
    """Objects starting on `starts`; each either stands still (None) or moves one cell in its direction."""
    objects = []
    for start, move, color, shape in zip(starts, moves, colors, shapes):
        centre = geo.centre(start)
        path = straight_path(centre, move, geo.motion, num_frames) if move else (centre,) * num_frames
        objects.append(ClipObject(color, shape, geo.object_size, path))
    return Clip(geo.image_size, num_frames, tuple(objects))


def free_directions(index: int, cells: Sequence[Cell]) -> list[Direction]:
    """Directions in which object `index` can move one cell without leaving the board or entering another's cell."""
    occupied = set(cells)
    return [d for d in DIRECTIONS if on_board(neighbour(cells[index], d)) and neighbour(cells[index], d) not in occupied]


def motion_direction(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    count = int(rng.integers(1, 4))
    start = pick(rng, CENTRAL_CELLS)
    # Distractors keep off the cells of all four possible moves, so their places say nothing about the actual one.
    plus = {start, *(neighbour(start, d) for d in DIRECTIONS)}
    distractors = random_cells(rng, count - 1, [c for c in board_cells() if c not in plus])
    order = [int(i) for i in rng.permutation(count)]  # the mover is not always listed (and drawn) first
    starts = [([start, *distractors])[i] for i in order]
    moves = [cast(Direction, answer) if i == 0 else None for i in order]
    clip = _clip(geo, num_frames, starts, moves, distinct_colors(rng, count), random_shapes(rng, count))
    mover = clip.objects[order.index(0)]
    return _check(_question("motion-direction", answer, clip), str(direction_of(mover)))


def which_moved(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    count = WHICH_MOVED_OBJECTS
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        cells = random_cells(rng, count)
        free = [free_directions(i, cells) for i in range(count)]
        if all(free):  # the same condition for every object, so the layout does not single out the mover
            break
    else:
        raise RuntimeError("No layout where every object can move; the board is too small.")
    mover = int(rng.integers(count))
    moves = [pick(rng, free[i]) if i == mover else None for i in range(count)]
    others = iter(distinct_colors(rng, count, first=cast(Color, answer))[1:])
    colors = [cast(Color, answer) if i == mover else next(others) for i in range(count)]
    clip = _clip(geo, num_frames, cells, moves, colors, random_shapes(rng, count))
    moved = [o.color for o in clip.objects if o.moves]
    return _check(_question("which-moved", answer, clip), moved[0] if len(moved) == 1 else "<not one mover>")


def met(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        start, toward = pick(rng, board_cells()), pick(rng, DIRECTIONS)
        other = neighbour(neighbour(start, toward), toward)  # two cells away: one move toward it ends side by side
        elsewhere = [d for d in free_directions(0, [start, other]) if d != toward]
        if on_board(other) and elsewhere:  # decided before the coin flip, so the layout is the same for yes and no
            break
    else:
        raise RuntimeError("No layout for a 'met' clip; the board is too small.")
    move = toward if answer == "yes" else pick(rng, elsewhere)
    starts, moves = [start, other], [move, None]
    if int(rng.integers(2)):  # the mover is not always listed (and drawn) first
        starts, moves = starts[::-1], moves[::-1]
    clip = _clip(geo, num_frames, starts, moves, distinct_colors(rng, 2), random_shapes(rng, 2))
    return _check(_question("met", answer, clip), "yes" if objects_meet(clip, geo) else "no")


SINGLE_GENERATORS: dict[SingleQuestionType, Callable[[np.random.Generator, str, Geometry], Question]] = {
    "count": count_question,
    "top-color": top_color,
    "left-of": left_of,
}
MOTION_GENERATORS: dict[MotionQuestionType, Callable[[np.random.Generator, str, Geometry, int], Question]] = {
    "motion-direction": motion_direction,
    "which-moved": which_moved,
    "met": met,
}


def make_question(
    question_type: QuestionType, answer: str, rng: np.random.Generator, geo: Geometry, num_frames: int = 2
) -> Question:
    """A random scene (single types) or clip of `num_frames` frames (motion types) whose answer is `answer`."""
    if answer not in ANSWERS.get(question_type, ()):
        raise ValueError(
            f"{answer!r} is not an answer of question type {question_type!r} "
            f"(answers: {list(ANSWERS.get(question_type, ()))})."
        )
    if question_type in SINGLE_TYPES:
        return SINGLE_GENERATORS[cast(SingleQuestionType, question_type)](rng, answer, geo)
    return MOTION_GENERATORS[cast(MotionQuestionType, question_type)](rng, answer, geo, num_frames)


def prompt_text(question: str) -> str:
    """The human turn of a demo record (the `<image>` marker is added by the dataset writer)."""
    return f"{question} {PROMPT_SUFFIX}"
