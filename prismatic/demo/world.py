"""The demo's small dynamics world: a 4 x 4 board of coloured shapes, its descriptions, and rendering with pillow.

A `Scene` is a few coloured shapes on a plain background (one image); a `Clip` is the same kind of world over 2-4
frames, each object carrying its centre per frame. Descriptions are frozen dataclasses of ints and strings, so they
serialise to JSON losslessly (`to_json` / `scene_from_json`) and the question generator, the tests and the renderer
all read the same facts. Rendering is a pure function of a description: no randomness, no antialiasing (crisp,
high-contrast shapes, so the pixel at an object's centre is exactly the object's colour).

Objects sit on the cells of a board (`GRID` x `GRID`), one object per cell, and a mover travels exactly one cell from
the first frame to the last (the frames between show it part-way). At the default 64 px a cell is 16 px, exactly one
patch of the tiny vision encoders and one token of the tiny SVD's 4 x 4 grid, so every visual token sees at most one
whole object: the demo then measures what the model learns from its tokens, not how well a random tiny encoder copes
with objects straddling patches. All sizes scale with the image size through `Geometry`.
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

GRID = 4  # the board is GRID x GRID cells
MIN_IMAGE_SIZE = 32

Box = tuple[int, int, int, int]  # inclusive pixel bounds (x0, y0, x1, y1)
Cell = tuple[int, int]  # (column, row) on the board, (0, 0) top left


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes of one world, all derived from the image size (see `geometry`)."""

    image_size: int
    cell: int  # side of a board cell in pixels; also the distance a mover travels from first to last frame
    object_size: int  # side of every object's square bounding box (a cell less a 1 px margin on each side)

    @property
    def motion(self) -> int:
        return self.cell

    def centre(self, cell: Cell) -> tuple[int, int]:
        """Pixel centre of a board cell."""
        column, row = cell
        return column * self.cell + self.cell // 2, row * self.cell + self.cell // 2

    def cell_of(self, x: int, y: int) -> Cell:
        """The cell whose centre is (x, y); raises for a point that is not a cell centre."""
        cell = (x // self.cell, y // self.cell)
        if self.centre(cell) != (x, y):
            raise ValueError(f"({x}, {y}) is not the centre of a {self.cell} px cell.")
        return cell


def geometry(image_size: int) -> Geometry:
    """A GRID x GRID board filling the canvas. At 64 px: 16 px cells, exactly one patch of the tiny vision encoders
    (16 px ViT patches; the tiny SVD's token grid is 4 x 4 too), 14 px objects, and a mover travels one cell."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE or image_size % GRID:
        raise ValueError(
            f"image_size must be an int >= {MIN_IMAGE_SIZE} and a multiple of {GRID} (a {GRID}x{GRID} board), "
            f"got {image_size!r}."
        )
    cell = image_size // GRID
    return Geometry(image_size=image_size, cell=cell, object_size=cell - 2)


def board_cells() -> list[Cell]:
    """Every cell, row by row."""
    return [(column, row) for row in range(GRID) for column in range(GRID)]


def on_board(cell: Cell) -> bool:
    return 0 <= cell[0] < GRID and 0 <= cell[1] < GRID


def neighbour(cell: Cell, direction: Direction) -> Cell:
    dx, dy = DIRECTION_VECTORS[direction]
    return cell[0] + dx, cell[1] + dy


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
