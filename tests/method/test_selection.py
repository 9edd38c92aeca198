"""Algorithm 1 with forced scores: tiles follow the peak token at every level; N_max stop rule;
sparse canvases whose size follows the work; the sequence budget drops vision tokens, never text."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_focus.focus import fit_budget, run_focus
from lrs_focus.trace import build_trace
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
    """Score = closeness of each token's centre to `point` (newline entries score 0)."""
    px, py = point

    def score(canvas):
        s = np.zeros(canvas.size)
        for i in np.flatnonzero(~canvas.is_newline):
            x, y = _centre(geo, canvas.level, canvas.row[i], canvas.col[i])
            s[i] = 1.0 / (1.0 + np.hypot(x - px, y - py))
        log.append((canvas.level, s.copy(), canvas.skeleton()))
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


def _kept_tokens(rec):
    tok = rec.kept & ~rec.canvas.is_newline
    return list(zip(rec.canvas.row[tok].tolist(), rec.canvas.col[tok].tolist()))


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
            level, scores, canvas = log[p]
            # exactly one kept token: the present token nearest to the peak
            kept = _kept_tokens(rec)
            assert len(kept) == 1
            tokens = np.flatnonzero(~canvas.is_newline)
            dists = [np.hypot(*np.subtract(_centre(geo, level, canvas.row[i], canvas.col[i]), point)) for i in tokens]
            best = tokens[int(np.argmin(dists))]
            assert kept[0] == (canvas.row[best], canvas.col[best])
            if p + 1 < len(result.records):
                cx, cy = _centre(geo, level, *kept[0])
                assert result.records[p + 1].encoded == [_tile_containing(geo, p + 1, cx, cy)]
        # at the finest level the kept token is the one under the peak whenever its tile was reached
        last = result.records[-1]
        (r, c), = _kept_tokens(last)
        x0, y0, x1, y1 = geo.token_window_float(last.level, r, c)
        tile = _tile_containing(geo, last.level, *point)
        if tile in last.encoded:
            assert x0 <= point[0] < x1 + 1e-6 and y0 <= point[1] < y1 + 1e-6
        # the LLM gets the kept token and its row's newline, nothing else
        assert result.keep.size == 2 and result.canvas.is_newline[result.keep].tolist() == [False, True]


@pytest.mark.parametrize("cfg, height, width", SIZES[:3] + SIZES[4:5])
def test_stop_rule_triggers_exactly_past_n_max(cfg, height, width):
    geo = PyramidGeometry(height, width, cfg)
    uniform = lambda canvas: np.ones(canvas.size)  # noqa: E731
    free = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=10**6)
    n_next = len(free.records[1].encoded)  # tiles needed to zoom from the base level
    at_limit = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=n_next)
    past_limit = run_focus(geo, "paper", _no_encode, uniform, alpha=1.0, n_max=n_next - 1)
    assert len(at_limit.records) >= 2 and at_limit.records[1].encoded == free.records[1].encoded
    assert past_limit.stopped_at == 0 and len(past_limit.records) == 1
    assert past_limit.tiles_encoded == geo.levels[0].grid[0] * geo.levels[0].grid[1]
    # output at the stop = the stopped level's kept tokens (all of them here, alpha = 1) + newlines
    rows, cols = geo.token_grid(0)
    assert past_limit.keep.size == rows * (cols + 1)


def test_released_mapping_uses_newline_inclusive_width():
    """Peak on one base token + every newline token: tiles by floor(r*n'/G_h), floor(c*n'/G_w)."""
    geo = PyramidGeometry(1500, 2000, REAL)
    rows, cols = geo.token_grid(0, unpad_hw=geo.image_size)
    assert (rows, cols) == (26, 36)  # released truncation (DESIGN 3.6)
    peak = (5, 30)

    def score(canvas):
        s = np.full(canvas.size, 1e-6)
        if canvas.level == 0:
            s[(canvas.row == peak[0]) & (canvas.col == peak[1])] = 1.0
        return s

    n_tokens = rows * (cols + 1)
    result = run_focus(geo, "released", _no_encode, score, alpha=1.5 / n_tokens)  # floor -> top-1
    nh, nw = geo.levels[1].grid
    expected = {(peak[0] * nh // rows, peak[1] * nw // (cols + 1))}
    expected |= {(r * nh // rows, cols * nw // (cols + 1)) for r in range(rows)}  # newline -> last column
    assert set(result.records[1].encoded) == expected
    assert result.stopped_at == 1 and len(result.records) == 2
    # stage B: every newline of the next level kept (all rows, present tiles or not)
    last = result.records[1]
    nl = last.canvas.is_newline
    assert last.kept[nl].all() and nl.sum() == last.canvas.rows
    assert result.canvas.keep_gaps and result.canvas.span == last.canvas.rows * (last.canvas.cols + 1)


def test_trace_lists_the_encoded_tiles_of_reached_levels_with_windows_and_ranks():
    geo = PyramidGeometry(1947, 1933, TINY)
    rng = np.random.default_rng(0)
    score = lambda canvas: rng.random(canvas.size)  # noqa: E731
    result = run_focus(geo, "paper", _no_encode, score, alpha=0.25, n_max=30)
    trace = build_trace(geo, result, origin=(100, 7))
    assert [lv["level"] for lv in trace["levels"]] == list(range(len(geo.levels)))
    reached = {r.level for r in result.records}
    assert result.stopped_at is not None and max(reached) == result.stopped_at
    for lv, info in zip(trace["levels"], geo.levels):
        assert lv["reached"] == (info.index in reached) and lv["grid"] == list(info.grid)
        rec = next((r for r in result.records if r.level == info.index), None)
        assert [(t["row"], t["col"]) for t in lv["tiles"]] == (rec.encoded if rec else [])
        for t in lv["tiles"]:
            x0, y0, x1, y1 = t["window"]
            assert [x0 - 100, y0 - 7, x1 - 100, y1 - 7] == list(geo.tile_window(info.index, t["row"], t["col"]))
            assert t["encoded"]
        ranks = sorted(t["rank"] for t in lv["tiles"])
        assert ranks == list(range(1, len(ranks) + 1))  # ranks 1..n within each level
        by_rank = sorted(lv["tiles"], key=lambda t: t["rank"])
        assert all(a["score"] >= b["score"] for a, b in zip(by_rank, by_rank[1:]))
    assert sum(len(lv["tiles"]) for lv in trace["levels"]) == result.tiles_encoded
    assert all(len(r.encoded) <= 30 for r in result.records[1:])


def _level_scores(canvas):
    """Deterministic per level, so runs with and without a budget follow the same zoom path."""
    return np.random.default_rng(canvas.level).random(canvas.size)


@pytest.mark.parametrize("mode", ["paper", "released", "all-tiles"])
def test_budget_drops_lowest_scored_vision_tokens_keeping_order_and_newlines(mode):
    geo = PyramidGeometry(1947, 1933, TINY)
    free = run_focus(geo, mode, _no_encode, _level_scores, alpha=0.25, n_max=30)
    budget = free.keep.size // 3
    res = run_focus(geo, mode, _no_encode, _level_scores, alpha=0.25, n_max=30, vision_budget=budget)
    canvas = res.canvas
    assert [r.encoded for r in res.records] == [r.encoded for r in free.records]  # same path, fewer tokens
    assert res.keep.size <= budget < free.keep.size
    assert np.all(np.diff(res.keep) > 0)  # raster order
    nl = canvas.is_newline[res.keep]
    tokens = res.keep[~nl]
    before = free.keep[~free.canvas.is_newline[free.keep]]  # the kept tokens without a budget
    assert set(tokens.tolist()) <= set(before.tolist())
    s = _level_scores(canvas)
    assert s[tokens].min() >= s[np.setdiff1d(before, tokens)].max()  # the lowest-scored went
    assert res.vision_tokens_dropped == before.size - tokens.size > 0
    if mode == "released":  # every newline stays
        assert nl.sum() == canvas.rows
    else:  # a newline closes each row that keeps a token, and only those
        assert set(canvas.row[res.keep[nl]].tolist()) == set(canvas.row[tokens].tolist())
    if mode == "all-tiles":  # scored only because it had to drop
        assert free.records[0].scores is None and res.records[0].scores is not None


def test_fit_budget_is_maximal_under_the_row_rule():
    geo = PyramidGeometry(1000, 1000, TINY)
    res = run_focus(geo, "paper", _no_encode, lambda c: np.ones(c.size), alpha=1.0, n_max=0)
    canvas, keep = res.canvas, res.keep
    scores = np.random.default_rng(1).random(canvas.size)
    all_tok = keep[~canvas.is_newline[keep]]
    ranked = all_tok[np.argsort(-scores[all_tok], kind="stable")]
    for budget in (0, 1, 2, 3, 7, 40, keep.size - 1, keep.size):
        out, dropped = fit_budget(canvas, keep, scores, budget, all_newlines=False)
        tok = out[~canvas.is_newline[out]]
        assert out.size <= budget and dropped == all_tok.size - tok.size
        assert set(tok.tolist()) == set(ranked[: tok.size].tolist())  # a prefix of the score order
        assert set(canvas.row[out[canvas.is_newline[out]]].tolist()) == set(canvas.row[tok].tolist())
        if tok.size < all_tok.size:  # the next token in score order would not fit
            nxt = ranked[tok.size]
            cost = 1 if canvas.row[nxt] in set(canvas.row[tok].tolist()) else 2
            assert out.size + cost > budget


def test_memory_follows_the_work_on_a_raster_declaring_10e12_pixels():
    """A declared 1,000,000 x 1,000,000 raster: paper mode zooms to the finest level with tiny canvases,
    all-tiles caps the level, a tiny alpha keeps one token; nothing has a level's full grid."""
    geo = PyramidGeometry(1_000_000, 1_000_000, REAL)
    finest = geo.levels[-1]
    assert finest.grid[0] * finest.grid[1] > 8_000_000  # 10^7 tiles, 10^9 token positions
    log = []
    res = run_focus(geo, "paper", _no_encode, _peak_scorer(geo, (123_456.0, 654_321.0), log), alpha=1e-9, n_max=80)
    assert res.stopped_at == finest.index
    assert max(rec.canvas.size for rec in res.records) <= 9 * 144 + 36  # base level at most
    capped = run_focus(geo, "all-tiles", _no_encode, lambda c: np.ones(c.size), n_max=80)
    assert capped.notes["all_tiles_capped"]["limit"] == 320
    assert capped.tiles_encoded <= 320 and capped.canvas.size <= 320 * 144 + capped.canvas.rows
    trace = build_trace(geo, res)
    assert sum(len(lv["tiles"]) for lv in trace["levels"]) == res.tiles_encoded <= 9 + 80 * len(geo.levels)


def test_zoom_never_lands_on_a_tile_the_unpadding_leaves_without_tokens():
    # 1015 x 1000: level 1 is 1023 x 1008 px in a 4 x 3 tile grid, but its unpadded token grid has
    # 36 rows, so tile row 3 (15 px of image) has no token; the bottom base tokens' centres lie there
    geo = PyramidGeometry(1015, 1000, REAL)
    assert geo.levels[1].grid == (4, 3) and geo.token_grid(1)[0] == 36
    result = run_focus(geo, "paper", _no_encode, _peak_scorer(geo, (999.0, 1014.0), []), alpha=1e-9, n_max=10**6)
    for rec in result.records[1:]:
        with_tokens = set(rec.canvas.tile[rec.canvas.tile >= 0].tolist())
        assert with_tokens == set(range(len(rec.canvas.tiles))), (rec.level, rec.canvas.tiles)
    assert result.records[1].encoded == [(2, 2)]  # the nearest tile that has tokens
    assert result.keep.size == 2  # the kept token and its newline still reach the LLM


def test_released_budget_of_exactly_the_newlines_still_sends_image_tokens():
    """Every newline 'fit' a budget equal to their count, so all tokens were dropped."""
    geo = PyramidGeometry(1947, 1933, TINY)
    free = run_focus(geo, "released", _no_encode, _level_scores, alpha=0.25)
    n_nl = int(free.canvas.is_newline.sum())
    for budget in (n_nl, n_nl + 1):
        res = run_focus(geo, "released", _no_encode, _level_scores, alpha=0.25, vision_budget=budget)
        tokens = res.keep[~res.canvas.is_newline[res.keep]]
        assert 0 < res.keep.size <= budget and tokens.size > 0, budget


def test_scoring_passes_stay_within_the_model_positions(sentinel2_vrt):
    """N_max and the all-tiles cap bound tiles, not tokens: with a model of 4,096 positions, neither an
    all-tiles ask with N_max 1,024 nor a paper-mode zoom runs a scoring pass past them."""
    from lrs_focus.engine import AskOptions, Engine

    engine = Engine("tiny", device="cpu", cache_mb=0)
    engine.model.config.text_config.max_position_embeddings = 4096
    for mode in ("all-tiles", "paper"):
        doc = engine.ask(str(sentinel2_vrt), "Where is the river?",
                         AskOptions(mode=mode, n_max=1024, max_length=4096, max_new_tokens=2))
        counts, trace = doc["counts"], doc["trace"]
        assert trace["budget"]["positions"] == 4096
        assert counts["rfm_max_pass_tokens"] <= 4096
        assert (counts["rfm_max_pass_tokens"] > 0) == (mode == "paper")  # all-tiles fits: scored only to drop
        assert counts["llm_sequence_tokens"] <= 4096
    assert "pass_limit" in engine.ask(str(sentinel2_vrt), "Where?", AskOptions(
        mode="all-tiles", n_max=1024, max_length=4096, max_new_tokens=2))["trace"]["all_tiles_capped"]


def test_released_empty_keep_is_named_in_the_trace():
    """floor(alpha x n) == 0 keeps newlines only (as the public code); the trace says so per level."""
    geo = PyramidGeometry(1500, 2000, REAL)
    rows, cols = geo.token_grid(0, unpad_hw=geo.image_size)
    tiny = run_focus(geo, "released", _no_encode, _level_scores, alpha=0.5 / (rows * (cols + 1)))
    empty = tiny.notes["released_empty_keep"]
    assert [e["level"] for e in empty] == [0, 1] and empty[0]["entries"] == rows * (cols + 1)
    assert tiny.canvas.is_newline[tiny.keep].all()  # what the LLM gets: newlines, no tile token
    assert build_trace(geo, tiny)["released_empty_keep"] == empty
    assert "released_empty_keep" not in run_focus(geo, "released", _no_encode, _level_scores, alpha=0.25).notes
