"""Algorithm 1 with forced scores: tiles follow the peak token at every level; N_max stop rule."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_focus.focus import build_trace, run_focus
from lrs_focus.pyramid import PyramidConfig, PyramidGeometry

TINY = PyramidConfig(tile_size=56, base_long_side=168, tokens_per_tile=4)
REAL = PyramidConfig(tile_size=336, base_long_side=1008, tokens_per_tile=12)
SIZES = [
    (TINY, 1947, 1933),
    (TINY, 700, 2600),
    (TINY, 3000, 900),
    (TINY, 1000, 1000),
    (REAL, 4000, 4000),
    (REAL, 27328, 20000),
    (REAL, 1500, 2000),
]


def _no_encode(level, tiles):
    return None


def _centre(geo, level, tr, tc):
    x0, y0, x1, y1 = geo.token_window_float(level, tr, tc)
    return (x0 + x1) / 2, (y0 + y1) / 2


def _peak_scorer(geo, point, log):
    """Score = closeness of each present token's centre to `point` (newline tokens score 0)."""
    px, py = point

    def score(canvas):
        s = np.full(canvas.valid.shape, np.nan)
        for r, c in zip(*np.nonzero(canvas.valid[:, : canvas.cols])):
            x, y = _centre(geo, canvas.level, r, c)
            s[r, c] = 1.0 / (1.0 + np.hypot(x - px, y - py))
        s[:, canvas.cols] = np.where(canvas.valid[:, canvas.cols], 0.0, np.nan)
        log.append((canvas.level, s.copy(), canvas.tiles))
        return s

    return score


def _tile_containing(geo, level, x, y):
    """Brute force over every tile's exact window (independent of tile_at)."""
    for r in range(geo.levels[level].grid[0]):
        for c in range(geo.levels[level].grid[1]):
            x0, y0, x1, y1 = geo.tile_window_float(level, r, c)
            if x0 <= x < x1 and y0 <= y < y1:
                return (r, c)
    raise AssertionError(f"no tile of level {level} holds ({x}, {y})")


@pytest.mark.parametrize("cfg, height, width", SIZES)
def test_forced_peak_selects_the_tile_under_the_peak_at_every_level(cfg, height, width):
    geo = PyramidGeometry(height, width, cfg)
    rng = np.random.default_rng(height * 7 + width)
    for _ in range(3):
        point = (rng.uniform(0, width), rng.uniform(0, height))
        log = []
        result = run_focus(geo, "paper", _no_encode, _peak_scorer(geo, point, log), alpha=1e-9, n_max=10**6,
                           thumbnail_tokens=cfg.tokens_per_tile**2 * 4)
        assert [rec.level for rec in result.records] == list(range(len(geo.levels)))
        assert result.stopped_at == len(geo.levels) - 1
        for p, rec in enumerate(result.records):
            level, scores, tiles = log[p]
            # exactly one kept token: the present token nearest to the peak
            kept = np.argwhere(rec.kept[:, :-1])
            assert len(kept) == 1
            present = np.argwhere(~np.isnan(scores[:, :-1]))
            dists = [np.hypot(*np.subtract(_centre(geo, level, r, c), point)) for r, c in present]
            assert tuple(kept[0]) == tuple(present[int(np.argmin(dists))])
            if p + 1 < len(result.records):
                cx, cy = _centre(geo, level, *kept[0])
                assert result.records[p + 1].encoded == [_tile_containing(geo, p + 1, cx, cy)]
        # at the finest level the kept token is the one under the peak whenever its tile was reached
        last = result.records[-1]
        (r, c), = np.argwhere(last.kept[:, :-1])
        x0, y0, x1, y1 = geo.token_window_float(last.level, r, c)
        tile = _tile_containing(geo, last.level, *point)
        if tile in last.encoded:
            assert x0 <= point[0] < x1 + 1e-6 and y0 <= point[1] < y1 + 1e-6


@pytest.mark.parametrize("cfg, height, width", SIZES[:3] + SIZES[4:5])
def test_stop_rule_triggers_exactly_past_n_max(cfg, height, width):
    geo = PyramidGeometry(height, width, cfg)
    uniform = lambda canvas: np.where(canvas.valid, 1.0, np.nan)  # noqa: E731
    free = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=10**6)
    n_next = len(free.records[1].encoded)  # tiles needed to zoom from the base level
    at_limit = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=n_next)
    past_limit = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=n_next - 1)
    assert len(at_limit.records) >= 2 and at_limit.records[1].encoded == free.records[1].encoded
    assert past_limit.stopped_at == 0 and len(past_limit.records) == 1
    assert past_limit.tiles_encoded == geo.levels[0].grid[0] * geo.levels[0].grid[1]
    # output at the stop = the stopped level's kept tokens (all of them here, alpha = 1)
    rows, cols = geo.token_grid(0)
    assert past_limit.keep.size == rows * (cols + 1)


def test_released_mapping_uses_newline_inclusive_width():
    """Peak on one base token + every newline token: tiles by floor(r*n'/G_h), floor(c*n'/G_w)."""
    geo = PyramidGeometry(1500, 2000, REAL)
    rows, cols = geo.token_grid(0, unpad_hw=geo.image_size)
    assert (rows, cols) == (26, 36)  # released truncation (DESIGN 3.6)
    peak = (5, 30)

    def score(canvas):
        s = np.where(canvas.valid, 1e-6, np.nan)
        if canvas.level == 0:
            s[peak] = 1.0
        return s

    n_tokens = rows * (cols + 1)
    result = run_focus(geo, "released", _no_encode, score, alpha=1.5 / n_tokens)  # floor -> top-1
    nh, nw = geo.levels[1].grid
    expected = {(peak[0] * nh // rows, peak[1] * nw // (cols + 1))}
    expected |= {(r * nh // rows, cols * nw // (cols + 1)) for r in range(rows)}  # newline -> last column
    assert set(result.records[1].encoded) == expected
    assert result.stopped_at == 1 and len(result.records) == 2
    # stage B: every newline of the next level kept, plus top-alpha of the present tokens
    last = result.records[1]
    assert last.kept[:, -1].all()


def test_trace_lists_every_tile_of_reached_levels_with_windows():
    geo = PyramidGeometry(1947, 1933, TINY)
    rng = np.random.default_rng(0)
    score = lambda canvas: np.where(canvas.valid, rng.random(canvas.valid.shape), np.nan)  # noqa: E731
    result = run_focus(geo, "paper", _no_encode, score, alpha=0.25, n_max=30)
    trace = build_trace(geo, result)
    assert [lv["level"] for lv in trace["levels"]] == list(range(len(geo.levels)))
    reached = {r.level for r in result.records}
    assert result.stopped_at is not None and max(reached) == result.stopped_at
    for lv, info in zip(trace["levels"], geo.levels):
        assert lv["reached"] == (info.index in reached) and lv["grid"] == list(info.grid)
        assert len(lv["tiles"]) == (info.grid[0] * info.grid[1] if lv["reached"] else 0)
        for t in lv["tiles"]:
            x0, y0, x1, y1 = t["window"]
            assert 0 <= x0 < x1 <= 1933 and 0 <= y0 < y1 <= 1947
            assert not t["kept"] or t["encoded"]
            assert (t["rank"] is not None) == t["encoded"]
    encoded = sum(t["encoded"] for lv in trace["levels"] for t in lv["tiles"])
    assert encoded == result.tiles_encoded
    assert all(len(r.encoded) <= 30 for r in result.records[1:])
