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
module reads just those rows (native resolution, in strips of bounded size), normalises them and
interpolates: the official tensors to float32 rounding, in memory independent of the raster size.
numpy does the arithmetic because the index rule must be ATen's float32 one (a float64 index is
off by up to 0.003 px at 27k pixels, which moves values by 1e-2); `F.interpolate` itself needs the
whole image in memory.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional

import numpy as np
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .pyramid import LevelRef, PyramidConfig, PyramidGeometry

STRIP_BYTES = 32 << 20  # at most this many bytes of source pixels per read
MERGE_GAP = 8  # needed rows closer than this are read in one strip
_MEAN = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)
_STD = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)
_PAD_RGB = tuple(int(round(255 * m)) for m in OPENAI_CLIP_MEAN)  # nodata pixels inside the image


@functools.lru_cache(maxsize=1)
def torch_fuses_index() -> bool:
    """Whether this torch build computes scale * (dst + 0.5) - 0.5 with one rounding (FMA).

    ATen's CPU kernels built for AVX2/AVX512 contract it into a fused multiply-add; a build
    without FMA rounds twice. One index in 20,000 -> 13,664 tells them apart; asking torch once
    keeps the lazy path equal to `F.interpolate` on whatever machine runs it.
    """
    import torch
    import torch.nn.functional as F

    n_in, n_out = 20000, 13664
    values = (np.arange(n_in) % 2).astype(np.float32)  # output = lambda or 1 - lambda: an index error shows
    probe = torch.from_numpy(values).view(1, 1, n_in, 1)
    ref = F.interpolate(probe, size=(n_out, 1), mode="bilinear")[0, 0, :, 0].numpy()
    i0, i1, lam = source_index(n_in, n_out, 0, n_out, fused=True)
    fused = values[i0] * (np.float32(1.0) - lam) + values[i1] * lam
    return bool(np.abs(fused - ref).max() < 1e-5)


def source_index(in_size: int, out_size: int, start: int, stop: int,
                 fused: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda1) of output pixels [start, stop) along one axis, ATen's float32 rule.

    Same size: a plain copy (ATen's special case). Otherwise src = scale * (dst + 0.5) - 0.5 in
    float32 (fused or not, as this torch build does it), clamped at 0; i0 = floor(src) (at most
    in_size - 1), i1 = i0 + 1 unless at the edge.
    """
    dst = np.arange(start, stop, dtype=np.int64)
    if in_size == out_size:
        return dst, dst, np.zeros(dst.size, dtype=np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    half = dst.astype(np.float32) + np.float32(0.5)
    if torch_fuses_index() if fused is None else fused:
        # exact product and difference in float64 (24-bit operands), one rounding to float32
        src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = scale * half - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, lam


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


class ExactPyramid:
    """Lazy tiles of a raster with the released code's pixels: float32, CLIP-normalised, zero padded.

    `src` is anything with `height`, `width` and `read_rgb(window, out_size, pad_rgb=...)` (a
    `raster.RasterSource`, its stretch and band choice included). Tiles come back as float32
    (B, B, 3) already normalised, which `LrsFocusModel.pixels` takes as they are.
    """

    def __init__(self, src: Any, cfg: PyramidConfig | None = None, cache_tiles: int = 16,
                 check: Optional[Callable[[], None]] = None):
        self.src = src
        self.cfg = cfg or PyramidConfig()
        self.geometry = PyramidGeometry(src.height, src.width, self.cfg)
        self.cache_tiles = max(0, int(cache_tiles))
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._base: np.ndarray | None = None
        self._thumbnail: np.ndarray | None = None
        self.check = check  # called between strip reads: lets a cancel interrupt a long read
        self.reads = 0
        self.source_pixels = 0  # source pixels read, for the benchmark

    # -- reading --------------------------------------------------------------------------------
    def _gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Normalised float32 (len(rows), len(cols), 3) of the source at the given sorted rows/cols."""
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
        x = out.astype(np.float32) / np.float32(255.0)  # ToTensor
        return (x - _MEAN) / _STD  # Normalize

    def _resize(self, out_hw: tuple[int, int], window: tuple[int, int, int, int],
                extra: Optional[tuple[tuple[int, int], tuple[int, int, int, int]]] = None) -> list[np.ndarray]:
        """Output pixels `window` = (y0, y1, x0, x1) of the whole image resized to `out_hw`
        (and optionally a second resize sharing the same read). Returns float32 (h, w, 3) arrays."""
        jobs = [(out_hw, window)] + ([extra] if extra is not None else [])
        idx = []
        for (oh, ow), (y0, y1, x0, x1) in jobs:
            idx.append((source_index(self.geometry.height, oh, y0, y1), source_index(self.geometry.width, ow, x0, x1)))
        rows = np.unique(np.concatenate([np.concatenate([a[0][0], a[0][1]]) for a in idx]))
        cols = np.unique(np.concatenate([np.concatenate([a[1][0], a[1][1]]) for a in idx]))
        g = self._gather(rows, cols)
        outs = []
        for (yi0, yi1, ly), (xi0, xi1, lx) in idx:
            ry0, ry1 = np.searchsorted(rows, yi0), np.searchsorted(rows, yi1)
            cx0, cx1 = np.searchsorted(cols, xi0), np.searchsorted(cols, xi1)
            wx1 = lx[None, :, None]
            wx0 = np.float32(1.0) - wx1
            wy1 = ly[:, None, None]
            wy0 = np.float32(1.0) - wy1
            top = g[ry0][:, cx0] * wx0 + g[ry0][:, cx1] * wx1
            bottom = g[ry1][:, cx0] * wx0 + g[ry1][:, cx1] * wx1
            outs.append((top * wy0 + bottom * wy1).astype(np.float32))
        return outs

    # -- the pyramid interface ------------------------------------------------------------------
    def _blank(self) -> np.ndarray:
        b = self.cfg.tile_size
        return np.zeros((b, b, 3), dtype=np.float32)

    def _base_and_thumbnail(self) -> None:
        """The whole base level and the thumbnail from one read of the rows both need."""
        base = self.geometry.levels[0]
        th, tw = self.geometry.thumbnail_size
        rh, rw = base.resized
        level, thumb = self._resize((rh, rw), (0, rh, 0, rw), extra=((th, tw), (0, th, 0, tw)))
        out = self._blank()
        out[:th, :tw] = thumb
        for a in (level, out):
            a.setflags(write=False)
        self._base, self._thumbnail = level, out

    def base_image(self) -> np.ndarray:
        if self._base is None:
            self._base_and_thumbnail()
        return self._base

    def thumbnail(self) -> np.ndarray:
        if self._thumbnail is None:
            self._base_and_thumbnail()
        return self._thumbnail

    def tile(self, level: LevelRef, row: int, col: int) -> np.ndarray:
        lv = self.geometry.level(level)
        key = (lv.index, int(row), int(col))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        ch, cw = self.geometry.tile_content(lv, row, col)
        b = self.cfg.tile_size
        out = self._blank()
        if lv.index == 0:
            out[:ch, :cw] = self.base_image()[row * b: row * b + ch, col * b: col * b + cw]
        else:
            (part,) = self._resize(lv.resized, (row * b, row * b + ch, col * b, col * b + cw))
            out[:ch, :cw] = part
        out.setflags(write=False)
        if self.cache_tiles:
            self._cache[key] = out
            while len(self._cache) > self.cache_tiles:
                self._cache.popitem(last=False)
        return out

    def tiles(self, level: LevelRef, positions: Iterable[tuple[int, int]]) -> list[np.ndarray]:
        return [self.tile(level, r, c) for r, c in positions]
