"""Coarse-to-fine selection and pruning (Algorithm 1 of the paper, DESIGN 3.4 and 3.6).

The algorithm is written against two callables so that it can run with the real model, with a
forced score in tests and with a synthetic score in the token benchmark (no weights needed):

    encode(level, tiles) -> {(row, col): tensor (T, T, d)}   or None when simulating
    score(canvas)        -> float array (rows, cols + 1), NaN where a token is not present

A *canvas* is one level's stitched token grid after bottom/right unpadding plus the newline
column; `valid` marks the tokens that exist (tiles encoded, newline tokens present).

Modes:
  paper      Algorithm 1: score level p, keep the top alpha of its tile tokens, zoom into the
             level-(p+1) tiles holding a kept token's centre; stop when more than N_max tiles
             would be needed or at the finest level. Newline tokens close the rows but are not
             candidates; positions are contiguous.
  released   the public code: score the base level (newline tokens included, all kept), map by
             floor(r*n_h'/G_h), floor(c*n_w'/G_w) with the newline-inclusive width, encode those
             tiles of the next level, score them with unselected tiles keeping their positions
             (masked), keep top alpha of the present tokens plus every newline token.
  thumbnail  the thumbnail alone (LLaVA-1.5 style baseline).
  all-tiles  every tile of the finest level used, nothing pruned (full-resolution baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .pyramid import PyramidGeometry

Tile = tuple[int, int]
EncodeFn = Callable[[int, list[Tile]], Optional[dict[Tile, Any]]]
CheckFn = Callable[[str, Optional[int], float, str], None]


@dataclass
class Canvas:
    level: int
    rows: int
    cols: int  # token columns without the newline column
    valid: np.ndarray  # bool (rows, cols + 1)
    tiles: list[Tile]  # encoded tiles, raster order
    feats: Any = None  # torch tensor (rows, cols + 1, d) when a model encodes
    keep_gaps: bool = False  # released stage B: absent tokens keep their positions

    @property
    def newline_mask(self) -> np.ndarray:
        m = np.zeros(self.valid.shape, dtype=bool)
        m[:, -1] = True
        return m

    def flat_valid(self) -> np.ndarray:
        return np.flatnonzero(self.valid.ravel())


@dataclass
class LevelRecord:
    level: int
    grid: tuple[int, int]
    scores: np.ndarray | None = None  # canvas scores (NaN = absent)
    kept: np.ndarray | None = None  # bool (rows, cols + 1)
    encoded: list[Tile] = field(default_factory=list)
    canvas_shape: tuple[int, int] | None = None


@dataclass
class FocusResult:
    mode: str
    canvas: Canvas | None  # the canvas whose kept tokens go to the LLM (None: thumbnail only)
    keep: np.ndarray  # flat indices into canvas (rows * (cols + 1)), raster order
    records: list[LevelRecord]
    stopped_at: int | None
    tiles_encoded: int
    rfm_vision_tokens: list[int]  # vision tokens (thumbnail + ':' + present tile tokens) per RFM pass


def build_canvas(
    geo: PyramidGeometry,
    level: int,
    tiles: list[Tile],
    encode: EncodeFn,
    all_newlines: bool,
    keep_gaps: bool,
    unpad_hw: tuple[int, int] | None = None,
    newline: Any = None,
) -> Canvas:
    """Encode `tiles` of `level` and lay their tokens on the level's unpadded grid + newline column."""
    rows, cols = geo.token_grid(level, unpad_hw)
    t = geo.cfg.tokens_per_tile
    tiles = sorted(set(tiles))
    valid = np.zeros((rows, cols + 1), dtype=bool)
    for r, c in tiles:
        valid[r * t : min((r + 1) * t, rows), c * t : min((c + 1) * t, cols)] = True
    valid[:, cols] = True if all_newlines else valid[:, :cols].any(axis=1)
    feats = None
    encoded = encode(level, tiles)
    if encoded is not None:
        import torch

        first = next(iter(encoded.values()))
        feats = torch.zeros(rows, cols + 1, first.shape[-1], dtype=first.dtype, device=first.device)
        for (r, c), tok in encoded.items():
            h = max(0, min(t, rows - r * t))
            w = max(0, min(t, cols - c * t))
            feats[r * t : r * t + h, c * t : c * t + w] = tok[:h, :w]
        feats[:, cols] = newline.to(first.dtype) if newline is not None else 0
    return Canvas(level, rows, cols, valid, tiles, feats, keep_gaps)


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k best candidates (ties broken by raster order), sorted in raster order."""
    idx = np.flatnonzero(candidates.ravel())
    if k <= 0 or idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    vals = scores.ravel()[idx]
    order = np.argsort(-vals, kind="stable")[:k]
    return np.sort(idx[order])


def tile_scores(canvas: Canvas, scores: np.ndarray, t: int, reduce: str) -> dict[Tile, float]:
    """A tile's score: sum (or max) of its present tokens' attention (newline tokens excluded)."""
    out: dict[Tile, float] = {}
    for r, c in canvas.tiles:
        block = scores[r * t : min((r + 1) * t, canvas.rows), c * t : min((c + 1) * t, canvas.cols)]
        block = block[np.isfinite(block)]
        out[(r, c)] = float(block.max() if reduce == "max" else block.sum()) if block.size else 0.0
    return out


def kept_tiles(canvas: Canvas, kept: np.ndarray, t: int) -> set[Tile]:
    rr, cc = np.nonzero(kept[:, : canvas.cols])
    return {(int(r) // t, int(c) // t) for r, c in zip(rr, cc)}


def _noop(stage: str, level: int | None, fraction: float, message: str) -> None:
    return None


def run_focus(
    geo: PyramidGeometry,
    mode: str,
    encode: EncodeFn,
    score: Callable[[Canvas], np.ndarray],
    alpha: float = 0.25,
    n_max: int = 80,
    max_levels: int | None = None,
    newline: Any = None,
    check: CheckFn = _noop,
    thumbnail_tokens: int = 576,
) -> FocusResult:
    """Run one selection; `check(stage, level, fraction, message)` is called at every stage boundary
    (the engine's progress + cancel hook)."""
    levels = geo.levels[: max_levels or len(geo.levels)]
    n_vis0 = thumbnail_tokens + 1
    if mode == "thumbnail":
        return FocusResult(mode, None, np.zeros(0, dtype=np.int64), [], None, 0, [])
    if mode == "all-tiles":
        lv = levels[-1]
        tiles = [(r, c) for r in range(lv.grid[0]) for c in range(lv.grid[1])]
        check("encode", lv.index, 0.0, f"encoding all {len(tiles)} tiles of level {lv.index}")
        canvas = build_canvas(geo, lv.index, tiles, encode, all_newlines=True, keep_gaps=False, newline=newline)
        keep = canvas.flat_valid()
        kept = canvas.valid.copy()
        rec = LevelRecord(lv.index, lv.grid, None, kept, canvas.tiles, canvas.valid.shape)
        return FocusResult(mode, canvas, keep, [rec], lv.index, len(tiles), [])
    if mode == "released":
        return _released(geo, levels, encode, score, alpha, newline, check, n_vis0)
    if mode != "paper":
        raise ValueError(f"unknown focus mode {mode!r}")

    t = geo.cfg.tokens_per_tile
    records: list[LevelRecord] = []
    rfm_tokens: list[int] = []
    base = levels[0]
    tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
    n_encoded = len(tiles)
    check("encode", base.index, 0.0, f"encoding {len(tiles)} base tiles")
    canvas = build_canvas(geo, base.index, tiles, encode, all_newlines=False, keep_gaps=False, newline=newline)
    p = 0
    while True:
        check("focus", canvas.level, 0.0, f"scoring level {canvas.level}")
        scores = score(canvas)
        rfm_tokens.append(n_vis0 + int(canvas.valid.sum()))
        candidates = canvas.valid & ~canvas.newline_mask
        n_cand = int(candidates.sum())
        keep = top_k(scores, candidates, max(1, int(math.floor(alpha * n_cand))))
        kept = np.zeros(canvas.valid.shape, dtype=bool)
        kept.ravel()[keep] = True
        rec = LevelRecord(canvas.level, levels[p].grid, scores, kept, canvas.tiles, canvas.valid.shape)
        records.append(rec)
        if p == len(levels) - 1:
            stopped = canvas.level
            break
        nxt = levels[p + 1]
        rr, cc = np.nonzero(kept[:, : canvas.cols])
        next_tiles = sorted({geo.tile_at(nxt.index, *geo.token_center(canvas.level, int(r), int(c))) for r, c in zip(rr, cc)})
        if len(next_tiles) > n_max:
            stopped = canvas.level
            break
        check("encode", nxt.index, 0.0, f"encoding {len(next_tiles)} tiles of level {nxt.index}")
        canvas = build_canvas(geo, nxt.index, next_tiles, encode, all_newlines=False, keep_gaps=False, newline=newline)
        n_encoded += len(next_tiles)
        p += 1
    # the LLM reads the kept tokens of the last scored level, each kept row closed by its newline
    rows_with = kept[:, : canvas.cols].any(axis=1)
    kept[:, canvas.cols] = rows_with
    final = np.flatnonzero(kept.ravel())
    return FocusResult("paper", canvas, final, records, stopped, n_encoded, rfm_tokens)


def _released_keep(canvas: Canvas, score, alpha: float, n_vis0: int, rfm_tokens: list[int]):
    """One released RFM pass: top floor(alpha * present) tokens, plus every newline token."""
    scores = score(canvas)
    n_present = int(canvas.valid.sum())
    rfm_tokens.append(n_vis0 + n_present)
    sel = top_k(scores, canvas.valid, int(math.floor(alpha * n_present)))
    kept = np.zeros(canvas.valid.shape, dtype=bool)
    kept.ravel()[sel] = True
    kept[:, canvas.cols] = True  # newline tokens are always kept
    return scores, kept


def _released(geo, levels, encode, score, alpha, newline, check, n_vis0) -> FocusResult:
    """Exactly one zoom step from the base level (DESIGN 3.6)."""
    records: list[LevelRecord] = []
    rfm_tokens: list[int] = []
    base = levels[0]
    tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
    check("encode", base.index, 0.0, f"encoding {len(tiles)} base tiles")
    # the released code unpads the base level against the original image size
    canvas = build_canvas(geo, base.index, tiles, encode, all_newlines=True, keep_gaps=False, unpad_hw=geo.image_size, newline=newline)
    check("focus", base.index, 0.0, "scoring the base level")
    scores, kept = _released_keep(canvas, score, alpha, n_vis0, rfm_tokens)
    records.append(LevelRecord(base.index, base.grid, scores, kept, canvas.tiles, canvas.valid.shape))
    nxt = levels[1] if len(levels) > 1 else levels[0]
    g_h, g_w = canvas.valid.shape  # newline-inclusive width, as released
    rr, cc = np.nonzero(kept)
    next_tiles = sorted({(int(r) * nxt.grid[0] // g_h, int(c) * nxt.grid[1] // g_w) for r, c in zip(rr, cc)})
    check("encode", nxt.index, 0.0, f"encoding {len(next_tiles)} tiles of level {nxt.index}")
    canvas = build_canvas(geo, nxt.index, next_tiles, encode, all_newlines=True, keep_gaps=True, newline=newline)
    check("focus", nxt.index, 0.0, f"scoring level {nxt.index}")
    scores, kept = _released_keep(canvas, score, alpha, n_vis0, rfm_tokens)
    rec = LevelRecord(nxt.index, nxt.grid, scores, kept, canvas.tiles, canvas.valid.shape)
    if nxt.index == base.index:
        records[0] = rec
    else:
        records.append(rec)
    final = np.flatnonzero(kept.ravel())
    return FocusResult("released", canvas, final, records, nxt.index, len(tiles) + len(next_tiles), rfm_tokens)


def build_trace(geo: PyramidGeometry, result: FocusResult, score_reduce: str = "sum", levels_shown: int | None = None) -> dict[str, Any]:
    """The trace of DESIGN 9: every level's grid; for every level the run reached, every tile's
    window, encoded, score, kept and rank.

    Levels the run never reached (finer than where it stopped) give their grid and `reached:
    false` but list no tiles: nothing happened there, and listing them would make the trace of a
    27k-pixel raster hundreds of thousands of entries long for small-tile models.
    """
    t = geo.cfg.tokens_per_tile
    by_level = {rec.level: rec for rec in result.records}
    canvases: dict[int, Canvas] = {}
    out_levels = []
    for lv in geo.levels[: levels_shown or len(geo.levels)]:
        rec = by_level.get(lv.index)
        scores: dict[Tile, float] = {}
        kept_set: set[Tile] = set()
        encoded: set[Tile] = set()
        if rec is not None:
            encoded = set(rec.encoded)
            rows, cols1 = rec.canvas_shape
            canvas = canvases.get(lv.index) or Canvas(lv.index, rows, cols1 - 1, np.zeros((rows, cols1), bool), list(rec.encoded))
            if rec.scores is not None:
                scores = tile_scores(canvas, rec.scores, t, score_reduce)
            if rec.kept is not None:
                kept_set = kept_tiles(canvas, rec.kept, t)
        ranked = sorted(scores, key=lambda k: (-scores[k], k))
        rank = {tile: i + 1 for i, tile in enumerate(ranked)}
        tiles = []
        for r in range(lv.grid[0] if rec is not None else 0):
            for c in range(lv.grid[1]):
                tiles.append(
                    {
                        "row": r,
                        "col": c,
                        "window": list(geo.tile_window(lv.index, r, c)),
                        "encoded": (r, c) in encoded,
                        "score": float(scores.get((r, c), 0.0)),
                        "kept": (r, c) in kept_set,
                        "rank": rank.get((r, c)),
                    }
                )
        out_levels.append({"level": lv.index, "scale": lv.scale, "grid": list(lv.grid), "reached": rec is not None,
                           "tiles": tiles})
    return {
        "levels": out_levels,
        "thumbnail": {"size": list(geo.thumbnail_size)},
        "stopped_at": result.stopped_at,
        "mode": result.mode,
    }
