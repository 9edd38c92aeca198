"""`RasterSource.gather`: block-aligned strips read on parallel threads give the same pixels as one
serial read (windows, nodata, a 16-bit stretch), a cancel stops it promptly with no thread left,
and ExactPyramid's parallel tile reads equal its one-by-one reads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from osgeo import gdal

from lrs_focus.exact_pixels import ExactPyramid
from lrs_focus.gather import block_chunks, plan_strips, split_rows
from lrs_focus.pyramid import PyramidConfig
from lrs_focus.raster import RasterSource, RasterWindow

TINY = PyramidConfig(tile_size=56, base_long_side=168, tokens_per_tile=4)


def _write(path, bands: np.ndarray, gdal_type=gdal.GDT_Byte, nodata=None, block=64):
    n, h, w = bands.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, n, gdal_type, options=[
        "TILED=YES", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}", "COMPRESS=DEFLATE"])
    for b in range(n):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(bands[b])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return str(path)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    d = tmp_path_factory.mktemp("gather")
    rng = np.random.default_rng(5)
    rgb = rng.integers(1, 256, (3, 700, 900), dtype=np.uint8)
    rgb[:, 100:180, 300:420] = 0  # nodata hole
    u16 = rng.integers(0, 4000, (3, 650, 500), dtype=np.uint16)
    return {"rgb": _write(d / "rgb.tif", rgb, nodata=0),
            "plain": _write(d / "plain.tif", rgb[:, :500]),  # no nodata: GDAL writes into the strip directly
            "u16": _write(d / "u16.tif", u16, gdal.GDT_UInt16, block=128)}


def _serial(src, rows, cols, pad):
    """The reference: one read of the rows x cols bounding window, then the asked rows and columns."""
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    whole = src.read_rgb((x0, y0, x1, y1), (y1 - y0, x1 - x0), pad_rgb=pad)
    return whole[rows - y0][:, cols - x0]


def _samples(rng, n, size, dense=False):
    if dense:
        start = int(rng.integers(0, size // 3))
        return np.arange(start, min(size, start + n))
    return np.unique(rng.integers(0, size, n))


@pytest.mark.parametrize("name", ["rgb", "u16", "plain"])
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_parallel_gather_equals_one_serial_read(rasters, name, workers):
    src = RasterSource.open(rasters[name])
    rng = np.random.default_rng(workers)
    pad = (7, 8, 9)
    for dense in (False, True):
        rows, cols = _samples(rng, 300, src.height, dense), _samples(rng, 250, src.width, dense)
        # a small budget forces many strips, columns split too
        got = src.gather(rows, cols, pad, workers=workers, max_bytes=120_000)
        np.testing.assert_array_equal(got, _serial(src, rows, cols, pad))
    if name == "rgb":
        rows, cols = np.arange(90, 200), np.arange(280, 450)
        got = src.gather(rows, cols, pad, workers=workers)
        assert (got[20:80, 30:130] == pad).all()  # nodata painted
        view = RasterWindow(src, [150, 60, 800, 640])
        r, c = _samples(rng, 100, view.height), _samples(rng, 100, view.width)
        np.testing.assert_array_equal(view.gather(r, c, pad, workers=workers),
                                      _serial(src, r + 60, c + 150, pad))
    src.close()


def test_strips_are_block_aligned_and_bounded():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = int(rng.integers(1, 3000)), int(rng.integers(1, 3000))
        block = (int(rng.choice([1, 16, 256])), int(rng.choice([1, 8, 64, 256])))
        rows = np.unique(rng.integers(0, h, int(rng.integers(1, 400))))
        cols = np.unique(rng.integers(0, w, int(rng.integers(1, 400))))
        workers, budget = int(rng.integers(1, 6)), int(rng.integers(50_000, 2_000_000))
        strips = plan_strips(rows, cols, block, workers, budget)
        covered = np.zeros((rows.size, cols.size), dtype=np.int64)
        for y0, y1, x0, x1 in strips:
            covered[np.ix_((rows >= y0) & (rows < y1), (cols >= x0) & (cols < x1))] += 1
        assert (covered == 1).all()  # every pair read exactly once
        parts = split_rows(rows, block[1], workers)  # rows shared among reader processes
        assert 1 <= len(parts) <= workers and np.array_equal(np.concatenate(parts), rows)
        assert all(int(a[-1]) // block[1] < int(b[0]) // block[1] for a, b in zip(parts, parts[1:]))
        row_spans = sorted({(y0, y1) for y0, y1, _, _ in strips})
        widest = max(x1 - x0 for _, _, x0, x1 in strips)
        per_strip = budget // (workers * 3)  # pixels
        for (a0, a1), (b0, _) in zip(row_spans, row_spans[1:]):
            assert a1 <= b0
            assert (a1 - 1) // block[1] < b0 // block[1] or block[1] * widest > per_strip  # no block read twice
        for y0, y1, x0, x1 in strips:
            # memory bound (one row at least), unless one block is larger than a strip's share
            assert (y1 - y0) * (x1 - x0) <= max(per_strip, x1 - x0) or block[1] * widest > per_strip


@pytest.mark.parametrize("workers", [1, 3])
def test_a_gather_streamed_to_a_sink_delivers_every_pixel_once(rasters, workers):
    """The base pass scatters pieces as they are read (no union array): the pieces handed to the sink
    tile the asked rows x columns exactly once, with the pixels of an assembled gather."""
    src = RasterSource.open(rasters["rgb"])
    rng = np.random.default_rng(11)
    view = RasterWindow(src, [150, 60, 800, 640])
    for source in (src, view):
        rows, cols = _samples(rng, 300, source.height), _samples(rng, 250, source.width)
        ox, oy = getattr(source, "origin", (0, 0))
        want = src.gather(rows + oy, cols + ox, (7, 8, 9), workers=1)
        seen = np.zeros((rows.size, cols.size), dtype=np.int64)
        got = np.zeros_like(want)
        lock = threading.Lock()

        def sink(r, c, pixels):
            assert pixels.shape == (r.size, c.size, 3)
            assert (np.diff(r) > 0).all() and (np.diff(c) > 0).all()
            keep_r, keep_c = np.isin(r, rows), np.isin(c, cols)  # a piece may hold rows/columns not asked for
            ri, ci = np.searchsorted(rows, r[keep_r]), np.searchsorted(cols, c[keep_c])
            with lock:
                seen[np.ix_(ri, ci)] += 1
                got[np.ix_(ri, ci)] = pixels[np.ix_(keep_r, keep_c)]

        assert source.gather(rows, cols, (7, 8, 9), workers=workers, max_bytes=120_000, sink=sink) is None  # noqa: B023
        assert (seen == 1).all()
        np.testing.assert_array_equal(got, want)
    src.close()


def test_block_chunks_fit_and_never_split_a_block_row_that_fits():
    rng = np.random.default_rng(3)
    for _ in range(300):
        block = int(rng.choice([1, 7, 64, 256]))
        rows = np.unique(rng.integers(0, 5000, int(rng.integers(1, 600))))
        limit = int(rng.integers(1, 400))
        spans = block_chunks(rows, block, limit)
        assert spans[0][0] == 0 and spans[-1][1] == rows.size
        assert all(a1 == b0 for (_, a1), (b0, _) in zip(spans, spans[1:]))
        for a, b in spans:
            assert 0 < b - a <= limit
        for (_, a1), _ in zip(spans, spans[1:]):  # a cut inside a block row only where it alone exceeds limit
            blk = rows[a1] // block
            if rows[a1 - 1] // block == blk:
                assert int(np.sum(rows // block == blk)) > limit


def test_a_cancel_stops_a_parallel_gather_promptly_and_leaves_no_thread(rasters):
    src = RasterSource.open(rasters["rgb"])
    rows, cols = np.arange(src.height), np.arange(src.width)
    strips = plan_strips(rows, cols, src.block_size, 3, 30_000)
    assert len(strips) > 40
    calls = []

    class Cancelled(Exception):
        pass

    def check():
        calls.append(time.perf_counter())
        if len(calls) > 5:
            raise Cancelled

    read = src.read_rgb
    started = []

    def counting_read(*a, **kw):
        started.append(1)
        time.sleep(0.01)
        return read(*a, **kw)

    src.read_rgb = counting_read
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        src.gather(rows, cols, (0, 0, 0), check=check, workers=3, max_bytes=30_000)
    assert time.perf_counter() - t0 < 1.0
    assert len(started) <= 5  # nothing starts after the check raised
    assert not [t for t in threading.enumerate() if t.name.startswith("gather")]
    src.close()


def test_exact_tiles_read_several_at_once_equal_one_by_one(rasters):
    tiles = {}
    for workers in (1, 3):
        src = RasterSource.open(rasters["rgb"])
        src.workers = workers
        callers = set()
        pyr = ExactPyramid(src, TINY, cache_tiles=4, check=lambda: callers.add(threading.current_thread().name))
        finest = pyr.geometry.levels[-1]
        positions = [(r, c) for r in range(finest.grid[0]) for c in range(finest.grid[1])][::3]
        tiles[workers] = np.stack(pyr.tiles(finest.index, positions + positions[:2]))
        assert len(pyr._cache) <= 4
        assert callers == {threading.current_thread().name}  # the hook runs on the caller's thread only
        src.close()
    np.testing.assert_array_equal(tiles[1], tiles[3])


def _write_striped(path, bands: np.ndarray, rows_per_strip: int):
    n, h, w = bands.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, n, gdal.GDT_Byte, options=[
        f"BLOCKYSIZE={rows_per_strip}", "COMPRESS=DEFLATE"])
    for b in range(n):
        ds.GetRasterBand(b + 1).WriteArray(bands[b])
    ds = None
    return str(path)


class _CountingHandle:
    """A dataset handle that counts ReadRaster calls and the rows they span."""

    def __init__(self, ds, log):
        self.ds, self.log = ds, log

    def ReadRaster(self, x0, y0, w, h, **kw):  # noqa: N802 (GDAL's name)
        self.log.append((x0, h))
        return self.ds.ReadRaster(x0, y0, w, h, **kw)

    def __getattr__(self, name):
        return getattr(self.ds, name)


@pytest.mark.parametrize("rows_per_strip", [1, 16, 64])
def test_a_strip_is_read_whole_only_when_it_decodes_nothing_more(tmp_path, rows_per_strip):
    """Plain 8-bit RGB: a strip whose asked rows touch every block row it spans is read in one GDAL
    call (band planes); rows far apart in a striped raster are read run by run, so rows between them
    (whole blocks nobody asked for) are never decoded. Pixels equal a serial read either way."""
    rng = np.random.default_rng(rows_per_strip)
    rgb = rng.integers(0, 256, (3, 400, 300), dtype=np.uint8)
    src = RasterSource.open(_write_striped(tmp_path / "s.tif", rgb, rows_per_strip))
    assert src.block_size[1] == rows_per_strip
    log: list[int] = []
    pool_borrow = src._handles.borrow
    src._handles.borrow = lambda: (lambda h: h if isinstance(h, _CountingHandle) else _CountingHandle(h, log))(
        pool_borrow())  # handles go back to the pool wrapped: wrap each once
    try:
        for rows in (np.arange(0, 400, 7), np.arange(100, 260), np.array([3, 4, 5, 200, 201, 399])):
            cols = np.unique(rng.integers(0, 300, 120))
            log.clear()
            got = src.gather(rows, cols, workers=1)
            np.testing.assert_array_equal(got, np.moveaxis(rgb, 0, -1)[rows][:, cols])
            blocks = rows // rows_per_strip
            spanned = np.arange(blocks[0], blocks[-1] + 1)
            for x0 in {x for x, _ in log}:  # per column strip: never more rows than the blocks holding
                rows_read = sum(h for x, h in log if x == x0)  # an asked row (no unasked block decoded)
                assert rows_read <= np.unique(blocks).size * rows_per_strip
            if np.isin(spanned, blocks).all() and rows_per_strip > 1:
                assert len(log) <= len(plan_strips(rows, cols, src.block_size, 1))  # whole strips, one call each
    finally:
        src._handles.borrow = pool_borrow
        src.close()


def test_take_grid_equals_fancy_indexing_in_any_layout():
    from lrs_focus.gather import take_grid

    rng = np.random.default_rng(2)
    planes = rng.integers(0, 256, (3, 40, 70), dtype=np.uint8)
    for pixels in (np.ascontiguousarray(np.moveaxis(planes, 0, -1)), np.moveaxis(planes, 0, -1)):
        for rows, cols in ((np.arange(40), np.arange(70)), (np.array([0, 5, 6, 39]), np.array([1, 2, 50, 69])),
                           (np.arange(3, 17), np.array([1, 2, 50, 69])), (np.array([0, 5, 6, 39]), np.arange(20, 31)),
                           (np.array([7]), np.array([9]))):  # ranges (taken as views) and not
            want = pixels[rows][:, cols]
            got = take_grid(pixels, rows, cols)
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)
            into = np.zeros((rows.size + 2, cols.size, 3), dtype=np.uint8)
            take_grid(pixels, rows, cols, out=into[1:-1])
            np.testing.assert_array_equal(into[1:-1], want)
            assert not into[0].any() and not into[-1].any()


@pytest.mark.parametrize("window, nodata", [(None, None), ((37, 61, 1000, 850), None), ((37, 61, 1000, 850), 0)])
def test_a_batch_of_tiles_equals_its_tiles_read_one_by_one(tmp_path, window, nodata):
    """`stack` reads a batch's blocks once for all its tiles, each tile from a grid of its own, and
    blends on several threads (a window's blocks are shifted); finer levels take the blocks coarser
    ones decoded from the block cache: the same pixels as `tile`, bit for bit."""
    rng = np.random.default_rng(11)
    bands = rng.integers(0, 256, (3, 900, 1100), dtype=np.uint8)
    src = RasterSource.open(_write(tmp_path / "img.tif", bands, block=64, nodata=nodata))
    src.workers = 3
    view = src if window is None else RasterWindow(src, window)
    one, batch = ExactPyramid(view, TINY, cache_tiles=0), ExactPyramid(view, TINY, cache_tiles=4)
    batch.thumbnail()  # coarse levels get sample grids: their batches only blend
    assert batch.grids
    for lv in batch.geometry.levels:
        positions = [(r, c) for r in range(lv.grid[0]) for c in range(lv.grid[1])]
        positions = [positions[i] for i in rng.permutation(len(positions))][:40]
        positions += positions[:3]  # a tile asked twice comes twice
        got = batch.stack(lv.index, positions)
        assert not got.flags.writeable
        np.testing.assert_array_equal(got, np.stack([one.tile(lv.index, r, c) for r, c in positions]))
    assert not batch.grids  # owned grids go once finer levels are read; their blocks went to the cache
    assert batch._blocks is not None and batch._blocks.used_bytes > 0
    src.close()


class _Blocks:
    """A source's block layout only (what `_tile_strips` plans on)."""

    def __init__(self, block_size, origin=(0, 0)):
        self.height, self.width, self.block_size, self.origin = 5000, 7000, block_size, origin


@pytest.mark.parametrize("origin", [(0, 0), (37, 100)])
@pytest.mark.parametrize("with_cache", [False, True])
def test_tile_strips_decode_each_needed_block_once_and_no_other(origin, with_cache):
    """Targets far apart are not crossed (the rows of one with the columns of another): the strips
    cover exactly the blocks some target needs that the block cache does not hold, none twice,
    each block-aligned and bounded; the cached blocks come as pieces of their own."""
    from lrs_focus.block_cache import BlockCache
    from lrs_focus.gather import PYRAMID_STRIP_BYTES

    bw, bh = 64, 48
    pyr = ExactPyramid.__new__(ExactPyramid)
    pyr.src = _Blocks((bw, bh), origin)
    pyr.geometry = pyr.src
    ox, oy = origin
    rng = np.random.default_rng(2)
    targets = {}
    for k, (y, x) in enumerate([(0, 0), (900, 2000), (930, 2050), (3000, 100), (3010, 5000)]):
        targets[k] = (np.unique(y + rng.integers(0, 300, 120)), np.unique(x + rng.integers(0, 400, 150)))

    def blocks(rows, cols):
        return {(int(by), int(bx)) for by in np.unique((rows + oy) // bh) for bx in np.unique((cols + ox) // bw)}

    needed = set().union(*[blocks(r, c) for r, c in targets.values()])
    cache = None
    if with_cache:  # every third needed block already decoded
        cache = BlockCache(5000, 7000, (bw, bh), origin, budget_bytes=1 << 30)
        for block in sorted(needed)[::3]:
            y0, y1, x0, x1 = cache.window(block)
            cache.keep(np.arange(y0, y1), np.arange(x0, x1), np.zeros((y1 - y0, x1 - x0, 3), np.uint8))
    strips, cached = pyr._tile_strips(targets, 2, cache)
    assert len(cached) == (len(sorted(needed)[::3]) if with_cache else 0)
    seen: list = []
    for rows, cols, feeds in strips:
        assert rows.size * cols.size * 3 <= PYRAMID_STRIP_BYTES // 2 or len(blocks(rows, cols)) == 1
        seen += sorted(blocks(rows, cols))
        for k in feeds:  # a fed target has pixels in the strip
            r, c = targets[k]
            assert np.isin(r, rows).any() and np.isin(c, cols).any()
    read = set(seen)
    for rows, cols, pixels, feeds in cached:
        assert pixels.shape == (rows.size, cols.size, 3)
        seen += sorted(blocks(rows, cols))
    assert len(seen) == len(set(seen)) and set(seen) == needed
    assert not read & {b for b in needed if cache is not None and b in cache}
    for k, (r, c) in targets.items():  # every asked pixel comes from one piece that feeds its target
        covered = np.zeros((r.size, c.size), dtype=int)
        for piece in strips + cached:
            rows, cols, feeds = piece[0], piece[1], piece[-1]
            if k in feeds:
                covered[np.ix_(np.isin(r, rows), np.isin(c, cols))] += 1
        assert (covered == 1).all()
    assert [(int(s[0][0]), int(s[1][0])) for s in strips] == sorted((int(s[0][0]), int(s[1][0])) for s in strips)


def test_strip_buffers_are_reused_across_gathers_and_given_back_after_the_sink(rasters):
    """Whole-strip reads land in buffers the source keeps (a fresh one per strip costs page faults):
    at most one per thread, the same ones gather after gather, and never handed to another strip
    while a sink still reads the pixels in one."""
    src = RasterSource.open(rasters["plain"])
    rows, cols = np.arange(0, 500, 2), np.arange(3, 900, 3)
    want = src.gather(rows, cols, (0, 0, 0), workers=1)
    kept = []
    for _ in range(3):
        got = np.zeros_like(want)

        def sink(r, c, pixels):
            time.sleep(0.002)  # another strip reads meanwhile
            keep_r, keep_c = np.isin(r, rows), np.isin(c, cols)
            got[np.ix_(np.searchsorted(rows, r[keep_r]), np.searchsorted(cols, c[keep_c]))] = \
                pixels[np.ix_(keep_r, keep_c)]

        src.gather(rows, cols, (0, 0, 0), workers=2, max_bytes=60_000, sink=sink)
        np.testing.assert_array_equal(got, want)
        kept.append({id(b) for b in src._buffers._idle})
    assert 1 <= len(kept[0]) <= 2 and kept[0] == kept[1] == kept[2]
    src.close()
    assert not src._buffers._idle


def test_random_batches_over_questions_equal_their_tiles_read_one_by_one(tmp_path):
    """As the engine reads: batches of a zoom's selected tiles, level by level, question after
    question, the grids owned by the pyramid or shared through the engine's cache. Tiles much
    smaller than a block make one-block strips, whose pixels are a strip buffer the next strip
    reuses: the block cache must have copied them (a view there served another strip's pixels)."""
    from lrs_focus.block_cache import BlockCache

    rng = np.random.default_rng(0)
    bands = rng.integers(0, 256, (3, 700, 900), dtype=np.uint8)
    src = RasterSource.open(_write(tmp_path / "img.tif", bands, block=128))
    src.workers = 2
    one = ExactPyramid(src, TINY, cache_tiles=0)
    shared: dict = {}
    for question in range(4):
        pyr = ExactPyramid(src, TINY, grids=shared if question % 2 else None)
        pyr.thumbnail()
        for lv in pyr.geometry.levels[1:]:
            positions = [(r, c) for r in range(lv.grid[0]) for c in range(lv.grid[1])]
            pick = [positions[i] for i in rng.permutation(len(positions))[:int(rng.integers(1, 40))]]
            for i in range(0, len(pick), 16):
                got = pyr.stack(lv.index, pick[i:i + 16])
                np.testing.assert_array_equal(got, np.stack([one.tile(lv.index, r, c) for r, c in pick[i:i + 16]]))
    src.close()
    cache = BlockCache(10, 10, (4, 4), budget_bytes=1 << 20)
    planes = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    cache.keep(np.arange(4), np.arange(4), np.moveaxis(planes, 0, -1))  # exactly one block, contiguous planes
    planes[...] = 0
    assert cache.get((0, 0)).any()  # a copy, not a view of the piece
