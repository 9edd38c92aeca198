"""Seeded synthetic "ringed needle" scenes: find the white ring, read the dot inside it.

Why this task: the method needs two things a real checkpoint has and a tiny model trained in
minutes must learn: *where* to look must be decidable at the coarse (base) level, and *what* is
there must need a finer level. A conspicuous white ring is visible at base scale (1-1.5 tokens);
the coloured dot at its centre (8 % of the ring's diameter in held-out scenes) is 1-2 px there,
illegible, and only readable after zooming in. Decoys make the ring, not the colour, the thing to look for:
loose dots of the answer colours lie outside any ring (a model that attends to "a coloured dot"
answers wrong), and empty rings hold no dot. Every question carries the pixel box of the dot it
asks about (and of its ring), so focus recall can be measured.

Scenes are pure data (`make_scene`); `render_scene` paints them; `write_scene` writes a tiled
GeoTIFF with overviews through GDAL (so the lazy pyramid reads it the way it reads real rasters);
`scene_questions` turns a scene into its question; `write_dataset` writes rasters + LLaVA JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

#: dot colours = the answers (distinct from the white ring and from the earth-toned ground)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "blue": (35, 75, 235),
    "yellow": (245, 225, 30),
    "black": (20, 20, 20),
}
RING_RGB = (250, 250, 250)
RING_WIDTH = 0.15  # ring thickness / ring diameter
QUESTION = "What color is the dot in the white ring?"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class Dot:
    colour: str
    box: Box


@dataclass(frozen=True)
class Ring:
    box: Box  # square, outer diameter = box side
    dot: Optional[Dot] = None  # None: an empty decoy ring


@dataclass(frozen=True)
class Scene:
    seed: int
    height: int
    width: int
    rings: tuple[Ring, ...]  # rings[0] holds the dot asked about
    loose_dots: tuple[Dot, ...]  # decoys: answer-coloured dots outside every ring
    background_seed: int = 0

    @property
    def target(self) -> Ring:
        return self.rings[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn. Sizes are relative to the raster's long side, so one spec gives the
    same picture at base scale whatever the raster size (the base level has a fixed long side)."""

    size_range: tuple[int, int] = (1344, 1344)  # long side of the raster, pixels
    aspect_range: tuple[float, float] = (0.75, 1.0)  # short side / long side
    ring_range: tuple[float, float] = (0.085, 0.12)  # ring diameter / long side, log-uniform
    dot_ratio: tuple[float, float] = (0.08, 0.08)  # dot diameter / ring diameter, uniform
    n_empty_rings: tuple[int, int] = (0, 1)  # inclusive ranges
    n_loose_dots: tuple[int, int] = (1, 3)
    colours: tuple[str, ...] = tuple(COLOURS)


def make_scene(seed: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Draw a scene: size, the target ring and its dot, then decoys wherever they fit."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.integers(spec.size_range[0], spec.size_range[1] + 1))
    short_side = int(round(long_side * rng.uniform(*spec.aspect_range)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    lo, hi = (math.log(f * long_side) for f in spec.ring_range)
    diameter = max(8, int(round(math.exp(rng.uniform(lo, hi)))))
    dot_size = max(1, int(round(diameter * rng.uniform(*spec.dot_ratio))))
    colour = str(rng.choice(spec.colours))
    taken: list[Box] = []

    def ring(with_colour: Optional[str]) -> Optional[Ring]:
        box = _place(rng, diameter, width, height, taken, gap=diameter // 2)
        if box is None:
            return None
        taken.append(box)
        dot = None
        if with_colour is not None:
            off = (diameter - dot_size) // 2
            dot = Dot(with_colour, (box[0] + off, box[1] + off, box[0] + off + dot_size, box[1] + off + dot_size))
        return Ring(box, dot)

    target = ring(colour)
    if target is None:  # the spec's ring does not fit the raster
        raise ValueError(f"a {diameter}-px ring does not fit a {width}x{height} scene (seed {seed})")
    rings = [target]
    for _ in range(int(rng.integers(spec.n_empty_rings[0], spec.n_empty_rings[1] + 1))):
        extra = ring(None)
        if extra is not None:
            rings.append(extra)
    others = [c for c in spec.colours if c != colour] or [colour]
    loose = []
    for _ in range(int(rng.integers(spec.n_loose_dots[0], spec.n_loose_dots[1] + 1))):
        box = _place(rng, dot_size, width, height, taken, gap=diameter // 2)
        if box is not None:
            taken.append(box)
            loose.append(Dot(str(rng.choice(others)), box))
    return Scene(seed, height, width, tuple(rings), tuple(loose), background_seed=seed * 7919 + 1)


def _place(rng: np.random.Generator, size: int, width: int, height: int, taken: list[Box], gap: int,
           tries: int = 100) -> Optional[Box]:
    """A square box of side `size` at least `gap` px from every box in `taken` (None if none fits)."""
    margin = max(1, size // 4)
    if width - size - 2 * margin < 1 or height - size - 2 * margin < 1:
        return None
    for _ in range(tries):
        x0 = int(rng.integers(margin, width - size - margin))
        y0 = int(rng.integers(margin, height - size - margin))
        box = (x0, y0, x0 + size, y0 + size)
        if all(box[2] + gap <= b[0] or b[2] + gap <= box[0] or box[3] + gap <= b[1] or b[3] + gap <= box[1]
               for b in taken):
            return box
    return None


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a small 2-D grid to (height, width), pixel centres aligned (align_corners=False)."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    y0, y1, wy = axis(height, coarse.shape[0])
    x0, x1, wx = axis(width, coarse.shape[1])
    rows = coarse[y0] * (1 - wy)[:, None] + coarse[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def render_background(height: int, width: int, seed: int) -> np.ndarray:
    """Earth-toned texture: smooth low-frequency fields plus fine grain (uint8, h x w x 3).

    numpy only: many scenes are drawn while other work holds the CPU threads.
    """
    rng = np.random.default_rng(seed)
    field = np.zeros((height, width), dtype=np.float32)
    for cells, amplitude in ((6, 40.0), (40, 18.0), (200, 10.0)):
        coarse = rng.random((cells, max(2, cells * width // height)), dtype=np.float32) * 2 - 1
        field += _upsample(coarse, height, width) * amplitude
    grain = (rng.random((height, width), dtype=np.float32) * 2 - 1) * 8
    base = np.array([95.0, 110.0, 70.0], dtype=np.float32)  # greenish-brown ground
    tint = np.array([1.0, 0.9, 0.75], dtype=np.float32)
    img = base + field[..., None] * tint + grain[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def disc_mask(size: int, inner: float = 0.0) -> np.ndarray:
    """Boolean (size x size): a disc filling the box, or an annulus with inner radius `inner` x outer."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    d2 = (xx - c) ** 2 + (yy - c) ** 2
    return (d2 <= c * c) & (d2 >= (inner * c) ** 2 if inner > 0 else True)


def render_scene(scene: Scene) -> np.ndarray:
    """The full-resolution RGB image of a scene (uint8, h x w x 3)."""
    img = render_background(scene.height, scene.width, scene.background_seed)

    def paint(box: Box, mask: np.ndarray, rgb: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1][mask] = rgb

    for ring in scene.rings:
        size = ring.box[2] - ring.box[0]
        paint(ring.box, disc_mask(size, inner=1.0 - 2.0 * RING_WIDTH), RING_RGB)
        if ring.dot is not None:
            paint(ring.dot.box, disc_mask(ring.dot.box[2] - ring.dot.box[0]), COLOURS[ring.dot.colour])
    for dot in scene.loose_dots:
        paint(dot.box, disc_mask(dot.box[2] - dot.box[0]), COLOURS[dot.colour])
    return img


def write_scene(scene: Scene, path: str | Path, overviews: Iterable[int] = (2, 4, 8, 16, 32)) -> Path:
    """Write a tiled, DEFLATE-compressed RGB GeoTIFF with averaged overviews (no CRS)."""
    from osgeo import gdal

    gdal.UseExceptions()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = render_scene(scene)
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(
        str(path), scene.width, scene.height, 3, gdal.GDT_Byte,
        options=["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "PHOTOMETRIC=RGB", "INTERLEAVE=PIXEL"],
    )
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(img[:, :, b])
    levels = [f for f in overviews if max(scene.height, scene.width) // f >= 64]
    if levels:
        ds.BuildOverviews("AVERAGE", levels)
    ds.FlushCache()
    ds = None
    return path


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    boxes: tuple[Box, ...]  # the dot the answer needs
    marker: Box  # the ring around it (what is visible at base scale)


def scene_questions(scene: Scene) -> list[Question]:
    """The scene's one question: the colour of the dot in the (only dotted) white ring."""
    target = scene.target
    if target.dot is None:
        raise ValueError(f"scene {scene.seed}: the first ring must hold the dot asked about")
    return [Question(QUESTION, target.dot.colour, (target.dot.box,), target.box)]


def write_dataset(out_dir: str | Path, seeds: Iterable[int], spec: SceneSpec = SceneSpec(), name: str = "needle") -> Path:
    """Rasters + a LLaVA-format conversation JSON (with extra "boxes"/"marker" keys) for `seeds`.

    Returns the JSON path; image paths in it are relative to the JSON's folder.
    """
    out_dir = Path(out_dir)
    records = []
    for seed in seeds:
        scene = make_scene(seed, spec)
        image = f"images/{name}_{seed:07d}.tif"
        write_scene(scene, out_dir / image)
        for qi, q in enumerate(scene_questions(scene)):
            records.append({
                "id": f"{name}_{seed:07d}_{qi}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{q.question}"},
                    {"from": "gpt", "value": q.answer},
                ],
                "boxes": [list(b) for b in q.boxes],
                "marker": list(q.marker),
                "image_size": [scene.width, scene.height],
            })
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(records, indent=1))
    return path
