"""The score heatmap: where the RFM's attention went, as one grid over the raster.

Cells are the tokens of the finest level the run scored (coarser once the grid would exceed
MAX_CELLS_SIDE on its long side), over the whole image (the sliver a level's unpadding cuts off at
the right and bottom takes its last token's value). Each level paints the cells its tokens cover,
coarse first, so finer tokens overwrite coarser ones where both exist. The grid's window is the
image itself: the last row and column of tokens usually reach past the edge into the padding (by
less than one token; by many pixels on a strip thinner than a token), and a GeoTIFF's cells are
uniform, so the grid is stretched onto the image by less than one cell in all rather than drawn
past the raster's edge. Values are *relative* attention, a token's
score times the number of tokens scored in the same RFM pass: 1 is what a uniform spread gives
each token, so levels with different token counts share one scale.

The grid travels in the result (the service's reply, `ask --json`) as float16, zlib, base64:
a 27k-pixel raster's finest level (976 x 714 tokens) is 1.4 MB raw and a few hundred kB packed,
and a remote client can write the GeoTIFF itself (`heatmap.py`, the plugin).
"""

from __future__ import annotations

import base64
import math
import zlib
from typing import Any, Sequence

import numpy as np

from .focus import LevelRecord
from .pyramid import PyramidGeometry

MAX_CELLS_SIDE = 2048
UNITS = "relative attention (token score x tokens scored at its level; 1 = uniform)"


def _token_size(geo: PyramidGeometry, level: int) -> tuple[float, float]:
    """(height, width) of one token of `level` in original pixels."""
    lv = geo.levels[level]
    step = geo.cfg.tile_size / geo.cfg.tokens_per_tile
    return step * geo.height / lv.resized[0], step * geo.width / lv.resized[1]


def score_grid(geo: PyramidGeometry, records: Sequence[LevelRecord],
               max_side: int = MAX_CELLS_SIDE) -> tuple[np.ndarray, tuple[float, float, float, float], int] | None:
    """(grid float32 with NaN where no level scored, pixel window it covers, finest level), or None."""
    scored = [r for r in records if r.scores is not None and r.canvas.size]
    if not scored:
        return None
    finest = max(scored, key=lambda r: r.level)
    th, tw = _token_size(geo, finest.level)
    # cover the whole image: a level's unpadded token grid can stop short of the edge by < 1 token
    rows, cols = max(finest.canvas.rows, math.ceil(geo.height / th)), max(finest.canvas.cols, math.ceil(geo.width / tw))
    stride = max(1, math.ceil(max(rows, cols) / max_side))
    g_rows, g_cols = math.ceil(rows / stride), math.ceil(cols / stride)
    cell_h, cell_w = th * stride, tw * stride
    grid = np.full((g_rows, g_cols), np.nan, dtype=np.float32)
    eps = 1e-6
    for rec in sorted(scored, key=lambda r: r.level):
        canvas = rec.canvas
        tok = ~canvas.is_newline
        values = (rec.scores[tok] * canvas.size).astype(np.float32)
        h, w = _token_size(geo, rec.level)
        y0, x0 = canvas.row[tok] * h, canvas.col[tok] * w
        # the last token row/column of a level also paints the sliver its unpadding cut off
        y1 = np.where(canvas.row[tok] == canvas.rows - 1, np.maximum(y0 + h, geo.height), y0 + h)
        x1 = np.where(canvas.col[tok] == canvas.cols - 1, np.maximum(x0 + w, geo.width), x0 + w)
        r0 = np.clip(np.floor(y0 / cell_h + eps).astype(np.int64), 0, g_rows - 1)
        c0 = np.clip(np.floor(x0 / cell_w + eps).astype(np.int64), 0, g_cols - 1)
        r1 = np.clip(np.ceil(y1 / cell_h - eps).astype(np.int64), r0 + 1, g_rows)
        c1 = np.clip(np.ceil(x1 / cell_w - eps).astype(np.int64), c0 + 1, g_cols)
        layer = np.full_like(grid, np.nan)
        single = (r1 - r0 == 1) & (c1 - c0 == 1)
        np.fmax.at(layer, (r0[single], c0[single]), values[single])
        for i in np.flatnonzero(~single):  # coarse tokens covering several cells
            block = layer[r0[i]:r1[i], c0[i]:c1[i]]
            np.fmax(block, values[i], out=block)
        grid = np.where(np.isnan(layer), grid, layer)
    return grid, (0.0, 0.0, float(geo.width), float(geo.height)), finest.level


def heatmap_document(geo: PyramidGeometry, records: Sequence[LevelRecord], origin: tuple[int, int] = (0, 0),
                     max_side: int = MAX_CELLS_SIDE) -> dict[str, Any] | None:
    """The result's `heatmap` entry (None when nothing was scored, e.g. thumbnail mode)."""
    out = score_grid(geo, records, max_side)
    if out is None:
        return None
    grid, (x0, y0, x1, y1), level = out
    ox, oy = origin
    packed = zlib.compress(grid.astype("<f2").tobytes(), 6)
    finite = grid[np.isfinite(grid)]
    return {
        "level": int(level),
        "shape": [int(grid.shape[0]), int(grid.shape[1])],
        "window": [x0 + ox, y0 + oy, x1 + ox, y1 + oy],
        "dtype": "float16",
        "encoding": "zlib+base64",
        "data": base64.b64encode(packed).decode("ascii"),
        "nodata": "nan",
        "range": [float(finite.min()), float(finite.max())] if finite.size else None,
        "units": UNITS,
    }


def decode_heatmap(doc: dict[str, Any]) -> np.ndarray:
    """The grid of a `heatmap` entry as float32 (rows, cols), NaN where nothing was scored."""
    if doc.get("dtype") != "float16" or doc.get("encoding") != "zlib+base64":
        raise ValueError(f"unsupported heatmap encoding {doc.get('dtype')}/{doc.get('encoding')}")
    rows, cols = (int(v) for v in doc["shape"])
    raw = zlib.decompress(base64.b64decode(doc["data"]))
    return np.frombuffer(raw, dtype="<f2").reshape(rows, cols).astype(np.float32)
