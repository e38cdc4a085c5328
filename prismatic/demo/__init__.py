"""The embedded demo data: a small seeded world of coloured shapes on a 4 x 4 board, single images and 2-4 frame clips,
with one-word questions (count, colour of the top object, left-of; direction of motion, which object moved, whether
two objects met), written as LLaVA-format splits (the earlier demo, docs/demo-random-encoder.md); and the falling
world of the world-model study (`physics`, `future`, `world_data`; docs/demo.md).

    from prismatic.demo import build_demo_dataset
    paths = build_demo_dataset()          # generated once into ~/.cache/dyva-worldlm/demo (or $DYVA_CACHE/demo)
    paths.train_json, paths.eval_single_json, paths.eval_motion_json, paths.image_dir
"""

from prismatic.demo.dataset import (
    DEMO_SPLITS,
    DEMO_WORLD_SIZES,
    DemoPaths,
    DemoSplit,
    build_demo_dataset,
    default_cache_dir,
)
from prismatic.demo.future import FUTURE_ANSWERS, FUTURE_TYPES, FutureQuestionType, chance_level
from prismatic.demo.questions import (
    ANSWERS,
    MOTION_TYPES,
    QUESTION_TYPES,
    SINGLE_TYPES,
    Question,
    QuestionType,
)
from prismatic.demo.world import Clip, ClipObject, Scene, WorldObject, render, scene_from_json

__all__ = [
    "ANSWERS",
    "DEMO_SPLITS",
    "DEMO_WORLD_SIZES",
    "FUTURE_ANSWERS",
    "FUTURE_TYPES",
    "MOTION_TYPES",
    "QUESTION_TYPES",
    "SINGLE_TYPES",
    "Clip",
    "ClipObject",
    "DemoPaths",
    "DemoSplit",
    "FutureQuestionType",
    "Question",
    "QuestionType",
    "Scene",
    "WorldObject",
    "build_demo_dataset",
    "chance_level",
    "default_cache_dir",
    "render",
    "scene_from_json",
]
