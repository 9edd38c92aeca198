"""DIP geometry against the worked examples of research/algorithm.md 2.2 and its own mappings."""

from __future__ import annotations

import math

import pytest

from lrs_focus.pyramid import PyramidConfig, PyramidGeometry

# (H, W): thumbnail (h, w), then per level (resized (h, w), grid [rows, cols]) coarse -> fine.
WORKED = {
    (1024, 1024): ((336, 336), [((1008, 1008), (3, 3)), ((1344, 1344), (4, 4))]),
    (2000, 2000): ((336, 336), [((1008, 1008), (3, 3)), ((2016, 2016), (6, 6))]),
    (4000, 4000): ((336, 336), [((1008, 1008), (3, 3)), ((2016, 2016), (6, 6)), ((4032, 4032), (12, 12))]),
    (5000, 5000): (
        (336, 336),
        [((1008, 1008), (3, 3)), ((1344, 1344), (4, 4)), ((2688, 2688), (8, 8)), ((5040, 5040), (15, 15))],
    ),
    (8192, 8192): (
        (336, 336),
        [((1008, 1008), (3, 3)), ((1344, 1344), (4, 4)), ((2352, 2352), (7, 7)), ((4368, 4368), (13, 13)),
         ((8400, 8400), (25, 25))],
    ),
}


@pytest.mark.parametrize("hw", sorted(WORKED))
def test_worked_examples(hw):
    thumb, levels = WORKED[hw]
    geo = PyramidGeometry(*hw)
    assert geo.thumbnail_size == thumb
    assert [(lv.resized, lv.grid) for lv in geo.levels] == levels
    assert geo.levels[-1].scale == 1.0
    assert [lv.index for lv in geo.levels] == list(range(len(levels)))


def test_worked_example_27328x20000():
    geo = PyramidGeometry(27328, 20000)
    assert geo.thumbnail_size == (336, 246)
    got = [(lv.resized, lv.grid) for lv in geo.levels]
    assert got[0] == ((1008, 738), (3, 3))
    assert got[1] == ((1836, 1344), (6, 4))
    assert got[2] == ((3673, 2688), (11, 8))
    assert got[-1] == ((27547, 20160), (82, 60))
    assert [lv.scale for lv in geo.levels][1:] == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert geo.levels[0].scale == pytest.approx(1008 / 27328)


def test_scales_halve_and_base_fits_three_tiles():
    for hw in [(3000, 7000), (1009, 1500), (16384, 600), (700, 900)]:
        geo = PyramidGeometry(*hw)
        base = geo.levels[0]
        assert max(base.grid) <= 3
        finer = [lv.scale for lv in geo.levels[1:]]
        assert all(b == 2 * a for a, b in zip(finer, finer[1:]))
        for lv in geo.levels:  # one side exactly fills whole tiles, the other fits inside
            canvas = geo.canvas(lv)
            assert lv.resized[0] <= canvas[0] and lv.resized[1] <= canvas[1]
            assert canvas[0] - lv.resized[0] < 336 and canvas[1] - lv.resized[1] < 336
            assert lv.resized[0] == canvas[0] or lv.resized[1] == canvas[1]


def test_small_tiles_from_config():
    cfg = PyramidConfig(tile_size=28, base_long_side=84, tokens_per_tile=1)
    geo = PyramidGeometry(400, 300, cfg)
    assert geo.thumbnail_size == (28, 21)
    assert geo.levels[0].resized[0] == 84 and geo.levels[0].grid == (3, 3)
    assert geo.levels[-1].scale == 1.0
    assert PyramidConfig.from_model_config({"slice_block_size": 28, "patch_size": 14}) == PyramidConfig(
        tile_size=28, base_long_side=84, tokens_per_tile=1
    )
    assert PyramidConfig.from_model_config({}) == PyramidConfig()


def test_token_grid_released_truncation():
    # DESIGN 3.6: 1500 x 2000 with 36 token columns gives 26 rows (float truncation), using the
    # original image size as the released code does for the base level.
    geo = PyramidGeometry(1500, 2000)
    assert geo.token_canvas(0) == (36, 36)
    assert geo.token_grid(0, unpad_hw=geo.image_size) == (26, 36)
    assert geo.token_grid(0) == (27, 36)  # resized 756 x 1008 fills exactly 27 rows
    tall = PyramidGeometry(2000, 1500)
    assert tall.token_grid(0, unpad_hw=tall.image_size) == (36, 26)
    assert PyramidGeometry(27328, 20000).token_grid(1) == (65, 48)


def test_tiles_partition_the_image():
    geo = PyramidGeometry(5000, 3700)
    for lv in geo.levels:
        covered = 0
        for r in range(lv.grid[0]):
            for c in range(lv.grid[1]):
                x0, y0, x1, y1 = geo.tile_window(lv, r, c)
                assert 0 <= x0 < x1 <= geo.width and 0 <= y0 < y1 <= geo.height
                covered += (x1 - x0) * (y1 - y0)
                if c + 1 < lv.grid[1]:
                    assert geo.tile_window(lv, r, c + 1)[0] == x1
                if r + 1 < lv.grid[0]:
                    assert geo.tile_window(lv, r + 1, c)[1] == y1
        assert covered == geo.width * geo.height
        last = geo.tile_window(lv, lv.grid[0] - 1, lv.grid[1] - 1)
        assert last[2:] == (geo.width, geo.height)


def test_tile_window_uses_level_factors():
    geo = PyramidGeometry(4000, 4000)
    lv = geo.levels[2]  # 4032 px, 12 x 12 tiles: 336 resized px = 333.33 original px
    assert geo.tile_window(lv, 0, 0) == (0, 0, 333, 333)
    assert geo.tile_window(lv, 1, 2) == (667, 333, 1000, 667)
    with pytest.raises(IndexError):
        geo.tile_window(lv, 12, 0)


def test_tiles_under_and_tile_at_invert_tile_window():
    geo = PyramidGeometry(27328, 20000)
    for lv in geo.levels:
        for r, c in [(0, 0), (lv.grid[0] - 1, lv.grid[1] - 1), (lv.grid[0] // 2, lv.grid[1] // 3)]:
            win = geo.tile_window_float(lv, r, c)
            assert geo.tiles_under(lv, win) == [(r, c)]
            cx, cy = (win[0] + win[2]) / 2, (win[1] + win[3]) / 2
            assert geo.tile_at(lv, cx, cy) == (r, c)
    fine = geo.levels[-1]
    base_tile = geo.tile_window(0, 1, 1)
    under = geo.tiles_under(fine, base_tile)
    rows = sorted({r for r, _ in under})
    cols = sorted({c for _, c in under})
    assert len(under) == len(rows) * len(cols)  # a rectangle of fine tiles
    assert 27 <= len(rows) <= 29 and 27 <= len(cols) <= 29  # 9,109 px over 333 px tiles
    assert geo.tiles_under(fine, (-10, -10, 0, 0)) == []


def test_token_mappings():
    geo = PyramidGeometry(4000, 4000)
    lv = geo.levels[1]  # 2016 px, 6 x 6 tiles, 72 x 72 tokens
    assert geo.token_tile(lv, 0, 0) == (0, 0)
    assert geo.token_tile(lv, 13, 35) == (1, 2)
    assert geo.token_tile(lv, 71, 71) == (5, 5)
    tile = geo.tile_window_float(lv, 1, 2)
    tok = geo.token_window_float(lv, 13, 35)
    assert tile[0] <= tok[0] < tok[2] <= tile[2] and tile[1] <= tok[1] < tok[3] <= tile[3]
    # 12 tokens tile a tile exactly
    first = geo.token_window_float(lv, 12, 24)
    last = geo.token_window_float(lv, 23, 35)
    assert (first[0], first[1], last[2], last[3]) == pytest.approx(tile)
    x, y = geo.token_center(lv, 13, 35)
    assert geo.tile_at(lv, x, y) == (1, 2)
    # a token of a coarse level maps to the finer tiles under it
    fine = geo.levels[2]
    assert geo.tiles_under(fine, geo.token_window_float(lv, 13, 35)) == [(2, 5)]
    with pytest.raises(IndexError):
        geo.token_tile(lv, 72, 0)


def test_json_document_shape():
    doc = PyramidGeometry(27328, 20000).to_dict()
    assert doc["thumbnail"]["size"] == [336, 246]
    assert doc["levels"][0]["grid"] == [3, 3] and doc["levels"][-1]["scale"] == 1.0
    assert all({"scale", "size", "grid"} <= set(lv) for lv in doc["levels"])
    assert doc["levels"][-1]["size"] == [27328, 20000]
    assert math.isclose(doc["levels"][-1]["resized"][0] / 336, 81.98, abs_tol=0.01)
