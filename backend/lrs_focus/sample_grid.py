"""Source samples at sorted rows and columns, and the released code's bilinear resize of them.

The resize is `F.interpolate(bilinear, align_corners=False)` of the CLIP-normalised image, computed
from the 2x2 source samples each output pixel reads (exact_pixels.py says why and how it is
checked). Only numpy and the standard library.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .gather import run_bounded

# transformers.utils.constants' OPENAI_CLIP_MEAN / _STD (a test holds them equal): imported from
# there they pull in ~400 modules and 33 MB, which the pixel path (`bench pyramid`'s processes, the
# `pyramid` command) otherwise never loads
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_ROWS = 128  # output rows blended at a time
_MEAN = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)
_STD = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)


class SampleGrid:
    """Source pixels at a sorted set of rows and columns (uint8, stretched): what resizes sample."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray):
        self.rows, self.cols, self.pixels = rows, cols, pixels

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def resize(self, index_y, index_x, out: Optional[np.ndarray] = None, workers: int = 1) -> np.ndarray:
        """Bilinear output (h, w, 3) float32, normalised, from (i0, i1, lambda) per axis (into `out`);
        bands of output rows on up to `workers` threads (a whole level: the base, the thumbnail)."""
        (yi0, yi1, ly), (xi0, xi1, lx) = index_y, index_x
        ry0, ry1 = np.searchsorted(self.rows, yi0), np.searchsorted(self.rows, yi1)
        cx0, cx1 = np.searchsorted(self.cols, xi0), np.searchsorted(self.cols, xi1)
        if not (np.array_equal(self.rows[ry0], yi0) and np.array_equal(self.rows[ry1], yi1)
                and np.array_equal(self.cols[cx0], xi0) and np.array_equal(self.cols[cx1], xi1)):
            raise ValueError("sample grid lacks rows or columns this resize needs")
        into = out
        if out is None or not out.flags.c_contiguous:  # a partial tile's part of a batch: blended aside
            out = np.empty((ly.size, lx.size, 3), dtype=np.float32)
        # every array below is (rows, w * 3): numpy's loops then run along whole rows, not along the
        # 3 channels of one pixel (several times faster); the weights are repeated per channel, and the
        # columns are taken as single bytes of the grid's (rows, cols * 3) rows (numpy's take copies
        # one-byte items in a tight loop, 3-byte ones with a memmove each)
        w3 = 3 * lx.size
        wx1 = np.repeat(lx, 3)[None, :]
        wx0 = np.float32(1.0) - wx1
        channel = np.arange(3)
        bytes0, bytes1 = (3 * cx0[:, None] + channel).ravel(), (3 * cx1[:, None] + channel).ravel()
        mean, std = np.tile(_MEAN, lx.size), np.tile(_STD, lx.size)
        flat = out.reshape(ly.size, w3)
        grid_rows = self.pixels.reshape(self.pixels.shape[0], -1)

        def band(a: int) -> None:  # output rows [a, a + RESIZE_ROWS): float32 temporaries stay small
            b = min(ly.size, a + RESIZE_ROWS)
            # separable, on the 8-bit values as float32 (exact), CLIP-normalised once per output pixel:
            # normalisation is affine, so this is F.interpolate of the normalised image up to float32
            # rounding (the equivalence tests bound the difference), at a quarter of the normalising.
            # In place where it can be: the same operations in the same order, fewer passes. The x
            # pass runs on the grid rows between the band's first and last (a tile's grid has no
            # others; a level's or the base pass's union has few), the uint8 values going to float32
            # inside the multiply (exact), not in a pass of their own
            y0, y1 = ry0[a:b], ry1[a:b]
            lo, hi = int(y0[0]), int(y1[-1]) + 1
            rows = grid_rows[lo:hi]
            left = np.multiply(np.take(rows, bytes0, axis=1), wx0, dtype=np.float32)
            right = np.multiply(np.take(rows, bytes1, axis=1), wx1, dtype=np.float32)
            along_x = np.add(left, right, out=left)
            del right
            wy1 = ly[a:b, None]
            wy0 = np.float32(1.0) - wy1
            top, bottom = along_x[y0 - lo], along_x[y1 - lo]
            del along_x, left
            np.multiply(top, wy0, out=top)
            np.multiply(bottom, wy1, out=bottom)
            rows_out = flat[a:b]
            np.add(top, bottom, out=rows_out)
            rows_out /= np.float32(255.0)
            rows_out -= mean
            rows_out /= std

        run_bounded(band, list(range(0, ly.size, RESIZE_ROWS)), workers)
        if into is not None and into is not out:
            into[...] = out
            return into
        return out

    def subset(self, rows: np.ndarray, cols: np.ndarray) -> "SampleGrid":
        return SampleGrid(rows, cols, self.pixels[np.ix_(np.searchsorted(self.rows, rows),
                                                         np.searchsorted(self.cols, cols))])
