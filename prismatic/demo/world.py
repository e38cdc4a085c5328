"""The demo's small dynamics world: plain-data scene descriptions, their geometry, and rendering with pillow.

A `Scene` is a few coloured shapes on a plain background (one image); a `Clip` is the same kind of world over 2-4
frames, each object carrying its centre per frame. Descriptions are frozen dataclasses of ints and strings, so they
serialise to JSON losslessly (`to_json` / `scene_from_json`) and the question generator, the tests and the renderer
all read the same facts. Rendering is a pure function of a description: no randomness, no antialiasing (crisp,
high-contrast shapes, so the pixel at an object's centre is exactly the object's colour).

All sizes scale with the image size through `Geometry` (fractions of the canvas), so a 64 px and a 128 px world pose
the same task. Objects never overlap in a single-image scene or in a clip's first frame; only the `met` clips end with
two objects overlapping (that is what "meeting" means here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from PIL import Image, ImageDraw

Color = Literal["red", "green", "blue", "yellow", "purple"]
Shape = Literal["circle", "square", "triangle"]
Direction = Literal["left", "right", "up", "down"]

COLORS: tuple[Color, ...] = get_args(Color)
SHAPES: tuple[Shape, ...] = get_args(Shape)
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

# Saturated colours whose hues are at least ~60 degrees apart, on a near-black background: every pair is easy to tell
# apart for a tiny encoder, and every colour has strong contrast with the background.
RGB: dict[Color, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (40, 90, 245),
    "yellow": (245, 220, 40),
    "purple": (170, 70, 220),
}
BACKGROUND: tuple[int, int, int] = (20, 20, 20)

# Image y grows downwards, so "up" is -y.
DIRECTION_VECTORS: dict[Direction, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

MIN_IMAGE_SIZE = 32

Box = tuple[int, int, int, int]  # inclusive pixel bounds (x0, y0, x1, y1)


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes of one world, all derived from the image size (see `geometry`)."""

    image_size: int
    scene_sizes: tuple[int, int]  # smallest and largest object side in single-image scenes
    clip_size: int  # object side in clips (smaller than in scenes, to leave room for the motion)
    motion: int  # total displacement of a moving object from the first to the last frame
    gap: int  # least empty pixels between two objects' boxes
    margin: int  # least empty pixels between an object and the border
    clear: int  # least centre distance along an axis for "top" / "left of" to count: the extents do not overlap
    meet_offset: int  # in `met` clips, centre distance left between the two objects in the last frame (< clip_size)


def geometry(image_size: int) -> Geometry:
    """Sizes as fractions of the canvas. At 64 px: scene objects 12-15 px, an object counts as "top" or "left of"
    another only 18 px clear of it, clip objects are 8 px and a mover travels 20 px (2.5 object widths) in total, so
    motion is obvious between the first and the last frame."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE} (shapes need room), got {image_size!r}.")
    s = image_size
    clip_size = round(0.125 * s)
    largest, gap = round(0.24 * s), max(2, round(0.05 * s))
    return Geometry(
        image_size=s,
        scene_sizes=(round(0.19 * s), largest),
        clip_size=clip_size,
        motion=round(0.32 * s),
        gap=gap,
        margin=max(1, round(0.03 * s)),
        clear=largest + gap,
        meet_offset=clip_size // 2,
    )


# === Descriptions ===
@dataclass(frozen=True)
class WorldObject:
    """One shape in one image: colour, shape kind, centre (x, y) in pixels, side of its square bounding box."""

    color: Color
    shape: Shape
    x: int
    y: int
    size: int

    @property
    def box(self) -> Box:
        return object_box(self.x, self.y, self.size)


@dataclass(frozen=True)
class Scene:
    """A single image: the canvas size and its objects, drawn in order (all colours distinct)."""

    image_size: int
    objects: tuple[WorldObject, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "scene",
            "image_size": self.image_size,
            "objects": [{"color": o.color, "shape": o.shape, "x": o.x, "y": o.y, "size": o.size} for o in self.objects],
        }


@dataclass(frozen=True)
class ClipObject:
    """One shape across a clip: its centre in every frame (`path[t] = (x, y)`); a static object repeats its centre."""

    color: Color
    shape: Shape
    size: int
    path: tuple[tuple[int, int], ...]

    def at(self, frame: int) -> WorldObject:
        x, y = self.path[frame]
        return WorldObject(self.color, self.shape, x, y, self.size)

    @property
    def moves(self) -> bool:
        return len(set(self.path)) > 1


@dataclass(frozen=True)
class Clip:
    """A few frames of one world: objects moving in straight lines at constant speed (or standing still)."""

    image_size: int
    num_frames: int
    objects: tuple[ClipObject, ...]

    def frame(self, index: int) -> Scene:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range for a {self.num_frames}-frame clip")
        return Scene(self.image_size, tuple(o.at(index) for o in self.objects))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "clip",
            "image_size": self.image_size,
            "num_frames": self.num_frames,
            "objects": [
                {"color": o.color, "shape": o.shape, "size": o.size, "path": [list(p) for p in o.path]}
                for o in self.objects
            ],
        }


Description = Scene | Clip


def scene_from_json(data: dict[str, Any]) -> Description:
    """Inverse of `Scene.to_json` / `Clip.to_json` (the `scene` field of a demo record)."""
    kind = data.get("kind")
    if kind == "scene":
        objects = tuple(
            WorldObject(o["color"], o["shape"], int(o["x"]), int(o["y"]), int(o["size"])) for o in data["objects"]
        )
        return Scene(int(data["image_size"]), objects)
    if kind == "clip":
        clip_objects = tuple(
            ClipObject(o["color"], o["shape"], int(o["size"]), tuple((int(x), int(y)) for x, y in o["path"]))
            for o in data["objects"]
        )
        return Clip(int(data["image_size"]), int(data["num_frames"]), clip_objects)
    raise ValueError(f"A scene description needs kind 'scene' or 'clip', got {kind!r}.")


# === Geometry helpers ===
def object_box(x: int, y: int, size: int) -> Box:
    """Inclusive pixel box of a `size`-wide object centred at (x, y) (for even sizes the centre is the lower middle)."""
    x0, y0 = x - size // 2, y - size // 2
    return x0, y0, x0 + size - 1, y0 + size - 1


def union_box(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def boxes_clear(a: Box, b: Box, gap: int) -> bool:
    """True when at least `gap` empty pixels separate the two boxes along x or along y."""
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def box_inside(box: Box, image_size: int, margin: int) -> bool:
    last = image_size - 1 - margin
    return box[0] >= margin and box[1] >= margin and box[2] <= last and box[3] <= last


def center_range(size: int, image_size: int, margin: int, reach: int = 0) -> tuple[int, int]:
    """Inclusive range of centre coordinates that keep a `size`-wide object inside the canvas even after moving
    `reach` pixels either way along that axis (empty when lo > hi)."""
    lo = margin + size // 2 + reach
    hi = image_size - 1 - margin - (size - 1 - size // 2) - reach
    return lo, hi


def straight_path(
    start: tuple[int, int], direction: Direction, distance: int, num_frames: int
) -> tuple[tuple[int, int], ...]:
    """Centres over `num_frames` frames at constant speed, covering exactly `distance` pixels from first to last frame
    (intermediate positions rounded half up to whole pixels)."""
    if num_frames < 2:
        raise ValueError(f"A moving object needs at least 2 frames, got {num_frames}.")
    dx, dy = DIRECTION_VECTORS[direction]
    steps = num_frames - 1
    offsets = [(2 * distance * t + steps) // (2 * steps) for t in range(num_frames)]
    return tuple((start[0] + dx * d, start[1] + dy * d) for d in offsets)


def swept_box(x: int, y: int, size: int, direction: Direction, distance: int) -> Box:
    """Every pixel the object covers while moving `distance` pixels from (x, y) in `direction`."""
    dx, dy = DIRECTION_VECTORS[direction]
    return union_box(object_box(x, y, size), object_box(x + dx * distance, y + dy * distance, size))


# === Rendering ===
def _draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject) -> None:
    x0, y0, x1, y1 = obj.box
    fill = RGB[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle: apex at the top middle, base along the bottom edge of the box
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image; objects later in the list are drawn on top."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


def render_clip(clip: Clip) -> list[Image.Image]:
    """One RGB image per frame."""
    return [render_scene(clip.frame(t)) for t in range(clip.num_frames)]


def render(description: Description) -> list[Image.Image]:
    """Frames of any description (a scene is a one-frame list)."""
    return [render_scene(description)] if isinstance(description, Scene) else render_clip(description)
