"""A pixel window of an open raster seen as a raster of its own (kept apart from raster.py for size)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Window = tuple[float, float, float, float]


class RasterWindow:
    """A pixel window of an open raster, seen as a raster of its own (the `window` option).

    The pyramid, the thumbnail and every tile are built on the window only; `origin` shifts the
    trace's windows back to pixels of the whole raster. Reads are delegated, shifted.
    """

    def __init__(self, src: Any, window: Sequence[float]):
        x0, y0, x1, y1 = (float(v) for v in window)
        ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        ix1, iy1 = min(src.width, int(np.ceil(x1))), min(src.height, int(np.ceil(y1)))
        if ix1 <= ix0 or iy1 <= iy0:
            from .errors import BadOptions

            raise BadOptions(f"window {list(window)} does not overlap the raster ({src.width} x {src.height} pixels)")
        self.src = src
        self.origin = (ix0, iy0)
        self.window = (ix0, iy0, ix1, iy1)
        self.width, self.height = ix1 - ix0, iy1 - iy0
        self.block_size = getattr(src, "block_size", (1, 1))  # the source's blocks (origin-shifted)

    @property
    def workers(self) -> int:
        """The source's gather threads: the pyramid blends a window's tiles on as many."""
        return int(getattr(self.src, "workers", 1))

    def read_rgb(self, window: Window, out_size: tuple[int, int], pad_rgb=(0, 0, 0)) -> np.ndarray:
        x0, y0, x1, y1 = (float(v) for v in window)
        ox, oy = self.origin
        return self.src.read_rgb((x0 + ox, y0 + oy, x1 + ox, y1 + oy), out_size, pad_rgb=pad_rgb)

    def gather(self, rows, cols, pad_rgb=(0, 0, 0), check=None, sink=None, **kw) -> np.ndarray | None:
        ox, oy = self.origin
        if sink is not None:
            kw["sink"] = lambda r, c, pixels: sink(r - oy, c - ox, pixels)
        return self.src.gather(np.asarray(rows) + oy, np.asarray(cols) + ox, pad_rgb, check, **kw)
