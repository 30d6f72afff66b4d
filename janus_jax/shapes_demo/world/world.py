"""The shapes world: scenes of 1-3 flat coloured shapes on a light background, and their renderer.

A scene is a tuple of objects, each a (colour, shape, size) placed in one cell of a 3x3 grid, at
most one object per cell, so objects never overlap and "left of" / "above" are read off the grid.
Everything is a pure function of a `numpy.random.Generator`: the same seed gives the same scenes,
pixels and texts on every machine.

Why these choices:
  * Colours are spaced about 50-70 degrees apart in hue and all strongly saturated, while the
    background is neutral; the analyser (`shapes_demo/eval/analyser.py`) then segments by hue
    and chroma, which survives the blur, noise and colour drift of a VQ reconstruction.
  * Shapes differ in how much of their bounding box they fill (square 1.0, circle 0.79, triangle
    and diamond 0.5) and triangles are top-light, diamonds symmetric: cheap, robust geometry.
  * Rendering is 4x supersampled and box-filtered, so edges are anti-aliased like real images.

Held-out compositions (the generalisation the evaluation measures): a scene's composition key is
  1 object:   its (colour, shape, cell);
  2-3 objects: the multiset of its (colour, shape) descriptors, position-free.
A key is held out when crc32(key) % 100 < HELDOUT_PERCENT. Train and validation contain no
held-out scene; test contains only held-out scenes. So every two- or three-object test scene pairs
(colour, shape) descriptors that never appeared together in training, in any arrangement, and
every one-object test scene puts a shape of a colour in a cell where training never showed it.
Every single (colour, shape) descriptor does appear in training.
"""

import dataclasses
import json
from typing import Iterator, Sequence
import zlib

import numpy as np

# name -> RGB. Hues: red 0, yellow 52, green 129, cyan 182, blue 237, purple 288 degrees.
COLOURS = {
    "red": (220, 40, 40),
    "yellow": (225, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 185, 190),
    "blue": (50, 60, 220),
    "purple": (170, 50, 200),
}
BACKGROUND = (235, 235, 235)
SHAPES = ("circle", "square", "triangle", "diamond")
# Half-extent of a shape's bounding box, as a fraction of the image side.
SIZES = {"small": 6 / 64, "large": 9 / 64}
GRID = 3
# Cell (row, col) -> its name, used in answers ("where is ...?") and, as a phrase, in captions.
CELL_NAMES = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "centre", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
MAX_OBJECTS = 3
HELDOUT_PERCENT = 15
SPLITS = ("train", "validation", "test")
_SUPERSAMPLE = 4


class Placed:
  """Something with a `colour`, a `shape` and a grid cell (`row`, `col`): a drawn object or
  one the analyser detected."""

  @property
  def descriptor(self) -> tuple[str, str]:
    return (self.colour, self.shape)

  @property
  def cell(self) -> tuple[int, int]:
    return (self.row, self.col)


@dataclasses.dataclass(frozen=True)
class Object(Placed):
  """One shape. `dx`, `dy` offset it from its cell centre, in fractions of the image side."""
  colour: str
  shape: str
  size: str
  row: int
  col: int
  dx: float = 0.0
  dy: float = 0.0

  def __post_init__(self):
    if self.colour not in COLOURS:
      raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
    if self.shape not in SHAPES:
      raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
    if self.size not in SIZES:
      raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")
    if not (0 <= self.row < GRID and 0 <= self.col < GRID):
      raise ValueError(f"cell ({self.row}, {self.col}) is outside the {GRID}x{GRID} grid")

  def centre(self, image_size: int) -> tuple[float, float]:
    """(x, y) of the shape's centre in pixel units (pixel i covers [i, i+1))."""
    step = image_size / GRID
    return ((self.col + 0.5) * step + self.dx * image_size,
            (self.row + 0.5) * step + self.dy * image_size)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects in reading order (row-major by cell); at most one per cell."""
  objects: tuple[Object, ...]

  def __post_init__(self):
    if not 1 <= len(self.objects) <= MAX_OBJECTS:
      raise ValueError(f"a scene holds 1-{MAX_OBJECTS} objects, got {len(self.objects)}")
    cells = [o.cell for o in self.objects]
    if len(set(cells)) != len(cells):
      raise ValueError(f"two objects share a cell: {cells}")
    object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

  def to_json(self) -> str:
    return json.dumps([dataclasses.asdict(o) for o in self.objects], sort_keys=True)

  @classmethod
  def from_json(cls, text: str | bytes) -> "Scene":
    return cls(tuple(Object(**d) for d in json.loads(text)))


def composition_key(scene: Scene) -> str:
  """The held-out unit of a scene (see the module docstring)."""
  if len(scene.objects) == 1:
    o = scene.objects[0]
    return f"1|{o.colour}|{o.shape}|{o.row}{o.col}"
  descs = sorted(f"{c}|{s}" for c, s in (o.descriptor for o in scene.objects))
  return f"{len(descs)}|" + "+".join(descs)


def is_heldout(scene: Scene) -> bool:
  return zlib.crc32(composition_key(scene).encode()) % 100 < HELDOUT_PERCENT


def sample_scene(rng: np.random.Generator, num_objects: int | None = None, *,
                 same_fraction: float = 0.3, jitter: float = 0.0) -> Scene:
  """Draws a random scene.

  Args:
    rng: the only source of randomness.
    num_objects: 1..3; uniform over that range when None.
    same_fraction: probability that a multi-object scene repeats one (colour, shape), which is
      what counting captions ("three red squares") need.
    jitter: maximal offset from the cell centre, as a fraction of the image side. Objects stay
      apart up to about 1/64 (large shapes in neighbouring cells then leave a 1 pixel gap at 64px).
  """
  n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
  if not 1 <= n <= MAX_OBJECTS:
    raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {n}")
  colours, shapes = list(COLOURS), list(SHAPES)
  cells = rng.choice(GRID * GRID, size=n, replace=False)
  same = n > 1 and rng.random() < same_fraction
  desc = (colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))])
  objects = []
  for cell in cells:
    if not same:
      desc = (colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))])
    size = "large" if rng.random() < 0.5 else "small"
    dx, dy = (rng.uniform(-jitter, jitter, size=2) if jitter else (0.0, 0.0))
    objects.append(Object(desc[0], desc[1], size, int(cell) // GRID, int(cell) % GRID,
                          float(dx), float(dy)))
  return Scene(tuple(objects))


def split_scenes(split: str, num: int, seed: int = 0, **sample_kw) -> Iterator[Scene]:
  """The first `num` scenes of a split: rejection-sampled so that only test holds held-out keys.

  Deterministic in (split, seed): the TFDS builder and ShapesEval read the same scenes.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  want_heldout = split == "test"
  made = 0
  while made < num:
    scene = sample_scene(rng, **sample_kw)
    if is_heldout(scene) == want_heldout:
      made += 1
      yield scene


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
  """Inside-test for a shape centred at the origin with bounding-box half-extent `half`.

  `x`, `y` are coordinates relative to the centre (any broadcastable shapes). The analyser uses
  the same geometry to know what each shape's fill ratio should be.
  """
  if shape == "circle":
    return x * x + y * y <= half * half
  if shape == "square":
    side = 0.85 * half  # a bit smaller so square and circle cover similar areas
    return (np.abs(x) <= side) & (np.abs(y) <= side)
  if shape == "triangle":
    top, bottom = -0.9 * half, 0.9 * half  # apex up, base at the bottom
    frac = (y - top) / (bottom - top)
    return (frac >= 0) & (frac <= 1) & (np.abs(x) <= half * frac)
  if shape == "diamond":
    return np.abs(x) + np.abs(y) <= half
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_coverage(shape: str, cx: float, cy: float, half: float, rows: slice, cols: slice
                   ) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of a shape centred at pixel coordinates (cx, cy).

  Evaluated on the pixels `rows` x `cols` of the image (4x4 samples per pixel); returns float32
  (rows, cols). The analyser fits these same templates to what it segments.
  """
  ss = _SUPERSAMPLE
  nr, nc = rows.stop - rows.start, cols.stop - cols.start
  ys = rows.start + (np.arange(nr * ss) + 0.5) / ss - cy
  xs = cols.start + (np.arange(nc * ss) + 0.5) / ss - cx
  inside = shape_mask(shape, xs[None, :], ys[:, None], half).astype(np.float32)
  return inside.reshape(nr, ss, nc, ss).mean(axis=(1, 3))


def coverage(obj: Object, image_size: int) -> tuple[np.ndarray, slice, slice]:
  """Coverage of one object over its bounding pixels: (cov (h, w) float32, row slice, col slice)."""
  cx, cy = obj.centre(image_size)
  half = SIZES[obj.size] * image_size
  rows = slice(max(int(np.floor(cy - half)) - 1, 0), min(int(np.ceil(cy + half)) + 1, image_size))
  cols = slice(max(int(np.floor(cx - half)) - 1, 0), min(int(np.ceil(cx + half)) + 1, image_size))
  return shape_coverage(obj.shape, cx, cy, half, rows, cols), rows, cols


def render(scene: Scene, image_size: int = 64) -> np.ndarray:
  """Pixels of a scene: uint8 (image_size, image_size, 3), RGB."""
  if image_size < 32:
    raise ValueError(f"image_size must be >= 32 for shapes to stay recognisable, got {image_size}")
  img = np.empty((image_size, image_size, 3), np.float32)
  img[...] = np.asarray(BACKGROUND, np.float32)
  for obj in scene.objects:
    cov, rows, cols = coverage(obj, image_size)
    patch = img[rows, cols]
    img[rows, cols] = patch + cov[..., None] * (np.asarray(COLOURS[obj.colour], np.float32) - patch)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_batch(scenes: Sequence[Scene], image_size: int = 64) -> np.ndarray:
  """uint8 (B, image_size, image_size, 3)."""
  return np.stack([render(s, image_size) for s in scenes])
