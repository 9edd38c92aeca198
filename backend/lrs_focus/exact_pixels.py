"""The released code's pixels, read lazily: bilinear resizing without antialiasing, from full resolution.

The official preprocessing (`mm_utils.process_images`, 'pyramid_crop') turns the whole image into
floats (ToTensor + CLIP Normalize) and resizes it for every level and for the thumbnail with
`F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing), padding with zeros in
normalised space. A released checkpoint was trained on exactly these pixels; GDAL's resampling
(antialiased, from overviews, rounded to 8 bits) gives other ones, enough to change selections
whose top-k margins are a fraction of a percent.

Each output pixel of such a resize reads only the 2x2 source pixels around
src = scale * (dst + 0.5) - 0.5 (clamped at 0; scale = in / out in float32, as ATen computes it),
so any tile, a whole base level or the thumbnail needs only a few source rows and columns. This
module reads just those (native resolution; `src.gather`: block-aligned strips on parallel
threads), interpolates the 8-bit values as float32 and normalises the result (normalisation is
affine): the official tensors to float32 rounding, in memory independent of the raster size.
numpy does the arithmetic because the index rule must be ATen's float32 one (a float64 index is
off by up to 0.003 px at 27k pixels, which moves values by 1e-2); `F.interpolate` itself needs the
whole image in memory.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np

from .block_cache import BlockCache
from .index_rule import source_index, torch_fuses_index  # noqa: F401  (tests and callers import them here)
from .gather import MERGE_GAP, PYRAMID_STRIP_BYTES, STRIP_BYTES, give_back_freed_memory, run_bounded, take_grid
from .pyramid import LazyTiles, Level, PyramidConfig
from .sample_grid import OPENAI_CLIP_MEAN, SampleGrid
from .sample_grid import OPENAI_CLIP_STD  # noqa: F401  (a test reads both constants here)
from .tile_strips import plan_tile_strips, sorted_union

BASE_PASS_BYTES = 16 << 20  # source rows x columns the base pass gathers at a time (then scatters)
_PAD_RGB = tuple(int(round(255 * m)) for m in OPENAI_CLIP_MEAN)  # nodata pixels inside the image


def _runs(rows: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """[start, stop) strips covering sorted unique `rows`: gaps <= MERGE_GAP merged, <= max_rows tall."""
    runs: list[tuple[int, int]] = []
    start = prev = int(rows[0])
    for r in rows[1:]:
        r = int(r)
        if r - prev > MERGE_GAP or r + 1 - start > max_rows:
            runs.append((start, prev + 1))
            start = r
        prev = r
    runs.append((start, prev + 1))
    return runs


def _needed(index: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    return sorted_union([index[0], index[1]])


class ExactPyramid(LazyTiles):
    """Lazy tiles of a raster with the released code's pixels: float32, CLIP-normalised, zero padded.

    `src` is anything with `height`, `width` and `read_rgb(window, out_size, pad_rgb=...)` (a
    `raster.RasterSource`, its stretch and band choice included); when it also has `gather(rows,
    cols, pad_rgb, check=, sink=, workers=, max_bytes=)` (RasterSource, RasterWindow, the readers'
    ConfinedSource) reads go through it. Tiles come back as float32 (B, B, 3) already normalised,
    which `LrsFocusModel.pixels` takes as they are.

    Coarse levels sample sparse rows spread over the whole raster, so a tile of theirs would
    decode a large window for a few rows. The base level's pass decodes every block row anyway;
    it also gathers the sample rows and columns of every level whose samples fit GRID_BYTES with
    the base level's (`grids`, reusable across questions: the engine keeps them in its cache),
    band by band, and tiles of those levels then cost no reading at all. Grids the pyramid owns (no
    `grids` given) go once a finer level is read: a zoom goes down level by level and never back
    up, and they are most of a question's pixel memory (140 MB at 27k); a later read of such a level
    gathers its tiles from the raster, as for any level without a grid.
    """

    GRID_BYTES = 160 << 20  # bound of the base pass's gathered samples (all grids together)

    def __init__(self, src: Any, cfg: PyramidConfig | None = None, cache_tiles: int = 4,
                 check: Optional[Callable[[], None]] = None, grids: Optional[dict] = None):
        super().__init__(src, cfg, cache_tiles)
        self.grids: dict[int, SampleGrid] = grids if grids is not None else {}
        self._own_grids = grids is None
        self._grid_bytes: dict[int, int] = {}  # bytes of the grids this pyramid gathered or used (held)
        self._blocks: Optional[BlockCache] = None
        self.check = check  # called between strip reads: lets a cancel interrupt a long read
        self.source_pixels = 0  # source pixels read (windows spanned, with `src.gather`), for the benchmark
        self._count = threading.Lock()

    # -- reading --------------------------------------------------------------------------------
    def _gather(self, rows: np.ndarray, cols: np.ndarray, **kw) -> Optional[SampleGrid]:
        """uint8 source pixels at the given sorted rows/cols: `src.gather` (parallel block-aligned
        strips) when the source has one (None when a `sink` takes the pieces), else strips of
        <= STRIP_BYTES read here one by one."""
        gather = getattr(self.src, "gather", None)
        if gather is not None:
            kw.setdefault("check", self.check)
            pixels = gather(rows, cols, _PAD_RGB, **kw)
            with self._count:
                self.reads += 1
                if pixels is not None:  # a sink counts its pieces as they come (`_gather_many`)
                    self.source_pixels += self._gather_pixels(rows, cols)
            return SampleGrid(rows, cols, pixels) if pixels is not None else None
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        max_rows = max(1, STRIP_BYTES // (3 * (c1 - c0)))
        out = np.empty((rows.size, cols.size, 3), dtype=np.uint8)
        filled = 0
        for y0, y1 in _runs(rows, max_rows):
            if self.check is not None:
                self.check()
            strip = self.src.read_rgb((c0, y0, c1, y1), (y1 - y0, c1 - c0), pad_rgb=_PAD_RGB)
            self.reads += 1
            self.source_pixels += (y1 - y0) * (c1 - c0)
            want = rows[(rows >= y0) & (rows < y1)]
            out[filled:filled + want.size] = strip[want - y0][:, cols - c0]
            filled += want.size
        return SampleGrid(rows, cols, out)

    def _index(self, out_hw: tuple[int, int], window: tuple[int, int, int, int]):
        (oh, ow), (y0, y1, x0, x1) = out_hw, window
        return source_index(self.geometry.height, oh, y0, y1), source_index(self.geometry.width, ow, x0, x1)

    def _plan_base_pass(self, rows: np.ndarray, cols: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Coarse levels whose whole-level samples the base pass can gather too, coarsest first, while
        all their grids and the base level's samples stay within GRID_BYTES: index -> (rows, cols)."""
        out = {}
        total = rows.size * cols.size * 3
        limit = min(self.GRID_BYTES, getattr(self.grids, "capacity_bytes", self.GRID_BYTES))  # a cache keeps them
        for lv in self.geometry.levels[1:]:
            if lv.index in self.grids:
                continue
            iy, ix = self._index(lv.resized, (0, lv.resized[0], 0, lv.resized[1]))
            r, c = _needed(iy), _needed(ix)
            if r.size >= self.geometry.height:  # dense sampling: tiles read their own windows cheaply
                break
            if total + r.size * c.size * 3 > limit:
                break
            total += r.size * c.size * 3
            out[lv.index] = (r, c)
        return out

    def _gather_many(self, targets: dict) -> dict:
        """SampleGrids of several (rows, cols) sets from one pass over their union. With `src.gather`,
        each piece read (a strip, or a reader's chunk) is scattered into the targets by the thread
        that read it, so memory holds the targets and the pieces in flight, never the union; otherwise
        the union's rows are read in bands of about BASE_PASS_BYTES (cut on block rows) and scattered."""
        rows = sorted_union([r for r, _ in targets.values()])
        cols = sorted_union([c for _, c in targets.values()])
        out = {k: np.empty((r.size, c.size, 3), dtype=np.uint8) for k, (r, c) in targets.items()}

        # `source_pixels` grows with every piece (the progress meter times the pass by it), to the
        # window spanned once all have come
        span = self._gather_pixels(rows, cols)
        start, delivered = self.source_pixels, [0]

        def count(piece_rows: np.ndarray, piece_cols: np.ndarray) -> None:
            r0, r1 = np.searchsorted(rows, [piece_rows[0], piece_rows[-1] + 1])
            c0, c1 = np.searchsorted(cols, [piece_cols[0], piece_cols[-1] + 1])
            with self._count:
                delivered[0] += int(r1 - r0) * int(c1 - c0)
                self.source_pixels = start + span * delivered[0] // (rows.size * cols.size)

        def scatter(piece_rows: np.ndarray, piece_cols: np.ndarray, pixels: np.ndarray) -> None:
            for key, (r, c) in targets.items():
                _scatter(piece_rows, piece_cols, pixels, r, c, out[key])

        if getattr(self.src, "gather", None) is not None:
            def streamed(piece_rows: np.ndarray, piece_cols: np.ndarray, pixels: np.ndarray) -> None:
                count(piece_rows, piece_cols)
                scatter(piece_rows, piece_cols, pixels)

            self._gather(rows, cols, sink=streamed, max_bytes=PYRAMID_STRIP_BYTES)
        else:
            for i, j in self._bands(rows, cols):
                band = self._gather(rows[i:j], cols)
                scatter(band.rows, band.cols, band.pixels)
        return {k: SampleGrid(targets[k][0], targets[k][1], px) for k, px in out.items()}

    def _bands(self, rows: np.ndarray, cols: np.ndarray) -> list[tuple[int, int]]:
        """[i, j) index ranges of `rows` that `_gather_many` reads one at a time from a source without
        `gather`: about BASE_PASS_BYTES each, ended on a block boundary so no block row is decoded twice."""
        bh = max(1, int(getattr(self.src, "block_size", (1, 1))[1]))
        oy = int(getattr(self.src, "origin", (0, 0))[1])  # a RasterWindow's rows are shifted
        per_band = max(1, BASE_PASS_BYTES // (3 * cols.size))
        bands, i = [], 0
        while i < rows.size:
            j = min(rows.size, i + per_band)
            if j < rows.size:
                edge = ((int(rows[j]) + oy) // bh) * bh - oy
                k = int(np.searchsorted(rows, edge))
                j = k if k > i else j
            bands.append((i, j))
            i = j
        return bands

    def _gather_pixels(self, rows: np.ndarray, cols: np.ndarray) -> int:
        """Source pixels one `_gather` of these rows x cols counts in `source_pixels`: the window they
        span through `src.gather` (block-aligned strips decode whole block rows, so rows between the
        samples cost as much as the samples), else the strips of `_runs` read here."""
        width = int(cols[-1]) + 1 - int(cols[0])
        if getattr(self.src, "gather", None) is not None:
            return (int(rows[-1]) + 1 - int(rows[0])) * width
        return sum((y1 - y0) * width for y0, y1 in _runs(rows, max(1, STRIP_BYTES // (3 * width))))

    # -- the pyramid interface ------------------------------------------------------------------
    def _blank(self) -> np.ndarray:
        b = self.cfg.tile_size
        return np.zeros((b, b, 3), dtype=np.float32)

    def _base_pass_plan(self):
        """(base index, thumbnail index, their sample rows, cols, coarse grids gathered with them)."""
        base = self.geometry.levels[0]
        th, tw = self.geometry.thumbnail_size
        rh, rw = base.resized
        i_base, i_thumb = self._index((rh, rw), (0, rh, 0, rw)), self._index((th, tw), (0, th, 0, tw))
        rows = sorted_union([i_base[0][0], i_base[0][1], i_thumb[0][0], i_thumb[0][1]])
        cols = sorted_union([i_base[1][0], i_base[1][1], i_thumb[1][0], i_thumb[1][1]])
        return i_base, i_thumb, rows, cols, self._plan_base_pass(rows, cols)

    def base_pass_pixels(self) -> int:
        """Source pixels the base pass will count in `source_pixels` (0 once done): the work meter's plan."""
        if self._thumbnail is not None:
            return 0
        _, _, rows, cols, wanted = self._base_pass_plan()
        for r, c in wanted.values():
            rows, cols = sorted_union([rows, r]), sorted_union([cols, c])
        # counted as the pass counts `source_pixels` (the work meter divides one by the other): a plan
        # that skipped the rows between sparse samples was 6x short on a 48000 x 36000 raster read
        # through `gather`, and `overall` ran to 0.9 at 40 % of the run. Through `gather` the pass is
        # one streamed read of the union's window; otherwise it reads band by band
        if getattr(self.src, "gather", None) is not None:
            return self._gather_pixels(rows, cols)
        return sum(self._gather_pixels(rows[i:j], cols) for i, j in self._bands(rows, cols))

    def gridded_levels(self) -> set[int]:
        """Levels whose tiles come from sample grids (read nothing): those the base pass gathers."""
        have = {lv.index for lv in self.geometry.levels[1:] if lv.index in self.grids}
        return have if self._thumbnail is not None else have | set(self._base_pass_plan()[4])

    def _base_and_thumbnail(self) -> None:
        """The base level, the thumbnail and the sample grids of the coarse levels, from one read."""
        th, tw = self.geometry.thumbnail_size
        i_base, i_thumb, rows, cols, wanted = self._base_pass_plan()
        grids = self._gather_many({-1: (rows, cols), **wanted})
        union = grids.pop(-1)
        for level, grid in grids.items():  # `grids` may be the engine's cache (get / in / setitem only)
            self.grids[level] = grid
            self._grid_bytes[level] = grid.nbytes
        workers = int(getattr(self.src, "workers", 1))
        level = union.resize(*i_base, workers=workers)
        thumb = self._blank()
        thumb[:th, :tw] = union.resize(*i_thumb, workers=workers)
        del union
        give_back_freed_memory()  # the resizes' temporaries, freed on the workers' heaps
        for a in (level, thumb):
            a.setflags(write=False)
        self._base, self._thumbnail = level, thumb

    def base_image(self) -> np.ndarray:
        if self._base is None:
            self._base_and_thumbnail()
        return self._base

    def thumbnail(self) -> np.ndarray:
        if self._thumbnail is None:
            self._base_and_thumbnail()
        return self._thumbnail

    def _tile_index(self, lv: Level, row: int, col: int):
        """(index_y, index_x, (h, w)): a tile's resize indices and its content (the image part)."""
        b = self.cfg.tile_size
        h, w = self.geometry.tile_content(lv, row, col)
        return (*self._index(lv.resized, (row * b, row * b + h, col * b, col * b + w)), (h, w))

    def _read_tile(self, lv: Level, row: int, col: int, content: tuple[int, int], **kw) -> np.ndarray:
        iy, ix, _ = self._tile_index(lv, row, col)
        grid = self.grids.get(lv.index)
        source = grid if grid is not None else self._gather(_needed(iy), _needed(ix), **kw)
        return source.resize(iy, ix)

    def tiles(self, level, positions) -> list[np.ndarray]:
        return list(self.stack(level, positions))

    def stack(self, level, positions) -> np.ndarray:
        """(n, B, B, 3) read-only: the tiles at `positions`, blended straight into one array (a batch
        is not held twice) on `src.workers` threads. A level with a sample grid reads nothing; a finer
        one reads the blocks its tiles need once for all of them (`_read_tiles`)."""
        lv = self.geometry.level(level)
        positions = [(int(r), int(c)) for r, c in positions]
        b = self.cfg.tile_size
        # the previous batch, freed by now, may sit as a hole in the heap too small for this one
        give_back_freed_memory()
        out = np.zeros((len(positions), b, b, 3), dtype=np.float32)  # zeros: the padding
        first: dict[tuple[int, int], int] = {}
        todo = []
        for i, p in enumerate(positions):
            if p in first:
                continue
            first[p] = i
            hit = self._recall((lv.index, *p))
            if hit is not None:
                out[i] = hit
            else:
                todo.append(p)
        dest = {p: out[first[p]] for p in todo}
        grid = self.grids.get(lv.index) if lv.index > 0 else None
        if grid is not None:
            self._grid_bytes[lv.index] = grid.nbytes
        if lv.index > 0 and todo:
            self._drop_coarser_grids(lv.index)
        if grid is None and (lv.index == 0 or not hasattr(self.src, "gather")):
            for p in todo:  # base tiles are crops of the base level; other sources read tile by tile
                dest[p][...] = self.tile(lv, *p)
        else:
            if grid is not None:
                def blend(p: tuple[int, int]) -> None:
                    iy, ix, (h, w) = self._tile_index(lv, *p)
                    grid.resize(iy, ix, out=dest[p][:h, :w])

                run_bounded(blend, todo, int(getattr(self.src, "workers", 1)))
                give_back_freed_memory()  # the blends' temporaries, freed on the workers' heaps
            else:
                self._read_tiles(lv, todo, dest)
            for p in todo[-self.cache_tiles:] if self.cache_tiles else []:  # the LRU keeps the last ones only
                self._remember((lv.index, *p), _frozen(dest[p].copy()))
        for i, p in enumerate(positions):
            if first[p] != i:
                out[i] = out[first[p]]
        out.setflags(write=False)
        return out

    def _drop_coarser_grids(self, level: int) -> None:
        """Forget the owned grids of levels coarser than `level` (see the class docstring)."""
        if self._own_grids and self._thumbnail is not None:
            for index in [i for i in self.grids if i < level]:
                del self.grids[index]
                self._grid_bytes.pop(index, None)

    def _read_tiles(self, lv: Level, todo: list, dest: dict) -> None:
        """Tiles of a level without a sample grid, each blended into `dest[p]` from a grid of its own.

        The blocks the tiles need are read once for all of them (a block under the edge of two tiles,
        in one tile row or in two, is decoded once), in block-aligned strips (`_tile_strips`) on
        `src.workers` threads, top to bottom; blocks a coarser level decoded come from the block cache
        (`block_cache.py`) while the budget lets it keep them. Each piece is scattered into the grids
        of the tiles it feeds, and the thread that completes a tile's grid blends it at once: decoding
        and blending overlap, and a grid lives from its first piece to its blend."""
        need = {}
        for p in todo:
            iy, ix, content = self._tile_index(lv, *p)
            need[p] = (iy, ix, content, _needed(iy), _needed(ix))
        cache = self._block_cache()
        strips, cached = self._tile_strips({p: n[3:] for p, n in need.items()}, int(getattr(self.src, "workers", 1)),
                                           cache)
        # (rows, cols, pixels, keys fed): a strip to read has no pixels yet, a cached block has them
        pieces = [(rows, cols, None, feeds) for rows, cols, feeds in strips] + cached
        waiting = {p: sum(p in piece[3] for piece in pieces) for p in todo}
        grids = {p: np.empty((n[3].size, n[4].size, 3), dtype=np.uint8) for p, n in need.items()}
        lock = threading.Lock()

        def one(piece: tuple) -> None:
            rows, cols, held, feeds = piece

            def sink(piece_rows: np.ndarray, piece_cols: np.ndarray, pixels: np.ndarray) -> None:
                for p in feeds:
                    _scatter(piece_rows, piece_cols, pixels, *need[p][3:], grids[p])
                if cache is not None and held is None:  # read just now: kept for finer levels
                    cache.keep(piece_rows, piece_cols, pixels)

            if held is not None:
                sink(rows, cols, held)
            else:
                self._gather(rows, cols, workers=1, sink=sink, check=None)  # checked between pieces, here
                with self._count:
                    self.source_pixels += self._gather_pixels(rows, cols)
            with lock:
                waiting.update((p, waiting[p] - 1) for p in feeds)
                ready = [(p, grids.pop(p)) for p in feeds if waiting[p] == 0]
            for p, pixels in ready:
                iy, ix, (h, w), r, c = need[p]
                SampleGrid(r, c, pixels).resize(iy, ix, out=dest[p][:h, :w])

        run_bounded(one, pieces, int(getattr(self.src, "workers", 1)), self.check)
        give_back_freed_memory()  # the grids and strips, freed on several threads

    def _block_cache(self) -> Optional[BlockCache]:
        """The zoom's block cache, its budget what the grids leave of GRID_BYTES (None: no budget). A
        pyramid that owns its grids has dropped them by the time a level needs blocks; with an
        engine cache the grids stay in memory, so blocks get the rest of GRID_BYTES only."""
        if not hasattr(self.src, "gather"):
            return None
        held = sum(self._grid_bytes.values())
        budget = max(0, self.GRID_BYTES - held)
        if self._blocks is None:
            self._blocks = BlockCache(self.geometry.height, self.geometry.width,
                                      getattr(self.src, "block_size", (1, 1)), getattr(self.src, "origin", (0, 0)))
        self._blocks.budget_bytes = budget
        return self._blocks if budget > 0 else None

    def _tile_strips(self, targets: dict, workers: int, cache: Optional[BlockCache] = None) -> tuple[list, list]:
        """`tile_strips.plan_tile_strips` on this source's blocks."""
        return plan_tile_strips(targets, getattr(self.src, "block_size", (1, 1)), getattr(self.src, "origin", (0, 0)),
                                (self.geometry.height, self.geometry.width), workers, cache)


def _scatter(piece_rows: np.ndarray, piece_cols: np.ndarray, pixels: np.ndarray, rows: np.ndarray,
             cols: np.ndarray, grid: np.ndarray) -> None:
    """Copy what a read piece (sorted `piece_rows` x `piece_cols`) holds of a target's sorted rows x
    cols into the target's grid."""
    lo, hi = np.searchsorted(rows, [piece_rows[0], piece_rows[-1] + 1])
    clo, chi = np.searchsorted(cols, [piece_cols[0], piece_cols[-1] + 1])
    if hi > lo and chi > clo:
        take_grid(pixels, np.searchsorted(piece_rows, rows[lo:hi]), np.searchsorted(piece_cols, cols[clo:chi]),
                  out=grid[lo:hi, clo:chi])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
