"""The trace of a selection (DESIGN 9): every level's grid and, for every level a run reached, the
tiles it encoded with their window, score, kept flag and rank."""

from __future__ import annotations

from typing import Any

import numpy as np

from .focus import FocusResult, LevelRecord
from .pyramid import PyramidGeometry


def tile_scores(rec: LevelRecord, reduce: str) -> np.ndarray:
    """Per encoded tile: sum (or max) of its tokens' scores (newline entries excluded)."""
    n = len(rec.canvas.tiles)
    out = np.zeros(n, dtype=np.float64)
    if rec.scores is None or n == 0:
        return out
    tok = rec.canvas.tile >= 0
    idx, vals = rec.canvas.tile[tok], rec.scores[tok]
    if reduce == "max":
        out[:] = -np.inf
        np.maximum.at(out, idx, vals)
        out[~np.isfinite(out)] = 0.0
    else:
        np.add.at(out, idx, vals)
    return out


def build_trace(geo: PyramidGeometry, result: FocusResult, score_reduce: str = "sum",
                origin: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The trace of DESIGN 9: every level's grid; for every level the run reached, the tiles it
    encoded with their window, score, kept and rank (1 = most attention within that level).

    Only encoded tiles are listed: the rest of a level had no tokens, and listing them would make
    the trace of a 27k-pixel raster tens of thousands of entries long. `origin` shifts the windows
    when the pyramid was built on a window of the raster (trace windows are raster pixels).
    """
    by_level = {rec.level: rec for rec in result.records}
    ox, oy = origin
    out_levels = []
    for lv in geo.levels:
        rec = by_level.get(lv.index)
        tiles = []
        if rec is not None:
            scores = tile_scores(rec, score_reduce)
            kept_tiles = set()
            if rec.kept is not None:
                kept_tiles = set(rec.canvas.tile[rec.kept & (rec.canvas.tile >= 0)].tolist())
            order = sorted(range(len(rec.canvas.tiles)), key=lambda i: (-scores[i], rec.canvas.tiles[i]))
            rank = {i: k + 1 for k, i in enumerate(order)} if rec.scores is not None else {}
            for i, (r, c) in enumerate(rec.canvas.tiles):
                x0, y0, x1, y1 = geo.tile_window(lv.index, r, c)
                tiles.append({"row": r, "col": c, "window": [x0 + ox, y0 + oy, x1 + ox, y1 + oy], "encoded": True,
                              "score": float(scores[i]), "kept": i in kept_tiles, "rank": rank.get(i)})
        out_levels.append({"level": lv.index, "scale": lv.scale, "grid": list(lv.grid), "reached": rec is not None,
                           "tiles": tiles})
    trace = {
        "levels": out_levels,
        "thumbnail": {"size": list(geo.thumbnail_size)},
        "stopped_at": result.stopped_at,
        "mode": result.mode,
    }
    trace.update(result.notes)
    return trace
