"""Questions about the demo world: their types, closed answer sets, chance levels, and scenes drawn to fit an answer.

Every question has a one-word answer from a small closed set (`ANSWERS`). The dataset builder fixes the answer first
(a balanced deck per type) and asks a generator here for a random scene with that answer, so answers are uniform per
type. Each generator re-derives the answer from the finished description with the answer functions below and refuses
a mismatch, so a stored answer is always what the description says.

Chance level (`chance_level`) is the accuracy of guessing uniformly among the answers the question allows. For the
motion types the scene is drawn so that the first frame says nothing about the answer either (start positions do not
depend on the direction of motion, which object moves, or whether the objects meet), so a model that sees only the
first frame stays at this level:
- `motion-direction`: the mover starts in the central box from which all four moves fit, and distractors avoid all
  four possible paths.
- `which-moved`: three objects placed alike (each must have room to move somewhere); the mover is picked afterwards,
  uniformly; the question lists the three candidate colours, so chance is 1/3.
- `met`: one object moves, the other stands on one of its four axes; whether it heads for it is a coin flip made after
  the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast, get_args

import numpy as np

from prismatic.demo.world import (
    COLORS,
    DIRECTION_VECTORS,
    DIRECTIONS,
    SHAPES,
    Box,
    Clip,
    ClipObject,
    Color,
    Description,
    Direction,
    Geometry,
    Scene,
    Shape,
    WorldObject,
    box_inside,
    boxes_clear,
    center_range,
    object_box,
    straight_path,
    swept_box,
)

SingleQuestionType = Literal["color-of-position", "count", "left-of", "shape-of"]
MotionQuestionType = Literal["motion-direction", "which-moved", "met"]
QuestionType = Literal[SingleQuestionType, MotionQuestionType]
Position = Literal["top", "bottom", "leftmost", "rightmost"]

SINGLE_TYPES: tuple[SingleQuestionType, ...] = get_args(SingleQuestionType)
MOTION_TYPES: tuple[MotionQuestionType, ...] = get_args(MotionQuestionType)
QUESTION_TYPES: tuple[QuestionType, ...] = SINGLE_TYPES + MOTION_TYPES
POSITIONS: tuple[Position, ...] = get_args(Position)

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
YES_NO: tuple[str, ...] = ("yes", "no")
WHICH_MOVED_OBJECTS = 3  # objects in a `which-moved` clip, all named in the question

ANSWERS: dict[QuestionType, tuple[str, ...]] = {
    "color-of-position": COLORS,
    "count": COUNT_WORDS,
    "left-of": YES_NO,
    "shape-of": SHAPES,
    "motion-direction": DIRECTIONS,
    "which-moved": COLORS,
    "met": YES_NO,
}

PROMPT_SUFFIX = "Answer with one word."
MAX_LAYOUT_ATTEMPTS = 10_000


def chance_level(question_type: QuestionType) -> float:
    """Accuracy of a uniform guess among the answers a question of this type allows (answers are balanced per type)."""
    if question_type not in ANSWERS:
        raise ValueError(f"Unknown question type {question_type!r}; valid types are {list(QUESTION_TYPES)}.")
    if question_type == "which-moved":
        return 1.0 / WHICH_MOVED_OBJECTS  # the question names the candidates
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
def extreme_object(scene: Scene, position: Position, clear: int) -> WorldObject | None:
    """The top / bottom / leftmost / rightmost object, or None unless it leads every other one by `clear` pixels."""
    key: Callable[[WorldObject], int] = {
        "top": lambda o: o.y, "bottom": lambda o: -o.y, "leftmost": lambda o: o.x, "rightmost": lambda o: -o.x
    }[position]
    ranked = sorted(scene.objects, key=key)
    if len(ranked) > 1 and key(ranked[1]) - key(ranked[0]) < clear:
        return None
    return ranked[0]


def find_by_color(objects: Sequence[WorldObject | ClipObject], color: Color) -> WorldObject | ClipObject:
    matches = [o for o in objects if o.color == color]
    if len(matches) != 1:
        raise ValueError(f"Expected exactly one {color} object, found {len(matches)}.")
    return matches[0]


def direction_of(obj: ClipObject) -> Direction | None:
    """The direction a straight-moving object goes (None when it stands still)."""
    (x0, y0), (x1, y1) = obj.path[0], obj.path[-1]
    if (x0, y0) == (x1, y1):
        return None
    step = (int(np.sign(x1 - x0)), int(np.sign(y1 - y0)))
    matches = [d for d, vector in DIRECTION_VECTORS.items() if vector == step]
    if not matches:
        raise ValueError(f"Object moves diagonally from {(x0, y0)} to {(x1, y1)}; demo motion is axis-aligned.")
    return matches[0]


def objects_meet(clip: Clip) -> bool:
    """True when the two objects' boxes share a pixel in some frame."""
    first, second = clip.objects
    return any(not boxes_clear(first.at(t).box, second.at(t).box, gap=0) for t in range(clip.num_frames))


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


def place(
    rng: np.random.Generator, sizes: Sequence[int], geo: Geometry, avoid: Sequence[Box] = ()
) -> list[tuple[int, int]]:
    """Uniform random centres for objects of the given sizes: inside the canvas, `gap` pixels clear of each other and
    of the `avoid` boxes. Raises RuntimeError when the canvas is too crowded to fit them."""
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        centres: list[tuple[int, int]] = []
        taken = list(avoid)
        for size in sizes:
            lo, hi = center_range(size, geo.image_size, geo.margin)
            for _ in range(100):
                x, y = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
                if all(boxes_clear(object_box(x, y, size), other, geo.gap) for other in taken):
                    break
            else:
                break  # this object did not fit: start the layout over
            centres.append((x, y))
            taken.append(object_box(x, y, size))
        if len(centres) == len(sizes):
            return centres
    raise RuntimeError(f"Could not fit {len(sizes)} objects into a {geo.image_size}px image; use a larger image_size.")


def scene_sizes(rng: np.random.Generator, count: int, geo: Geometry) -> list[int]:
    lo, hi = geo.scene_sizes
    return [int(rng.integers(lo, hi + 1)) for _ in range(count)]


def name(obj: WorldObject | ClipObject) -> str:
    return f"{obj.color} {obj.shape}"


def _check(question: Question, recomputed: str) -> Question:
    if recomputed != question.answer:
        raise RuntimeError(f"Generator bug: {question.question_type} answer {question.answer!r} but the scene says "
                           f"{recomputed!r}: {question.scene}")
    return question


# === Single-image questions ===
def color_of_position(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    position = pick(rng, POSITIONS)
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        count = int(rng.integers(2, 5))
        sizes = scene_sizes(rng, count, geo)
        centres = place(rng, sizes, geo)
        probe = Scene(geo.image_size, tuple(WorldObject("red", "square", x, y, s) for (x, y), s in zip(centres, sizes)))
        extreme = extreme_object(probe, position, geo.clear)
        if extreme is not None:
            break
    else:
        raise RuntimeError(f"No layout with a clear {position} object in {geo.image_size}px; use a larger image_size.")
    target = probe.objects.index(extreme)
    others = iter(distinct_colors(rng, count, first=cast(Color, answer))[1:])
    colors = [cast(Color, answer) if i == target else next(others) for i in range(count)]
    shapes = random_shapes(rng, count)
    objects = tuple(WorldObject(c, s, x, y, size) for c, s, (x, y), size in zip(colors, shapes, centres, sizes))
    scene = Scene(geo.image_size, objects)
    question = Question("color-of-position", f"What colour is the {position} object?", answer, scene)
    found = extreme_object(scene, position, geo.clear)
    return _check(question, found.color if found else "<ambiguous>")


def count_question(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    count = COUNT_WORDS.index(answer) + 1
    sizes = scene_sizes(rng, count, geo)
    centres = place(rng, sizes, geo)
    objects = tuple(
        WorldObject(c, s, x, y, size)
        for c, s, (x, y), size in zip(distinct_colors(rng, count), random_shapes(rng, count), centres, sizes)
    )
    scene = Scene(geo.image_size, objects)
    return _check(Question("count", "How many shapes are there?", answer, scene), COUNT_WORDS[len(objects) - 1])


def left_of(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        count = int(rng.integers(2, 5))
        sizes = scene_sizes(rng, count, geo)
        centres = place(rng, sizes, geo)
        pairs = [(i, j) for i in range(count) for j in range(i + 1, count)
                 if abs(centres[i][0] - centres[j][0]) >= geo.clear]
        if pairs:
            break
    else:
        raise RuntimeError(f"No layout with two clearly separated objects in {geo.image_size}px.")
    objects = tuple(
        WorldObject(c, s, x, y, size)
        for c, s, (x, y), size in zip(distinct_colors(rng, count), random_shapes(rng, count), centres, sizes)
    )
    i, j = pick(rng, pairs)
    first, second = objects[i], objects[j]
    if (first.x < second.x) != (answer == "yes"):
        first, second = second, first
    text = f"Is the {name(first)} left of the {name(second)}?"
    question = Question("left-of", text, answer, Scene(geo.image_size, objects))
    return _check(question, "yes" if first.x < second.x else "no")


def shape_of(rng: np.random.Generator, answer: str, geo: Geometry) -> Question:
    count = int(rng.integers(1, 5))
    sizes = scene_sizes(rng, count, geo)
    centres = place(rng, sizes, geo)
    target = int(rng.integers(count))
    shapes = random_shapes(rng, count)
    shapes[target] = cast(Shape, answer)
    colors = distinct_colors(rng, count)
    objects = tuple(WorldObject(c, s, x, y, size) for c, s, (x, y), size in zip(colors, shapes, centres, sizes))
    text = f"What shape is the {colors[target]} object?"
    question = Question("shape-of", text, answer, Scene(geo.image_size, objects))
    return _check(question, find_by_color(objects, colors[target]).shape)


# === Multi-frame questions ===
def _static(x: int, y: int, num_frames: int) -> tuple[tuple[int, int], ...]:
    return ((x, y),) * num_frames


def _clip(geo: Geometry, num_frames: int, paths: list[tuple[tuple[int, int], ...]], colors: Sequence[Color],
          shapes: Sequence[Shape]) -> Clip:
    objects = tuple(ClipObject(c, s, geo.clip_size, path) for c, s, path in zip(colors, shapes, paths))
    return Clip(geo.image_size, num_frames, objects)


def motion_direction(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    count = int(rng.integers(1, 4))
    lo, hi = center_range(geo.clip_size, geo.image_size, geo.margin, reach=geo.motion)
    start = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
    # Distractors keep clear of all four possible paths, so their places say nothing about the actual one.
    plus = [swept_box(*start, geo.clip_size, d, geo.motion) for d in DIRECTIONS]
    distractors = place(rng, [geo.clip_size] * (count - 1), geo, avoid=plus)
    paths = [straight_path(start, cast(Direction, answer), geo.motion, num_frames)]
    paths += [_static(x, y, num_frames) for x, y in distractors]
    order = [int(i) for i in rng.permutation(count)]
    colors, shapes = distinct_colors(rng, count), random_shapes(rng, count)
    clip = _clip(geo, num_frames, [paths[i] for i in order], colors, shapes)
    mover = clip.objects[order.index(0)]
    question = Question("motion-direction", f"Which way does the {name(mover)} move?", answer, clip)
    return _check(question, str(direction_of(mover)))


def _free_directions(index: int, centres: Sequence[tuple[int, int]], geo: Geometry) -> list[Direction]:
    """Directions in which object `index` can make the full move inside the canvas without touching the others."""
    x, y = centres[index]
    others = [object_box(cx, cy, geo.clip_size) for j, (cx, cy) in enumerate(centres) if j != index]
    free: list[Direction] = []
    for direction in DIRECTIONS:
        path_box = swept_box(x, y, geo.clip_size, direction, geo.motion)
        if box_inside(path_box, geo.image_size, geo.margin) and all(boxes_clear(path_box, b, geo.gap) for b in others):
            free.append(direction)
    return free


def which_moved(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    count = WHICH_MOVED_OBJECTS
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        centres = place(rng, [geo.clip_size] * count, geo)
        free = [_free_directions(i, centres, geo) for i in range(count)]
        if all(free):  # the same condition for every object, so the layout does not single out the mover
            break
    else:
        raise RuntimeError(f"No layout where every object can move in {geo.image_size}px; use a larger image_size.")
    mover = int(rng.integers(count))
    paths = [
        straight_path(c, pick(rng, free[i]), geo.motion, num_frames) if i == mover else _static(*c, num_frames)
        for i, c in enumerate(centres)
    ]
    others = iter(distinct_colors(rng, count, first=cast(Color, answer))[1:])
    colors = [cast(Color, answer) if i == mover else next(others) for i in range(count)]
    clip = _clip(geo, num_frames, paths, colors, random_shapes(rng, count))
    listed = [colors[i] for i in rng.permutation(count)]
    text = f"Which object moves: the {listed[0]} one, the {listed[1]} one or the {listed[2]} one?"
    moved = [o.color for o in clip.objects if o.moves]
    return _check(Question("which-moved", text, answer, clip), moved[0] if len(moved) == 1 else "<not one mover>")


def met(rng: np.random.Generator, answer: str, geo: Geometry, num_frames: int) -> Question:
    reach = geo.motion + geo.meet_offset  # heading straight for the other object ends `meet_offset` from its centre
    lo, hi = center_range(geo.clip_size, geo.image_size, geo.margin)
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        start = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        toward = pick(rng, DIRECTIONS)
        dx, dy = DIRECTION_VECTORS[toward]
        other = (start[0] + dx * reach, start[1] + dy * reach)
        if not box_inside(object_box(*other, geo.clip_size), geo.image_size, geo.margin):
            continue
        elsewhere = [d for d in _free_directions(0, [start, other], geo) if d != toward]
        if elsewhere:  # decided before the coin flip, so the layout is the same for "yes" and "no"
            break
    else:
        raise RuntimeError(f"No layout for a 'met' clip in {geo.image_size}px; use a larger image_size.")
    direction = toward if answer == "yes" else pick(rng, elsewhere)
    paths = [straight_path(start, direction, geo.motion, num_frames), _static(*other, num_frames)]
    if int(rng.integers(2)):
        paths.reverse()  # the mover is not always listed (and drawn) first
    clip = _clip(geo, num_frames, paths, distinct_colors(rng, 2), random_shapes(rng, 2))
    question = Question("met", "Do the two objects meet?", answer, clip)
    return _check(question, "yes" if objects_meet(clip) else "no")


SINGLE_GENERATORS: dict[SingleQuestionType, Callable[[np.random.Generator, str, Geometry], Question]] = {
    "color-of-position": color_of_position,
    "count": count_question,
    "left-of": left_of,
    "shape-of": shape_of,
}
MOTION_GENERATORS: dict[MotionQuestionType, Callable[[np.random.Generator, str, Geometry, int], Question]] = {
    "motion-direction": motion_direction,
    "which-moved": which_moved,
    "met": met,
}


def make_question(question_type: QuestionType, answer: str, rng: np.random.Generator, geo: Geometry,
                  num_frames: int = 2) -> Question:
    """A random scene (single types) or clip of `num_frames` frames (motion types) whose answer is `answer`."""
    if answer not in ANSWERS.get(question_type, ()):
        raise ValueError(f"{answer!r} is not an answer of question type {question_type!r} "
                         f"(answers: {list(ANSWERS.get(question_type, ()))}).")
    if question_type in SINGLE_TYPES:
        return SINGLE_GENERATORS[cast(SingleQuestionType, question_type)](rng, answer, geo)
    return MOTION_GENERATORS[cast(MotionQuestionType, question_type)](rng, answer, geo, num_frames)


def prompt_text(question: str) -> str:
    """The human turn of a demo record (the `<image>` marker is added by the dataset writer)."""
    return f"{question} {PROMPT_SUFFIX}"
