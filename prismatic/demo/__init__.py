"""The embedded demo data: a small seeded world of coloured shapes on a 4 x 4 board, single images and 2-4 frame clips,
with one-word questions (count, colour of the top object, left-of; direction of motion, which object moved, whether
two objects met), written as LLaVA-format splits. docs/demo.md says how it is built and why.

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
from prismatic.demo.questions import (
    ANSWERS,
    MOTION_TYPES,
    QUESTION_TYPES,
    SINGLE_TYPES,
    Question,
    QuestionType,
    chance_level,
)
from prismatic.demo.world import Clip, ClipObject, Scene, WorldObject, render, scene_from_json

__all__ = [
    "ANSWERS",
    "DEMO_SPLITS",
    "DEMO_WORLD_SIZES",
    "MOTION_TYPES",
    "QUESTION_TYPES",
    "SINGLE_TYPES",
    "Clip",
    "ClipObject",
    "DemoPaths",
    "DemoSplit",
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
