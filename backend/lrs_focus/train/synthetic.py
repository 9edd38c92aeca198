"""Seeded synthetic "needle" scenes: large textured rasters with a few small coloured shapes.

Why: with no real weights and no real data on CPU, the only way to show that the method works end
to end is a task whose answer sits in one small object that the thumbnail cannot resolve. Every
question carries the pixel boxes of the objects it depends on, so focus recall can be measured.

Scenes are pure data (`make_scene`); `render_scene` paints them; `write_scene` writes a tiled
GeoTIFF with overviews through GDAL (so the lazy pyramid reads it the way it reads real rasters);
`scene_questions` turns a scene into questions with answers and boxes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "blue": (35, 75, 235),
    "yellow": (245, 225, 30),
    "white": (250, 250, 250),
}
#: dull colours of decoy objects: clutter the scene, never asked about
DECOY_COLOURS: dict[str, tuple[int, int, int]] = {"black": (25, 25, 25), "brown": (120, 70, 30)}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive
    decoy: bool = False

    @property
    def size(self) -> int:
        return self.box[2] - self.box[0]


@dataclass(frozen=True)
class Scene:
    seed: int
    height: int
    width: int
    objects: tuple[SceneObject, ...]
    background_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn: sizes in pixels of the full-resolution raster."""

    size_range: tuple[int, int] = (2048, 3072)  # long side of the raster
    aspect_range: tuple[float, float] = (0.75, 1.0)  # short side / long side
    object_size_range: tuple[int, int] = (48, 96)
    n_objects: tuple[int, int] = (3, 4)  # inclusive range of coloured objects (questions are about these)
    n_decoys: tuple[int, int] = (0, 0)  # inclusive range of dull decoys, shapes unlike every coloured object
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)


def make_scene(seed: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Draw a scene: sizes, then non-overlapping objects; the target shape is unique (see questions)."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.integers(spec.size_range[0], spec.size_range[1] + 1))
    short_side = int(round(long_side * rng.uniform(*spec.aspect_range)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    n = int(rng.integers(spec.n_objects[0], spec.n_objects[1] + 1))
    # distinct colours per scene keep every colour question answerable from one object only
    colours = list(rng.permutation(spec.colours))[:n]
    while len(colours) < n:
        colours.append(str(rng.choice(spec.colours)))
    # shapes: at least one shape occurs exactly once
    shapes = [str(rng.choice(spec.shapes)) for _ in range(n)]
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    for i in range(n):
        box = _place(rng, spec, width, height, boxes)
        boxes.append(box)
        objects.append(SceneObject(shape=shapes[i], colour=str(colours[i]), box=box))
    decoy_shapes = [s for s in spec.shapes if s not in shapes]
    n_decoys = int(rng.integers(spec.n_decoys[0], spec.n_decoys[1] + 1)) if decoy_shapes else 0
    for _ in range(n_decoys):
        box = _place(rng, spec, width, height, boxes)
        boxes.append(box)
        objects.append(SceneObject(shape=str(rng.choice(decoy_shapes)), colour=str(rng.choice(list(DECOY_COLOURS))),
                                   box=box, decoy=True))
    return Scene(seed=seed, height=height, width=width, objects=tuple(objects), background_seed=seed * 7919 + 1)


def _far_apart(a: Sequence[int], b: Sequence[int]) -> bool:
    gap = max(a[2] - a[0], b[2] - b[0]) * 2
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng: np.random.Generator, spec: "SceneSpec", width: int, height: int,
           boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """A square box of a random size away from `boxes` (the last try wins after 200)."""
    for _ in range(200):
        size = int(rng.integers(spec.object_size_range[0], spec.object_size_range[1] + 1))
        x0 = int(rng.integers(size, width - 2 * size))
        y0 = int(rng.integers(size, height - 2 * size))
        box = (x0, y0, x0 + size, y0 + size)
        if all(_far_apart(box, other) for other in boxes):
            break
    return box


def render_background(height: int, width: int, seed: int) -> np.ndarray:
    """Earth-toned texture: smooth low-frequency fields plus fine grain (uint8, h x w x 3)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(3, height, width)
    for cells, amplitude in ((6, 40.0), (40, 18.0), (200, 10.0)):
        coarse = torch.rand(1, 1, cells, max(2, cells * width // height), generator=gen) * 2 - 1
        field = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        out += field * amplitude
    base = torch.tensor([95.0, 110.0, 70.0]).view(3, 1, 1)  # greenish-brown ground
    tint = torch.tensor([1.0, 0.9, 0.75]).view(3, 1, 1)
    grain = (torch.rand(1, height, width, generator=gen) * 2 - 1) * 8
    img = base + out * tint + grain
    return img.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean mask (size x size) of a shape filling its box."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        c = size / 2
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up, base at the bottom
        half = size / 2
        return np.abs(xx - half) <= half * yy / size
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene) -> np.ndarray:
    """The full-resolution RGB image of a scene (uint8, h x w x 3)."""
    img = render_background(scene.height, scene.width, scene.background_seed)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        mask = shape_mask(obj.shape, x1 - x0)
        img[y0:y1, x0:x1][mask] = DECOY_COLOURS[obj.colour] if obj.decoy else COLOURS[obj.colour]
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
    kind: str  # "colour" | "count"
    boxes: tuple[tuple[int, int, int, int], ...] = field(default_factory=tuple)


def scene_questions(scene: Scene, kinds: Sequence[str] = ("colour",)) -> list[Question]:
    """Questions answerable only by looking at small objects, with the boxes they need.

    colour: "What colour is the triangle?" for every coloured object whose shape occurs exactly once
            among the coloured objects (decoys have other shapes).
    count:  "How many circles are there?" for every shape (answers may be "zero"), decoys included.
    """
    out: list[Question] = []
    by_shape: dict[str, list[SceneObject]] = {s: [] for s in SHAPES}
    for obj in scene.objects:
        if not obj.decoy:
            by_shape[obj.shape].append(obj)
    if "colour" in kinds:
        for shape, objs in by_shape.items():
            if len(objs) == 1:
                out.append(Question(f"What colour is the {shape}?", objs[0].colour, "colour", (objs[0].box,)))
    if "count" in kinds:
        by_shape = {s: [o for o in scene.objects if o.shape == s] for s in SHAPES}
        for shape, objs in by_shape.items():
            out.append(
                Question(f"How many {PLURAL[shape]} are there?", NUMBER_WORDS[len(objs)], "count",
                         tuple(o.box for o in objs))
            )
    return out


def write_dataset(
    out_dir: str | Path,
    seeds: Iterable[int],
    spec: SceneSpec = SceneSpec(),
    kinds: Sequence[str] = ("colour",),
    name: str = "needle",
) -> Path:
    """Rasters + a LLaVA-format conversation JSON (with extra "answer"/"boxes" keys) for `seeds`.

    Returns the JSON path; image paths in it are relative to the JSON's folder.
    """
    out_dir = Path(out_dir)
    records = []
    for seed in seeds:
        scene = make_scene(seed, spec)
        image = f"images/{name}_{seed:05d}.tif"
        write_scene(scene, out_dir / image)
        for qi, q in enumerate(scene_questions(scene, kinds)):
            records.append({
                "id": f"{name}_{seed:05d}_{qi}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{q.question}"},
                    {"from": "gpt", "value": q.answer},
                ],
                "kind": q.kind,
                "boxes": [list(b) for b in q.boxes],
                "image_size": [scene.width, scene.height],
            })
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(records, indent=1))
    return path
