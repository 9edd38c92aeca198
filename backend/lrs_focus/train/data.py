"""Training data: LLaVA conversation JSON -> (thumbnail + base-level tiles, question/answer turns).

Why this shape: the paper trains the RFM during SFT on the thumbnail and the base level of the
Dynamic Image Pyramid only, without pruning (algorithm.md 4.1); the JSON is the format every
LLaVA SFT set already uses, so real data needs no conversion:

    [{"id": "...", "image": "relative/or/absolute.tif",
      "conversations": [{"from": "human", "value": "<image>\\nQuestion?"},
                        {"from": "gpt", "value": "Answer"}, ...]}, ...]

Image paths are resolved against `image_root` (default: the JSON file's folder). Extra keys
(e.g. the needle set's "boxes") are kept in `Sample.extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BadOptions

IMAGE_TOKEN = "<image>"  # nosec B105: the prompt's image placeholder, not a password


@dataclass
class Sample:
    id: str
    image: Path
    turns: list[tuple[str, str]]  # (human text without <image>, assistant answer)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageViews:
    """What the model sees during training: the thumbnail and every base-level tile, on the same
    pixel path as the engine (exact: CLIP-normalised float16; gdal: uint8)."""

    thumbnail: np.ndarray  # (T, T, 3)
    tiles: np.ndarray  # (n_rows * n_cols, T, T, 3), row-major
    grid: tuple[int, int]  # base-level (n_rows, n_cols)
    token_grid: tuple[int, int]  # base-level stitched token grid after unpadding (no newline column)
    image_size: tuple[int, int]  # original (h, w)
    geometry: Any = None  # the PyramidGeometry (token -> pixel windows for focus recall)


def load_conversations(path: str | Path, image_root: Optional[str | Path] = None) -> list[Sample]:
    """Parse a LLaVA conversation JSON (list of records) into `Sample`s; checks the turn order."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise BadOptions(f"cannot read training data {path}: {exc}") from exc
    if not isinstance(records, list):
        raise BadOptions(f"{path}: expected a JSON list of conversation records")
    root = Path(image_root) if image_root else path.parent
    samples = []
    for i, rec in enumerate(records):
        where = f"{path}: record {i}" + (f" (id {rec.get('id')!r})" if isinstance(rec, dict) and "id" in rec else "")
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        image = rec.get("image") if isinstance(rec, dict) else None
        if not isinstance(image, str) or not image.strip() or not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2:
            raise BadOptions(f"{where} needs an image path and human/gpt turn pairs")
        turns = []
        for human, gpt in zip(conv[0::2], conv[1::2]):
            if not (isinstance(human, dict) and isinstance(gpt, dict)) or human.get("from") != "human" or gpt.get("from") != "gpt":
                raise BadOptions(f"{where}: turns must alternate human, gpt")
            if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
                raise BadOptions(f"{where}: every turn needs a text \"value\"")
            answer = gpt["value"].strip()
            if not answer:  # would teach the model to end its answer at once
                raise BadOptions(f"{where}: empty answer")
            turns.append((human["value"].replace(IMAGE_TOKEN, "").strip(), answer))
        image_path = Path(image)
        extra = {k: v for k, v in rec.items() if k not in ("id", "image", "conversations")}
        samples.append(Sample(str(rec.get("id", i)), image_path if image_path.is_absolute() else root / image_path, turns, extra))
    return samples


def check_samples(samples: list[Sample], tokenizer: Any = None) -> None:
    """Refuse, before any training step, what would otherwise stop a run midway (a missing image)
    or train silently on other text than written: a question or answer holding one of the
    tokenizer's control tokens ('<|im_end|>', '</s>') would end the turn early, as the engine
    refuses for questions."""
    from ..model.prompts import control_tokens_in

    missing = [s for s in samples if not (str(s.image).startswith("/vsi") or s.image.is_file())]  # as RasterSource
    if missing:
        names = ", ".join(f"{s.id!r}: {s.image}" for s in missing[:5])
        raise BadOptions(f"{len(missing)} record(s) name an image that is not a file: {names}"
                         f"{' ...' if len(missing) > 5 else ''}")
    if tokenizer is None:
        return
    for s in samples:
        for question, answer in s.turns:
            for what, text in (("question", question), ("answer", answer)):
                controls = control_tokens_in(tokenizer, text)
                if controls:
                    raise BadOptions(f"record {s.id!r}: the {what} contains the model's control token "
                                     f"{controls[0]!r}; remove it (the model would read another text)")


def image_views(image: str | Path, pyramid_config: Any, pixels: Optional[str] = None) -> ImageViews:
    """Thumbnail + all base-level tiles of a raster, read lazily through the engine's pixel path
    (default: the engine's default), so that training sees the pixels inference will see."""
    from ..answer import DEFAULT_PIXELS, make_pyramid
    from ..raster import RasterSource

    src = RasterSource.open(str(image))
    try:
        pyr = make_pyramid(src, pyramid_config, pixels or DEFAULT_PIXELS)
        geo = pyr.geometry
        base = geo.levels[0]
        n_rows, n_cols = base.grid
        tiles = np.stack([pyr.tile(base, r, c) for r in range(n_rows) for c in range(n_cols)])
        thumbnail = pyr.thumbnail()
    finally:
        src.close()
    if tiles.dtype != np.uint8:  # normalised floats: float16 halves what a cache of views holds
        tiles, thumbnail = tiles.astype(np.float16), thumbnail.astype(np.float16)
    return ImageViews(thumbnail, tiles, (n_rows, n_cols), tuple(geo.token_grid(base)), (src.height, src.width), geo)


class ViewCache:
    """Reads each image's views once: the needle set is small and epochs revisit every image."""

    def __init__(self, pyramid_config: Any):
        self.pyramid_config = pyramid_config
        self._views: dict[Path, ImageViews] = {}

    def __call__(self, image: str | Path) -> ImageViews:
        key = Path(image)
        if key not in self._views:
            self._views[key] = image_views(key, self.pyramid_config)
        return self._views[key]
