"""Which blocks a batch of tiles reads, in which strips: the plan of `ExactPyramid._read_tiles`.

Targets are tiles' sample rows x columns, in the pixels of a view whose blocks are `block_size`
(GDAL's width, height) shifted by `origin`. Only numpy and the standard library.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .block_cache import BlockCache
from .gather import PYRAMID_STRIP_BYTES


def plan_tile_strips(targets: dict, block_size: tuple[int, int], origin: tuple[int, int], size: tuple[int, int],
                     workers: int, cache: Optional[BlockCache] = None) -> tuple[list, list]:
    """Block-aligned strips (rows, cols, keys fed) over exactly the blocks that some target's rows x
    cols touch (targets apart from each other are not crossed: the rows of one with the columns of
    another), each at most PYRAMID_STRIP_BYTES / workers, top to bottom; and (rows, cols, pixels,
    keys fed) of the needed blocks `cache` holds, which no strip reads. `size` is the view's (height,
    width). With a cache, strips ask for every row and column of their blocks (the cache keeps whole
    blocks). Planned on block indices (it runs on the caller's thread while the workers wait: a
    plan per batch of tiles)."""
    bw, bh = (max(1, int(v)) for v in block_size)
    ox, oy = (int(v) for v in origin)  # a RasterWindow's blocks are shifted
    budget = max(1, PYRAMID_STRIP_BYTES // (3 * max(1, workers)))  # pixels a strip
    blocks = {k: (_block_indices(r, oy, bh), _block_indices(c, ox, bw)) for k, (r, c) in targets.items()}
    needed: dict[int, set] = {}  # block row -> the block columns needed in it (and not cached)
    cached = []
    for block_rows, block_cols in blocks.values():
        for by in block_rows:
            needed.setdefault(by, set()).update(block_cols)
    if cache is not None:
        for by, row in needed.items():
            for bx in sorted(row):
                pixels = cache.get((by, bx))  # held from here on, even if the cache lets it go
                if pixels is None:
                    continue
                row.discard(bx)
                y0, y1, x0, x1 = cache.window((by, bx))
                feeds = [k for k, (br, bc) in blocks.items() if by in br and bx in bc]
                cached.append((np.arange(y0, y1), np.arange(x0, x1), pixels, feeds))
    # rectangles of blocks: a run of consecutive needed block columns, over the consecutive block
    # rows that need the same run
    rects: list[list[int]] = []
    open_runs: dict[tuple[int, int], list[int]] = {}
    for by in sorted(needed):
        runs = _consecutive_runs(sorted(needed[by]))
        open_runs = {run: (open_runs[run] if run in open_runs and open_runs[run][1] == by - 1 else None)
                     for run in runs}
        for run, rect in open_runs.items():
            if rect is None:
                rect = [by, by, *run]
                rects.append(rect)
                open_runs[run] = rect
            rect[1] = by
    windows = []  # (by0, by1, bx0, bx1) inclusive: whole block rows while they fit, else blocks of one
    for by0, by1, bx0, bx1 in rects:
        across = (bx1 - bx0 + 1) * bw * bh  # pixels of one block row of the rectangle
        if across <= budget:
            step = budget // across
            windows += [(y, min(by1, y + step - 1), bx0, bx1) for y in range(by0, by1 + 1, step)]
        else:
            step = max(1, budget // (bw * bh))  # a block larger than the budget is one strip (bounded on open)
            windows += [(y, y, x, min(bx1, x + step - 1)) for y in range(by0, by1 + 1)
                        for x in range(bx0, bx1 + 1, step)]
    strips = []
    for by0, by1, bx0, bx1 in sorted(windows):
        feeds = [k for k, (br, bc) in blocks.items()
                 if not br.isdisjoint(range(by0, by1 + 1)) and not bc.isdisjoint(range(bx0, bx1 + 1))]
        y0, y1, x0, x1 = by0 * bh - oy, (by1 + 1) * bh - oy, bx0 * bw - ox, (bx1 + 1) * bw - ox
        if not feeds:
            continue
        if cache is not None:  # whole blocks, clipped to the view
            rows = [np.arange(max(0, y0), min(size[0], y1))]
            cols = [np.arange(max(0, x0), min(size[1], x1))]
        else:
            rows = [_within(targets[k][0], y0, y1) for k in feeds]
            cols = [_within(targets[k][1], x0, x1) for k in feeds]
            if len(feeds) > 1:
                rows, cols = [sorted_union(rows)], [sorted_union(cols)]
        strips.append((rows[0], cols[0], feeds))
    return strips, cached


def sorted_union(arrays: list) -> np.ndarray:
    """The sorted unique values of several arrays (np.union1d hashes its input: 5x slower here)."""
    a = np.sort(np.concatenate(arrays), kind="stable")
    return a[np.flatnonzero(np.diff(a, prepend=a[0] - 1))] if a.size else a


def _block_indices(idx: np.ndarray, origin: int, block: int) -> set:
    """The blocks (indices along one axis) that sorted pixel indices fall in."""
    blocks = (idx + origin) // block
    return set(blocks[np.flatnonzero(np.diff(blocks, prepend=-1))].tolist())


def _consecutive_runs(values: list[int]) -> list[tuple[int, int]]:
    """[first, last] runs of consecutive sorted integers."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _within(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The sorted values in [lo, hi)."""
    a, b = np.searchsorted(values, [lo, hi])
    return values[a:b]
