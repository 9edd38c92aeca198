"""Decoded full-resolution blocks a zoom keeps for its finer levels (exact pixel path).

Each finer level of a coarse-to-fine zoom reads inside the tiles the previous level selected, so
the blocks it needs were decoded one level up: at 27k, levels 4 and 5 need 356 blocks, all decoded
by level 3. GDAL's own block cache cannot serve them: it is per dataset handle (each reader thread
has its own) and the gathers flush it after every strip to keep it off the peak. This cache holds
what a read delivered, block by block, LRU within a byte budget.

Only numpy and the standard library: the pixel path's processes import it without torch or GDAL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import numpy as np

Block = tuple[int, int]  # (block row, block column) of the raster the view's blocks belong to


class BlockCache:
    """Blocks of a view of `height` x `width` pixels whose blocks are `block_size` (GDAL's width,
    height) shifted by `origin` (a RasterWindow's; a block cut by the view's edge is kept cut)."""

    def __init__(self, height: int, width: int, block_size: tuple[int, int], origin: tuple[int, int] = (0, 0),
                 budget_bytes: int = 0):
        self.height, self.width = int(height), int(width)
        self.bw, self.bh = (max(1, int(v)) for v in block_size)
        self.ox, self.oy = (int(v) for v in origin)
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self._blocks: OrderedDict[Block, np.ndarray] = OrderedDict()  # planes (3, h, w)
        self._lock = threading.Lock()

    def window(self, block: Block) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the block's pixels in the view, end exclusive."""
        by, bx = block
        return (max(0, by * self.bh - self.oy), min(self.height, (by + 1) * self.bh - self.oy),
                max(0, bx * self.bw - self.ox), min(self.width, (bx + 1) * self.bw - self.ox))

    def get(self, block: Block) -> Optional[np.ndarray]:
        """The block's pixels (h, w, 3), a view of its planes (what `gather.take_grid` takes), or None."""
        with self._lock:
            planes = self._blocks.get(block)
            if planes is None:
                return None
            self._blocks.move_to_end(block)
        return np.moveaxis(planes, 0, -1)

    def __contains__(self, block: Block) -> bool:
        with self._lock:
            return block in self._blocks

    def keep(self, rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray) -> None:
        """Copy in every block a read piece (sorted `rows` x `cols`, pixels (rows, cols, 3) in any
        layout) holds whole, while the budget allows (the least recently used go first)."""
        if self.budget_bytes <= 0 or rows.size == 0 or cols.size == 0:
            return
        for by in range((int(rows[0]) + self.oy) // self.bh, (int(rows[-1]) + self.oy) // self.bh + 1):
            for bx in range((int(cols[0]) + self.ox) // self.bw, (int(cols[-1]) + self.ox) // self.bw + 1):
                y0, y1, x0, x1 = self.window((by, bx))
                r = _whole(rows, y0, y1)
                c = _whole(cols, x0, x1)
                if r is None or c is None or (by, bx) in self:
                    continue
                # a copy, always: a piece is often a view of a strip buffer the next strip reuses
                # (np.ascontiguousarray would return a one-block piece's planes as they are)
                planes = np.moveaxis(pixels[r, c], -1, 0).copy(order="C")
                with self._lock:
                    if planes.nbytes > self.budget_bytes:
                        return
                    self._blocks[(by, bx)] = planes
                    self.used_bytes += planes.nbytes
                    while self.used_bytes > self.budget_bytes:
                        _, old = self._blocks.popitem(last=False)
                        self.used_bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.used_bytes = 0


def _whole(idx: np.ndarray, lo: int, hi: int) -> Optional[slice]:
    """The slice of sorted unique `idx` holding every index of [lo, hi), or None when one is missing."""
    a, b = np.searchsorted(idx, [lo, hi])
    if b - a != hi - lo or hi <= lo:
        return None
    return slice(int(a), int(b))
