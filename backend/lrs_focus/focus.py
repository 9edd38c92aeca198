"""Coarse-to-fine selection and pruning (Algorithm 1 of the paper, DESIGN 3.4 and 3.6).

The algorithm is written against two callables so that it runs with the real model, with a forced
score in tests and with a synthetic score in the benchmarks (no weights needed):

    encode(level, tiles) -> tensor (len(tiles), T, T, d) in the order given, or None (simulation)
    score(canvas)        -> float array (canvas.size,): one RFM score per canvas entry

Memory follows the work, not the raster: a *canvas* is sparse, the list of the present tokens of
one level in raster order (each row of present tokens closed by its newline entry), plus the
features of the encoded tiles only (n_tiles, T, T, d). What the RFM and the LLM read is a gather
of those entries; no array anywhere has the size of a level's full token grid (a 27k-pixel
raster's finest level has 700,000 token positions; a raster may *declare* 10^12 pixels).

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
  all-tiles  every tile of the finest level, nothing pruned (the full-resolution baseline), capped
             to the finest level with at most `all_tiles_max` tiles (4 x N_max by default in the
             engine) so that encoding stays bounded on any raster; the trace names the cap.

Sequence budget: the LLM's input (text + thumbnail + ':' + vision) must fit its max length, and
the text is never cut. `vision_budget` is what is left for tile and newline tokens; when the kept
tokens exceed it the lowest-scored are dropped (raster order kept, a row's newline kept while the
row keeps a token). In `all-tiles`, which has no scores, one RFM pass scores the level only when
dropping is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .pyramid import PyramidGeometry

Tile = tuple[int, int]
EncodeFn = Callable[[int, list[Tile]], Any]
CheckFn = Callable[[str, Optional[int], float, str], None]


@dataclass
class Canvas:
    """The present tokens of one level, in raster order, and the features they are gathered from.

    Entry i is token (row[i], col[i]) of the level's unpadded token grid (rows x cols), or the
    newline token of row[i] when col[i] == cols; tile[i] indexes `tiles` (-1 for newlines).
    """

    level: int
    rows: int
    cols: int  # token columns without the newline column
    tiles: list[Tile]  # encoded tiles, raster order
    row: np.ndarray
    col: np.ndarray
    tile: np.ndarray
    feats: Any = None  # tensor (len(tiles), T, T, d) when a model encodes, else None
    keep_gaps: bool = False  # released stage B: absent tokens keep their positions

    @property
    def size(self) -> int:
        return int(self.row.size)

    @property
    def is_newline(self) -> np.ndarray:
        return self.col == self.cols

    @property
    def offsets(self) -> np.ndarray:
        """Each entry's position in the level's dense (rows, cols + 1) grid, raster order."""
        return self.row * (self.cols + 1) + self.col

    @property
    def span(self) -> int:
        """Positions the dense grid occupies (released stage B numbers positions over it)."""
        return self.rows * (self.cols + 1)

    def skeleton(self) -> "Canvas":
        """The same entries without features (what a trace record keeps)."""
        return Canvas(self.level, self.rows, self.cols, self.tiles, self.row, self.col, self.tile, None, self.keep_gaps)

    def gather(self, newline: Any, index: np.ndarray | None = None) -> Any:
        """Features of entries `index` (default: all) as a (k, d) tensor: the sequence's tile part."""
        import torch

        if self.feats is None:
            raise ValueError("canvas has no features (simulation)")
        idx = np.arange(self.size) if index is None else np.asarray(index, dtype=np.int64)
        feats = self.feats
        d = feats.shape[-1]
        out = newline.to(device=feats.device, dtype=feats.dtype).expand(idx.size, d).clone()
        tile = self.tile[idx]
        sel = np.flatnonzero(tile >= 0)
        if sel.size:
            t = feats.shape[1]
            origin = np.asarray(self.tiles, dtype=np.int64).reshape(-1, 2)[tile[sel]] * t
            rr = self.row[idx][sel] - origin[:, 0]
            cc = self.col[idx][sel] - origin[:, 1]
            as_t = lambda a: torch.as_tensor(a, device=feats.device)  # noqa: E731
            out[as_t(sel)] = feats[as_t(tile[sel]), as_t(rr), as_t(cc)]
        return out


@dataclass
class LevelRecord:
    level: int
    grid: tuple[int, int]
    canvas: Canvas  # entries only (no features)
    scores: np.ndarray | None = None  # (canvas.size,) RFM scores, None when not scored
    kept: np.ndarray | None = None  # (canvas.size,) bool

    @property
    def encoded(self) -> list[Tile]:
        return self.canvas.tiles


@dataclass
class FocusResult:
    mode: str
    canvas: Canvas | None  # the canvas whose kept entries go to the LLM (None: thumbnail only)
    keep: np.ndarray  # entry indices into `canvas`, raster order (tile tokens and newlines)
    records: list[LevelRecord]
    stopped_at: int | None
    tiles_encoded: int
    rfm_vision_tokens: list[int]  # vision tokens (thumbnail + ':' + present tile tokens) per RFM pass
    vision_tokens_dropped: int = 0  # kept tokens dropped to fit the sequence budget
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. the all-tiles level cap


def build_canvas(
    geo: PyramidGeometry,
    level: int,
    tiles: list[Tile],
    encode: EncodeFn,
    all_newlines: bool,
    keep_gaps: bool,
    unpad_hw: tuple[int, int] | None = None,
) -> Canvas:
    """Encode `tiles` of `level` and list their tokens on the level's unpadded grid, raster order.

    Newline entries close every row (`all_newlines`, released) or the rows holding a token.
    """
    rows, cols = geo.token_grid(level, unpad_hw)
    t = geo.cfg.tokens_per_tile
    tiles = sorted(set(tiles))
    parts_r, parts_c, parts_t = [], [], []
    for i, (r, c) in enumerate(tiles):
        h, w = max(0, min(t, rows - r * t)), max(0, min(t, cols - c * t))
        if h and w:
            rr, cc = np.divmod(np.arange(h * w, dtype=np.int64), w)
            parts_r.append(rr + r * t)
            parts_c.append(cc + c * t)
            parts_t.append(np.full(h * w, i, dtype=np.int64))
    tok_r = np.concatenate(parts_r) if parts_r else np.zeros(0, dtype=np.int64)
    tok_c = np.concatenate(parts_c) if parts_c else np.zeros(0, dtype=np.int64)
    tok_t = np.concatenate(parts_t) if parts_t else np.zeros(0, dtype=np.int64)
    nl_rows = np.arange(rows, dtype=np.int64) if all_newlines else np.unique(tok_r)
    row = np.concatenate([tok_r, nl_rows])
    col = np.concatenate([tok_c, np.full(nl_rows.size, cols, dtype=np.int64)])
    tile = np.concatenate([tok_t, np.full(nl_rows.size, -1, dtype=np.int64)])
    order = np.argsort(row * (cols + 1) + col, kind="stable")
    feats = encode(level, tiles) if tiles else None
    return Canvas(level, rows, cols, tiles, row[order], col[order], tile[order], feats, keep_gaps)


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best candidates (ties broken by raster order), sorted in raster order."""
    idx = np.flatnonzero(candidates)
    if k <= 0 or idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores[idx], kind="stable")[:k]
    return np.sort(idx[order])


def close_rows(canvas: Canvas, tokens: np.ndarray) -> np.ndarray:
    """Tile-token entries plus the newline entry of every row they occupy, raster order."""
    rows = np.unique(canvas.row[tokens])
    newlines = np.flatnonzero(canvas.is_newline & np.isin(canvas.row, rows))
    return np.union1d(tokens, newlines)


def fit_budget(canvas: Canvas, keep: np.ndarray, scores: np.ndarray | None, budget: int | None,
               all_newlines: bool) -> tuple[np.ndarray, int]:
    """Drop the lowest-scored kept tokens until tokens + newlines fit `budget`. Returns (keep, dropped).

    Newlines: every row's (`all_newlines`, released) or only those of rows still holding a kept
    token; when every row's newline leaves no room for a token, the row rule applies instead (a
    budget of exactly the newlines would send the LLM newlines and no image token).
    """
    if budget is None or keep.size <= budget:
        return keep, 0
    budget = max(0, int(budget))
    is_nl = canvas.is_newline[keep]
    tokens = keep[~is_nl]
    order = tokens[np.argsort(-scores[tokens], kind="stable")] if scores is not None else tokens
    n_nl_all = int(canvas.is_newline.sum())
    if all_newlines and n_nl_all < budget:
        chosen = np.sort(order[: budget - n_nl_all])
        out = np.union1d(chosen, np.flatnonzero(canvas.is_newline))
        return out, int(tokens.size - chosen.size)
    # row rule: count a row's newline with its first token, in score order
    seen: set[int] = set()
    used, n = 0, 0
    for entry in order:
        cost = 1 if int(canvas.row[entry]) in seen else 2
        if used + cost > budget:
            break
        seen.add(int(canvas.row[entry]))
        used += cost
        n += 1
    chosen = np.sort(order[:n])
    return close_rows(canvas, chosen), int(tokens.size - chosen.size)


def zoom_tiles(geo: PyramidGeometry, canvas: Canvas, keep: np.ndarray, level: int) -> list[Tile]:
    """Tiles of `level` holding the centres of the kept tokens, raster order (paper mode).

    A centre in the sliver that the next level's unpadding cuts off (its last tile row or column
    can hold less image than one token) goes to the nearest tile that has tokens: a tile without
    tokens would be encoded for nothing, and if it were the only one the zoom would leave the LLM
    no vision token at all.
    """
    rows, cols = geo.token_grid(level)
    t = geo.cfg.tokens_per_tile
    last_r, last_c = (rows - 1) // t, (cols - 1) // t
    out = set()
    for r, c in zip(canvas.row[keep], canvas.col[keep]):
        tr, tc = geo.tile_at(level, *geo.token_center(canvas.level, int(r), int(c)))
        out.add((min(tr, last_r), min(tc, last_c)))
    return sorted(out)


def _noop(stage: str, level: int | None, fraction: float, message: str) -> None:
    return None


def canvas_entries(geo: PyramidGeometry, level: int, tiles: list[Tile]) -> int:
    """Entries (tile tokens + one newline per occupied row) a canvas of these tiles holds, before
    encoding anything: what bounds a scoring pass's length."""
    rows, cols = geo.token_grid(level)
    t = geo.cfg.tokens_per_tile
    heights = {r: max(0, min(t, rows - r * t)) for r, _ in tiles}
    tokens = sum(heights[r] * max(0, min(t, cols - c * t)) for r, c in set(tiles))
    return int(tokens + sum(heights.values()))


def run_focus(
    geo: PyramidGeometry,
    mode: str,
    encode: EncodeFn,
    score: Callable[[Canvas], np.ndarray],
    alpha: float = 0.25,
    n_max: int = 80,
    max_levels: int | None = None,
    check: CheckFn = _noop,
    thumbnail_tokens: int = 576,
    vision_budget: int | None = None,
    all_tiles_max: int | None = None,
    pass_limit: int | None = None,
    pass_entries: Callable[[int, list[Tile]], int] | None = None,
) -> FocusResult:
    """Run one selection; `check(stage, level, fraction, message)` is called at every stage boundary
    (the engine's progress + cancel hook). `vision_budget`: tile + newline tokens the LLM can take
    (None: no limit). `all_tiles_max`: tile cap of the all-tiles mode (None: 4 x n_max).
    `pass_limit`: the most canvas entries one scoring pass may hold (the model's positions less the
    text and thumbnail): paper mode stops zooming before a level that would exceed it, all-tiles
    takes a coarser level (the N_max and tile caps bound tiles, not tokens). None: no limit.
    `pass_entries(level, tiles)`: what such a pass holds (default `canvas_entries`; Qwen-VL counts
    its tiles' tokens and captions)."""
    levels = geo.levels[: max_levels or len(geo.levels)]
    entries_of = pass_entries or (lambda level, tiles: canvas_entries(geo, level, tiles))
    n_vis0 = thumbnail_tokens + 1
    if mode == "thumbnail":
        return FocusResult(mode, None, np.zeros(0, dtype=np.int64), [], None, 0, [])
    if mode == "all-tiles":
        return _all_tiles(geo, levels, encode, score, check, n_vis0, vision_budget, all_tiles_max or 4 * n_max,
                          pass_limit, entries_of)
    if mode == "released":
        return _released(geo, levels, encode, score, alpha, check, n_vis0, vision_budget)
    if mode != "paper":
        raise ValueError(f"unknown focus mode {mode!r}")

    records: list[LevelRecord] = []
    rfm_tokens: list[int] = []
    notes: dict[str, Any] = {}
    base = levels[0]
    tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
    n_encoded = len(tiles)
    check("encode", base.index, 0.0, f"encoding {len(tiles)} base tiles")
    canvas = build_canvas(geo, base.index, tiles, encode, all_newlines=False, keep_gaps=False)
    p = 0
    while True:
        check("focus", canvas.level, 0.0, f"scoring level {canvas.level}")
        scores = np.asarray(score(canvas), dtype=np.float64)
        rfm_tokens.append(n_vis0 + canvas.size)
        candidates = ~canvas.is_newline
        keep = top_k(scores, candidates, max(1, int(math.floor(alpha * int(candidates.sum())))))
        rec = LevelRecord(canvas.level, levels[p].grid, canvas.skeleton(), scores, _mask(canvas, keep))
        records.append(rec)
        if p == len(levels) - 1:
            break
        nxt = levels[p + 1]
        next_tiles = zoom_tiles(geo, canvas, keep, nxt.index)
        if not next_tiles or len(next_tiles) > n_max:
            break
        entries = entries_of(nxt.index, next_tiles)
        if pass_limit is not None and entries > pass_limit:
            notes["zoom_stopped"] = {"level": nxt.index, "tiles": len(next_tiles), "pass_entries": entries,
                                     "pass_limit": int(pass_limit), "reason": "the scoring pass would exceed the "
                                     "model's positions or the memory budget (trace.budget)"}
            break
        check("encode", nxt.index, 0.0, f"encoding {len(next_tiles)} tiles of level {nxt.index}")
        canvas = None  # the coarser level's features are no longer needed
        canvas = build_canvas(geo, nxt.index, next_tiles, encode, all_newlines=False, keep_gaps=False)
        n_encoded += len(next_tiles)
        p += 1
    # the LLM reads the kept tokens of the last scored level, each kept row closed by its newline
    final, dropped = fit_budget(canvas, close_rows(canvas, keep), scores, vision_budget, all_newlines=False)
    records[-1].kept = _mask(canvas, final) & ~canvas.is_newline
    return FocusResult("paper", canvas, final, records, canvas.level, n_encoded, rfm_tokens, dropped, notes)


def _mask(canvas: Canvas, index: np.ndarray) -> np.ndarray:
    out = np.zeros(canvas.size, dtype=bool)
    out[index] = True
    return out


def _all_tiles(geo, levels, encode, score, check, n_vis0, vision_budget, max_tiles, pass_limit=None,
               entries_of=None) -> FocusResult:
    """Every tile of the finest level with at most `max_tiles` tiles (and, when it may have to be
    scored, at most `pass_limit` canvas entries); scored only to drop tokens."""
    finest = levels[-1]

    def fits(lv) -> bool:
        every = [(r, c) for r in range(lv.grid[0]) for c in range(lv.grid[1])]
        entries = entries_of(lv.index, every) if entries_of else canvas_entries(geo, lv.index, every)
        return len(every) <= max_tiles and (pass_limit is None or entries <= pass_limit)

    usable = [lv for lv in levels if fits(lv)] or [levels[0]]
    lv = usable[-1]
    notes = {}
    if lv.index != finest.index:
        notes["all_tiles_capped"] = {"finest_level": finest.index, "tiles": finest.grid[0] * finest.grid[1],
                                     "limit": int(max_tiles), "level_used": lv.index}
        if pass_limit is not None:
            notes["all_tiles_capped"]["pass_limit"] = int(pass_limit)
    tiles = [(r, c) for r in range(lv.grid[0]) for c in range(lv.grid[1])]
    check("encode", lv.index, 0.0, f"encoding all {len(tiles)} tiles of level {lv.index}")
    canvas = build_canvas(geo, lv.index, tiles, encode, all_newlines=True, keep_gaps=False)
    keep = np.arange(canvas.size)
    scores, rfm_tokens = None, []
    if vision_budget is not None and canvas.size > vision_budget:
        check("focus", lv.index, 0.0, f"scoring level {lv.index} to fit the sequence budget")
        scores = np.asarray(score(canvas), dtype=np.float64)
        rfm_tokens.append(n_vis0 + canvas.size)
    final, dropped = fit_budget(canvas, keep, scores, vision_budget, all_newlines=False)
    rec = LevelRecord(lv.index, lv.grid, canvas.skeleton(), scores, _mask(canvas, final) & ~canvas.is_newline)
    return FocusResult("all-tiles", canvas, final, [rec], lv.index, len(tiles), rfm_tokens, dropped, notes)


def _released_keep(canvas: Canvas, score, alpha: float, n_vis0: int, rfm_tokens: list[int], notes: dict):
    """One released RFM pass: top floor(alpha * present) entries, plus every newline entry. When
    floor(alpha * present) is 0 the public code keeps newlines only; `notes["released_empty_keep"]`
    says so for that level."""
    scores = np.asarray(score(canvas), dtype=np.float64)
    rfm_tokens.append(n_vis0 + canvas.size)
    k = int(math.floor(alpha * canvas.size))
    if k == 0:
        notes.setdefault("released_empty_keep", []).append(
            {"level": canvas.level, "entries": canvas.size, "alpha": float(alpha),
             "reason": "floor(alpha x entries) is 0: no tile token kept, only newlines (as the public code)"})
    sel = top_k(scores, np.ones(canvas.size, dtype=bool), k)
    return scores, np.union1d(sel, np.flatnonzero(canvas.is_newline))  # newline tokens are always kept


def _released(geo, levels, encode, score, alpha, check, n_vis0, vision_budget) -> FocusResult:
    """Exactly one zoom step from the base level (DESIGN 3.6)."""
    records: list[LevelRecord] = []
    rfm_tokens: list[int] = []
    notes: dict[str, Any] = {}
    base = levels[0]
    tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
    check("encode", base.index, 0.0, f"encoding {len(tiles)} base tiles")
    # the released code unpads the base level against the original image size
    canvas = build_canvas(geo, base.index, tiles, encode, all_newlines=True, keep_gaps=False, unpad_hw=geo.image_size)
    check("focus", base.index, 0.0, "scoring the base level")
    scores, keep = _released_keep(canvas, score, alpha, n_vis0, rfm_tokens, notes)
    records.append(LevelRecord(base.index, base.grid, canvas.skeleton(), scores, _mask(canvas, keep)))
    nxt = levels[1] if len(levels) > 1 else levels[0]
    g_h, g_w = canvas.rows, canvas.cols + 1  # newline-inclusive width, as released
    next_tiles = sorted({(int(r) * nxt.grid[0] // g_h, int(c) * nxt.grid[1] // g_w)
                         for r, c in zip(canvas.row[keep], canvas.col[keep])})
    check("encode", nxt.index, 0.0, f"encoding {len(next_tiles)} tiles of level {nxt.index}")
    canvas = None
    canvas = build_canvas(geo, nxt.index, next_tiles, encode, all_newlines=True, keep_gaps=True)
    check("focus", nxt.index, 0.0, f"scoring level {nxt.index}")
    scores, keep = _released_keep(canvas, score, alpha, n_vis0, rfm_tokens, notes)
    final, dropped = fit_budget(canvas, keep, scores, vision_budget, all_newlines=True)
    rec = LevelRecord(nxt.index, nxt.grid, canvas.skeleton(), scores, _mask(canvas, final))
    if nxt.index == base.index:
        records[0] = rec
    else:
        records.append(rec)
    return FocusResult("released", canvas, final, records, nxt.index, len(tiles) + len(next_tiles), rfm_tokens,
                       dropped, notes)
