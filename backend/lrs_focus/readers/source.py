"""`ConfinedSource`: RasterSource's public interface over one or more confined reader processes.

The engine treats it as a `raster.RasterSource` (the pyramids, the thumbnail, the cache key);
every call becomes a request to a reader, whose answer pixels come back through its shared
memory. `read_rgb` and `gather` may be called from several threads at once: each call takes a
free reader of the source's own (the first opened at `open`, more leased for `gather`). Every read
is charged, before it is sent, to the question's budget of decoded source pixels
(`pool.max_source_pixels`): a read past it is refused with `raster_too_large` and the figures.
A read or gather larger than a reader's shared memory is cut into pieces that fit it, each its
own GDAL read in the reader, so a reader's memory follows the piece, not the answer.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

from .. import errors
from ..gather import STRIP_BYTES, block_chunks, split_rows
from ..raster import BandStretch, RasterSource

#: A gather at least this large (rows x column span) also uses the readers free at that moment.
PARALLEL_MIN_PIXELS = 8_000_000
#: Largest answer of one read_rgb (RGB bytes): the server holds the whole answer, and a small window
#: asked at a huge output size (an upsampling) decodes few source pixels, so the pixel budget alone
#: would not bound it.
MAX_READ_BYTES = 1 << 30
Reader = ReaderPool = Any  # pool.py's classes; not imported (pool.open imports this module)


class ConfinedSource:
    """Use `ReaderPool.open`. Attributes as RasterSource's (see raster.py)."""

    overview_for = RasterSource.overview_for  # pure arithmetic on overview_sizes

    def __init__(self, pool: ReaderPool, reader: Reader, meta: dict, open_args: dict,
                 check: Optional[Callable[[], None]]):
        self.pool, self.check, self._open_args = pool, check, open_args
        self.path: str = open_args["path"]
        self.height, self.width = int(meta["height"]), int(meta["width"])
        self.band_count, self.bands = int(meta["band_count"]), tuple(meta["bands"])
        self.palette = None if meta["palette"] is None else np.asarray(meta["palette"], dtype=np.uint8)
        self.data_type, self.driver = meta["data_type"], meta["driver"]
        self.block_size = tuple(meta["block_size"])
        self.overview_sizes = [tuple(s) for s in meta["overview_sizes"]]
        self.explicit_stretch = bool(meta["explicit_stretch"])
        self.georeferenced, self.crs_wkt = bool(meta["georeferenced"]), meta["crs_wkt"]
        self.geotransform = tuple(meta["geotransform"])
        self._identity = meta["identity"]
        self._stretch: Optional[list[BandStretch]] = (
            [BandStretch(float(lo), float(hi)) for lo, hi in open_args["stretch"]] if self.explicit_stretch else None)
        self._readers = [reader]
        self._free = [reader]
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self.decoded = 0  # source pixels charged to this question

    @classmethod
    def open(cls, pool: ReaderPool, path: str, bands=None, stretch=None, open_options=None,
             check: Optional[Callable[[], None]] = None) -> "ConfinedSource":
        args = {"path": str(path), "bands": None if bands is None else [int(b) for b in bands],
                "stretch": None if stretch is None else [[float(v) for v in pair] for pair in stretch],
                "open_options": list(open_options or [])}
        reader = pool.lease(check)
        try:
            meta = reader.request("open", check, pool.timeout_s, **args)
        except BaseException:
            pool.give_back(reader)
            raise
        return cls(pool, reader, meta, args, check)

    # -- the RasterSource interface -------------------------------------------------------------
    def identity(self) -> tuple:
        return self._identity

    @property
    def stretch(self) -> list[BandStretch]:
        if self._stretch is None:
            pairs = self._call("stretch", self.check)
            self._stretch = [BandStretch(float(lo), float(hi)) for lo, hi in pairs]
        return self._stretch

    @stretch.setter
    def stretch(self, value) -> None:
        self._stretch = list(value)
        pairs = [[s.low, s.high] for s in self._stretch]
        for _ in range(len(self._readers)):
            self._call("set_stretch", self.check, values=pairs)

    def read_rgb(self, window, out_size, pad_rgb=(0, 0, 0)) -> np.ndarray:
        """As RasterSource.read_rgb. Larger than a reader's shared memory: read in pieces of the
        window (the window clamped to the raster first, as RasterSource does), each a GDAL read of the
        same scale; a full-resolution read gives the same pixels, a resampled one the same up to
        GDAL's floating-point rounding of where a piece's samples fall."""
        x0, y0, x1, y1 = (float(v) for v in window)
        h, w = int(out_size[0]), max(1, int(out_size[1]))
        ov = self.overview_for(max(x1 - x0, 0.0) / w)
        f = 1.0 if ov is None else self.width / self.overview_sizes[ov][1]
        if 3 * max(h, 0) * w > MAX_READ_BYTES:
            raise errors.RasterTooLarge(f"{self.path}: a read of {w} x {h} px ({3 * h * w / 2**20:.0f} MiB) is larger "
                                        f"than this server's {MAX_READ_BYTES >> 20} MiB a read")
        self._charge(max(x1 - x0, 0.0) * max(y1 - y0, 0.0) / (f * f))
        pad = [int(v) for v in pad_rgb]
        if 3 * h * w <= self.pool.shm_bytes:
            return self._call("read", self.check, window=[x0, y0, x1, y1], out_size=[h, w], pad_rgb=pad, pixels=True)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(self.width), x1), min(float(self.height), y1)
        out = np.empty((h, w, 3), dtype=np.uint8)
        for (a, b), (c, d) in _pieces(h, w, self.pool.shm_bytes):
            piece = [_at(x0, x1, c, w), _at(y0, y1, a, h), _at(x0, x1, d, w), _at(y0, y1, b, h)]
            out[a:b, c:d] = self._call("read", self.check, window=piece, out_size=[b - a, d - c], pad_rgb=pad,
                                       pixels=True)
        return out

    def gather(self, rows, cols, pad_rgb=(0, 0, 0), check: Optional[Callable[[], None]] = None,
               sink=None, workers: Optional[int] = None, max_bytes: int = STRIP_BYTES) -> Optional[np.ndarray]:
        """uint8 (len(rows), len(cols), 3): source pixels at sorted unique rows/cols, the rows split
        over up to `pool.parallel` readers (chunks that fit their shared memory); with `sink`, each
        chunk goes to `sink(rows, cols, pixels)` as it arrives and None is returned, in pieces of at
        most `max_bytes`. `workers` is RasterSource's (its threads); here the readers free decide."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.empty((rows.size, cols.size, 3), dtype=np.uint8) if sink is None else None
        if rows.size == 0 or cols.size == 0:
            return out
        span = float(rows.size) * (int(cols[-1]) - int(cols[0]) + 1)
        self._charge(span)
        helpers = self._lease_helpers() if span >= PARALLEL_MIN_PIXELS else []
        try:
            self._gather_into(out, rows, cols, pad_rgb, _both(self.check, check), sink, max_bytes)
            return out
        finally:
            self._give_back(helpers)

    def _gather_into(self, out, rows, cols, pad_rgb, both, sink=None, max_bytes: int = STRIP_BYTES) -> None:
        # one group of whole block rows per reader (no block decoded by two), cut again where a
        # group would not fit a reader's shared memory (in columns too where one row would not);
        # streamed to a sink: pieces of at most max_bytes, so that the caller never holds much more
        budget = self.pool.shm_bytes if sink is None else min(self.pool.shm_bytes, max_bytes)
        piece_rows, piece_cols = _piece_shape(cols.size, budget)
        chunks, start = [], 0
        for group in split_rows(rows, self.block_size[1], len(self._readers)):
            chunks += [((start + a, start + b), (c, min(c + piece_cols, cols.size)))
                       for a, b in block_chunks(group, self.block_size[1], piece_rows)
                       for c in range(0, cols.size, piece_cols)]
            start += group.size

        def part(piece) -> None:
            (a, b), (c, d) = piece
            pixels = self._call("gather", both, rows=rows[a:b].tolist(), cols=cols[c:d].tolist(),
                                pad_rgb=[int(v) for v in pad_rgb], pixels=True)
            if sink is not None:
                sink(rows[a:b], cols[c:d], pixels)
            else:
                out[a:b, c:d] = pixels

        if len(self._readers) == 1 or len(chunks) == 1:
            for span in chunks:
                part(span)
        else:
            with ThreadPoolExecutor(len(self._readers), thread_name_prefix="lrs-gather") as ex:
                list(ex.map(part, chunks))

    def describe(self) -> dict:
        return {"path": self.path, "size": [self.height, self.width], "band_count": self.band_count,
                "bands": list(self.bands), "palette": self.palette is not None, "data_type": self.data_type,
                "block_size": list(self.block_size), "overviews": [list(s) for s in self.overview_sizes],
                "stretch": [[s.low, s.high] for s in self.stretch], "georeferenced": self.georeferenced,
                "geotransform": list(self.geotransform), "crs_wkt": self.crs_wkt, "driver": self.driver}

    def close(self) -> None:
        with self._cond:
            readers, self._readers, self._free = self._readers, [], []
        self._release(readers)

    def __enter__(self) -> "ConfinedSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def expect_full_read(self, height: int, width: int) -> None:
        """Refuse now, from the declared size, a question that must decode a height x width window at
        full resolution (the exact pixel path's base pass; any path without overviews) past the budget."""
        budget = self.pool.max_source_pixels
        if float(height) * float(width) > budget:
            raise errors.RasterTooLarge(
                f"{self.path}: a {width} x {height} px read at full resolution is {height * width / 1e6:.0f} Mpx of "
                f"source pixels; this server's limit is {budget / 1e6:.0f} Mpx a question (build overviews and use "
                "pixels=gdal, or ask about a window)")

    # -- readers -------------------------------------------------------------------------------
    def _charge(self, pixels: float) -> None:
        with self._lock:
            budget = self.pool.max_source_pixels
            if self.decoded + pixels > budget:
                raise errors.RasterTooLarge(
                    f"{self.path}: this question would decode more than {budget / 1e6:.0f} Mpx of source pixels "
                    f"({self.decoded / 1e6:.0f} Mpx read, the next read {pixels / 1e6:.0f} Mpx); this server's limit "
                    f"is {budget / 1e6:.0f} Mpx a question (build overviews, or ask about a window)")
            self.decoded += int(pixels)

    def _lease_helpers(self) -> list:
        """More readers for one large gather, as many as are free now (never waiting for one); they
        go back to the pool after it, so that another question's open does not wait for this one."""
        helpers: list = []
        while len(self._readers) < self.pool.parallel:
            reader = self.pool.lease(wait=False)
            if reader is None:
                return helpers
            try:
                reader.request("open", self.check, self.pool.timeout_s, **self._open_args)
                if self._stretch is not None:
                    reader.request("set_stretch", self.check, self.pool.timeout_s,
                                   values=[[s.low, s.high] for s in self._stretch])
            except BaseException:
                self.pool.give_back(reader)
                raise
            with self._cond:
                self._readers.append(reader)
                self._free.append(reader)
                self._cond.notify_all()
            helpers.append(reader)
        return helpers

    def _give_back(self, helpers: list) -> None:
        with self._cond:
            for reader in helpers:
                self._readers.remove(reader)
                if reader in self._free:
                    self._free.remove(reader)
        self._release(helpers)

    def _release(self, readers: list) -> None:
        """Close this raster in each reader (a dead one needs no closing) and give it back to the pool."""
        for reader in readers:
            if not reader.dead:
                try:
                    reader.request("close", None, 10.0)
                except errors.LrsFocusError:
                    pass
            self.pool.give_back(reader)

    def _take(self) -> Reader:
        with self._cond:
            while True:
                alive = [r for r in self._readers if not r.dead]
                if not alive:
                    raise errors.RasterUnreadable(f"{self.path}: the raster's reader was stopped")
                if self._free:
                    return self._free.pop(0)
                self._cond.wait(0.05)

    def _call(self, op: str, check, pixels: bool = False, **kwargs) -> Any:
        reader = self._take()
        try:
            result = reader.request(op, check, self.pool.timeout_s, **kwargs)
            if pixels:
                shape = result[0] if op == "gather" else result
                result = reader.pixels(tuple(shape))
            return result
        finally:
            with self._cond:
                if not reader.dead:
                    self._free.append(reader)  # round robin: set_stretch reaches every reader
                self._cond.notify_all()


def _piece_shape(w: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of an RGB piece of at most `budget` bytes from w columns: whole rows where a row
    fits, else columns cut too."""
    cols = max(1, min(w, budget // 3))
    return max(1, budget // (3 * cols)), cols


def _pieces(h: int, w: int, shm_bytes: int) -> list:
    """((row0, row1), (col0, col1)) pieces of an h x w RGB answer, each at most shm_bytes (`_piece_shape`)."""
    rows, cols = _piece_shape(w, shm_bytes)
    return [((a, min(h, a + rows)), (c, min(w, c + cols))) for a in range(0, h, rows) for c in range(0, w, cols)]


def _at(lo: float, hi: float, i: int, n: int) -> float:
    """Source coordinate of output edge i of n over [lo, hi] (the ends exact)."""
    return hi if i == n else lo + (hi - lo) * i / n


def _both(a, b):
    if a is None or b is None:
        return a or b

    def check() -> None:
        a()
        b()

    return check
