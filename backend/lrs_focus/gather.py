"""Source pixels at chosen full-resolution rows and columns, read in block-aligned strips, in parallel.

The exact pixel path samples sorted rows/columns of the raster (two per output pixel and axis).
A compressed tiled raster is decoded block by block whatever part of a block is asked for, so
strips are cut on block boundaries: no block is decoded by two strips, and a strip never relies
on GDAL's block cache keeping a block between two reads. Strips are independent, so several
threads read them at once, each with its own GDAL dataset handle (a handle is not thread-safe;
GDAL releases the GIL while it decodes).

This module needs only numpy and the standard library: reader processes import it without
torch or GDAL (the caller passes the function that reads one strip).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Optional

import numpy as np

STRIP_BYTES = 4 << 20  # source pixels (3 bytes each) in flight, all workers together
#: the exact pyramid's strips in flight (all workers), for its base pass and its batches of tiles:
#: they read whole blocks, so larger strips cut the per-strip work (a GDAL call, a flush of its
#: cache, the scatter into every grid, the caller's thread handing out the next strip): a 27k
#: question ran 0.3-0.4 s faster at 8 MB than at STRIP_BYTES, 0.05-0.4 s more at 16 MB, for 9 MB
#: more peak (289 MB)
PYRAMID_STRIP_BYTES = 16 << 20
MERGE_GAP = 8  # rows/columns closer than this are read in one strip (unblocked sources)
MAX_WORKERS = 8

Strip = tuple[int, int, int, int]  # (y0, y1, x0, x1), end exclusive


def default_workers() -> int:
    """The CPUs this process may run on, at most MAX_WORKERS (decode scales with cores, memory with workers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, n))


def pixel_items(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (h, w, c) array as (h, w) items of c values each (a void view): numpy's take
    and fancy indexing then move a whole pixel per item, not one value at a time."""
    return a.view(np.dtype((np.void, a.shape[2] * a.itemsize)))[..., 0]


def take_columns(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[:, idx] of an (h, w, c) array, C-contiguous. numpy's fancy indexing copies one value at a
    time and, on axis 1, returns a column-major result that slows every later operation; `np.take`
    of one c-value item per pixel (`pixel_items`) is several times faster and row-major."""
    a = np.ascontiguousarray(a)
    h, _, c = a.shape
    return np.take(pixel_items(a), idx, axis=1)[..., None].view(a.dtype).reshape(h, len(idx), c)


def take_grid(pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """pixels[rows][:, cols] of an (h, w, c) array, C-contiguous (len(rows), len(cols), c).

    Interleaved pixels: the rows, then one `take_columns`. A channels-last view of channel planes
    (what `gather_source` reads: GDAL writes 8-bit bands plane by plane about 1.2x faster than
    pixel-interleaved, since it copies its cached band blocks whole) is taken plane by plane, rows
    then columns, into the interleaved result: cheaper than interleaving the planes first and then
    picking from them (the base pass keeps about a third of what it decodes). With `out`, into it."""
    c = pixels.shape[2]
    row_run, col_run = _as_slice(rows), _as_slice(cols)  # every row (column) of a range: a view, no take
    if pixels.strides[2] == pixels.itemsize and pixels.strides[1] == c * pixels.itemsize:
        picked = pixels[row_run] if row_run is not None else pixels[rows]
        if out is None:
            return take_columns(picked, cols)
        out[...] = take_columns(picked, cols)
        return out
    if out is None:
        out = np.empty((rows.size, cols.size, c), dtype=pixels.dtype)
    for k in range(c):
        plane = pixels[..., k]
        picked = plane[row_run] if row_run is not None else np.take(plane, rows, axis=0)
        out[..., k] = picked[:, col_run] if col_run is not None else np.take(picked, cols, axis=1)
    return out


def _as_slice(idx: np.ndarray) -> Optional[slice]:
    """The slice of sorted unique `idx` when it is a whole range (the dense levels' samples), else None."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


def _spans(idx: np.ndarray, block: int, limit: int) -> list[tuple[int, int]]:
    """[start, stop) spans covering sorted unique `idx`: consecutive blocks (or gaps <= MERGE_GAP)
    join one span, a span holds at most `limit` indices' range and is cut only on a block boundary
    unless one block alone exceeds `limit`."""
    block = max(1, int(block))
    limit = max(1, int(limit))
    spans: list[tuple[int, int]] = []
    start = prev = int(idx[0])
    for v in idx[1:]:
        v = int(v)
        joined = v // block <= prev // block + 1 or v - prev <= MERGE_GAP
        if joined and v + 1 - start > limit:
            cut = (v // block) * block  # the start of v's block
            if start < cut <= prev:  # the span ends before v's block, whose earlier indices go on with v
                k = int(np.searchsorted(idx, cut))
                spans.append((start, int(idx[k - 1]) + 1))
                start = int(idx[k])
                if v + 1 - start > limit:  # a block taller than the limit: cut inside it
                    spans.append((start, prev + 1))
                    start = v
            else:
                spans.append((start, prev + 1))
                start = v
        elif not joined:
            spans.append((start, prev + 1))
            start = v
        prev = v
    spans.append((start, prev + 1))
    return spans


def plan_strips(rows: np.ndarray, cols: np.ndarray, block_size: tuple[int, int] = (1, 1),
                workers: int = 1, max_bytes: int = STRIP_BYTES, bytes_per_px: int = 3) -> list[Strip]:
    """Block-aligned strips (y0, y1, x0, x1) that together cover every (row, col) pair asked for.

    Each strip holds at most max_bytes / workers bytes (all workers' strips fit max_bytes), and
    there are at least `workers` strips where the rows span that many blocks. `block_size` is
    GDAL's (width, height). Reader processes can plan on a subset of the rows.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if rows.size == 0 or cols.size == 0:
        return []
    bw, bh = (max(1, int(v)) for v in block_size)
    workers = max(1, int(workers))
    budget = max(1, max_bytes // (workers * bytes_per_px))  # pixels per strip
    width = int(cols[-1]) + 1 - int(cols[0])
    # columns: split where a whole block holds no asked column (tiles of one row with a gap between
    # them) and where a block row of the span would exceed the budget
    col_limit = max(bw, budget // bh) if width * bh > budget else width
    col_spans = _spans(cols, bw, col_limit)
    widest = max(x1 - x0 for x0, x1 in col_spans)
    height = int(rows[-1]) + 1 - int(rows[0])
    row_limit = max(1, budget // widest)
    if workers > 1 and len(col_spans) < workers:  # enough strips to keep every worker busy
        per_worker = -(-height // (workers // len(col_spans) or 1))
        row_limit = min(row_limit, max(bh, -(-per_worker // bh) * bh))
    return [(y0, y1, x0, x1) for y0, y1 in _spans(rows, bh, row_limit) for x0, x1 in col_spans]


def split_rows(rows: np.ndarray, block_height: int, parts: int) -> list[np.ndarray]:
    """Sorted `rows` cut into at most `parts` consecutive groups of about equal size, each cut on a
    block boundary (no block row in two groups): what several reader processes gather, one group each."""
    rows = np.asarray(rows, dtype=np.int64)
    bh, parts = max(1, int(block_height)), max(1, int(parts))
    if rows.size == 0:
        return []
    blocks = rows // bh
    starts = np.flatnonzero(np.diff(blocks, prepend=blocks[0] - 1))  # first row of each block row
    cuts = sorted({int(starts[np.searchsorted(starts, rows.size * k / parts)]) for k in range(1, parts)
                   if np.searchsorted(starts, rows.size * k / parts) < starts.size})
    return [g for g in np.split(rows, cuts) if g.size]


# (rows, cols, pixels of rows x cols): the rows and columns are sorted and may include some not asked
# for (a strip read whole); every asked pair comes in exactly one piece
Sink = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def block_chunks(rows: np.ndarray, block_height: int, max_rows: int) -> list[tuple[int, int]]:
    """[a, b) index spans of sorted `rows`, each at most `max_rows` long and cut between block rows
    (a block row taller than `max_rows` is cut inside): one reader's shares of a gather, in pieces
    that fit its shared memory, no block decoded twice."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    max_rows = max(1, int(max_rows))
    blocks = rows // max(1, int(block_height))
    ends = list(np.flatnonzero(np.diff(blocks)) + 1) + [rows.size]  # where each block row's indices end
    spans: list[tuple[int, int]] = []
    a = prev = 0
    for e in ends:
        if e - a > max_rows:
            if prev > a:
                spans.append((a, prev))
                a = prev
            while e - a > max_rows:
                spans.append((a, a + max_rows))
                a += max_rows
        prev = e
    if a < rows.size:
        spans.append((a, rows.size))
    return spans


StripRead = Callable[[Strip, np.ndarray], tuple[np.ndarray, np.ndarray, Optional[Callable[[], None]]]]


def gather_strips(read: StripRead, rows: np.ndarray,
                  cols: np.ndarray, strips: list[Strip], workers: int = 1,
                  check: Optional[Callable[[], None]] = None, sink: Optional[Sink] = None) -> Optional[np.ndarray]:
    """uint8 (len(rows), len(cols), 3): `read(strip, strip_rows)` -> (piece_rows, pixels, done), the
    pixels (len(piece_rows), x1 - x0, 3) of sorted rows that include the asked `strip_rows` (any layout
    `take_grid` takes) and what to call once they are copied (or None); the asked rows and columns are
    copied into place; up to `workers` at once.

    With `sink`, nothing is assembled: each strip's pixels go to `sink(piece_rows, arange(x0, x1),
    pixels)` on the thread that read them (strips cover disjoint rows x columns), and None is
    returned. `check()` runs in the calling thread before each strip is started; when it raises, no
    new strip starts, the strips being read finish (each is bounded), every thread has ended, and
    the exception propagates."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    out = np.empty((rows.size, cols.size, 3), dtype=np.uint8) if sink is None else None

    def one(strip: Strip) -> None:
        y0, y1, x0, x1 = strip
        r0, r1 = np.searchsorted(rows, [y0, y1])
        c0, c1 = np.searchsorted(cols, [x0, x1])
        if r1 > r0 and c1 > c0:
            piece_rows, pixels, done = read(strip, rows[r0:r1])
            try:
                if sink is not None:
                    sink(piece_rows, np.arange(x0, x1), pixels)
                else:
                    take_grid(pixels, np.searchsorted(piece_rows, rows[r0:r1]), cols[c0:c1] - x0,
                              out=out[r0:r1, c0:c1])
            finally:
                if done is not None:
                    done()

    try:
        run_bounded(one, strips, workers, check)
    finally:
        give_back_freed_memory()
    return out


def give_back_freed_memory() -> None:
    """Return the heap pages freed by a gather to the system (glibc's `malloc_trim`; nothing elsewhere).

    Strips are decoded on worker threads, each allocating from its own malloc arena; the blocks GDAL
    caches and the strip buffers are freed in an order that leaves those arenas fragmented, so the
    freed megabytes stay resident (60-70 MB over a 27k question) unless trimmed. A fixed mmap
    threshold would avoid it too, but at about 4 CPU seconds of page faults per question."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def run_bounded(fn: Callable, items: list, workers: int, check: Optional[Callable[[], None]] = None) -> None:
    """fn(item) for every item, at most `workers` at once on threads that end before this returns.

    `check()` runs in the calling thread before each item is queued; when it (or an fn) raises, no
    new item starts (the queued ones are cancelled), the running ones finish, and the exception
    propagates. One item per worker waits queued behind the running ones: a worker that finishes
    takes the next at once instead of idling until this thread wakes and gets the GIL (up to its
    5 ms switch interval while another thread runs Python): a 27k base pass of 869 strips keeps 1.84
    of 2 cores busy instead of 1.80."""
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        for item in items:
            if check is not None:
                check()
            fn(item)
        return
    pending: set[Future] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gather") as pool:
        try:
            for item in items:
                while len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                if check is not None:
                    check()
                pending.add(pool.submit(fn, item))
            for f in pending:
                f.result()
        finally:
            for f in pending:
                f.cancel()  # the queued ones; `with` then waits for the ones already running


class HandlePool:
    """Idle dataset handles shared by the threads of any gather: a strip borrows one and returns it."""

    def __init__(self, opener: Callable[[], object]):
        self._opener = opener
        self._idle: list[object] = []
        self._lock = threading.Lock()

    def borrow(self) -> object:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._opener()

    def give_back(self, handle: object) -> None:
        with self._lock:
            self._idle.append(handle)

    def close(self) -> None:
        with self._lock:
            self._idle.clear()


class BufferPool:
    """Strip buffers that outlive a gather: a thread borrows one of at least n bytes and gives it back.

    A fresh buffer per strip costs a page fault per 4 KB GDAL writes into it (the gathers that trim
    the heap after them give its pages back), about a fifth of the decoding time of the small
    strips a zoom level reads. At most one buffer per thread reading at once is ever made."""

    def __init__(self):
        self._idle: list[np.ndarray] = []
        self._lock = threading.Lock()

    def borrow(self, n: int) -> np.ndarray:
        with self._lock:
            for i, buffer in enumerate(self._idle):
                if buffer.size >= n:
                    return self._idle.pop(i)
            if self._idle:  # too small: replaced by a larger one (the count stays the threads')
                self._idle.pop()
        return np.empty(n, dtype=np.uint8)

    def give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._idle.append(buffer)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


def gather_source(src, rows, cols, pad_rgb, check: Optional[Callable[[], None]], workers: int,
                  max_bytes: int = STRIP_BYTES, sink: Optional[Sink] = None) -> Optional[np.ndarray]:
    """`RasterSource.gather`: its strips read with `src.read_rgb` on handles borrowed from `src._handles`
    (never the source's own handle: gathers may run on several threads at once)."""
    workers = max(1, int(workers))
    raw_bytes = (src.data_type == "Byte" and not src.explicit_stretch) or src.palette is not None
    strips = plan_strips(rows, cols, src.block_size, workers, max_bytes, 3 if raw_bytes else 12)
    _ = src.stretch  # estimated once, on the caller's handle, before any thread reads
    # plain 8-bit RGB, nothing to stretch or paint: GDAL writes pixel-interleaved rows straight into
    # the strip's array (no band planes to restack); anything else goes through `read_rgb`
    direct = (src.data_type == "Byte" and len(src.bands) == 3 and src.palette is None and not src.explicit_stretch
              and not src._mask_needed and not src._is_float)

    bh = max(1, int(src.block_size[1]))

    def read(strip: Strip, want: np.ndarray):
        """The strip's asked rows. 8-bit RGB whose asked rows leave no block row of the strip out (a
        tiled raster's strips never do): the whole strip in one GDAL read, band planes (see
        `take_grid`). Otherwise one read per run of consecutive rows, pixel-interleaved: every block
        is decoded once (it stays in GDAL's cache between the runs: a strip is far smaller than the
        cache), and only asked rows are copied out."""
        _, _, x0, x1 = strip
        ds = src._handles.borrow()
        try:
            y0, y1 = int(want[0]), int(want[-1]) + 1
            block_rows = np.count_nonzero(np.diff(want // bh)) + 1  # `want` is sorted
            if direct and y1 - y0 <= block_rows * bh:
                shape = (len(src.bands), y1 - y0, x1 - x0)
                size = shape[0] * shape[1] * shape[2]
                buffer = src._buffers.borrow(size)
                planes = buffer[:size].reshape(shape)
                ds.ReadRaster(x0, y0, x1 - x0, y1 - y0, band_list=list(src.bands), buf_obj=planes)
                return np.arange(y0, y1), np.moveaxis(planes, 0, -1), functools.partial(src._buffers.give_back, buffer)
            out = np.empty((want.size, x1 - x0, 3), dtype=np.uint8)
            starts = np.flatnonzero(np.diff(want, prepend=want[0] - 2) != 1)
            for a, b in zip(starts, list(starts[1:]) + [want.size]):
                y0, y1 = int(want[a]), int(want[b - 1]) + 1
                if direct:
                    ds.ReadRaster(x0, y0, x1 - x0, y1 - y0, band_list=list(src.bands), buf_pixel_space=3,
                                  buf_line_space=3 * (x1 - x0), buf_band_space=1, buf_obj=out[a:b])
                else:
                    out[a:b] = src.read_rgb((x0, y0, x1, y1), (y1 - y0, x1 - x0), pad_rgb, _ds=ds)
            return want, out, None
        finally:
            # strips are block-aligned, so no later strip wants these blocks: dropping them keeps
            # GDAL's block cache (64 MB, filled by every handle) from adding its size to the peak
            ds.FlushCache()
            src._handles.give_back(ds)

    return gather_strips(read, rows, cols, strips, workers, check, sink)
