"""GDAL access: open anything GDAL opens, choose bands, stretch to 8 bits, windowed resampled reads.

Why this shape: the method only ever needs RGB uint8 views of parts of a raster at a given pixel
size (a 336-px tile, the thumbnail), so every read is one GDAL RasterIO of a (floating-point)
window into a buffer of exactly that size. GDAL does the resampling and picks an overview when one
is close to the needed scale, so no read ever materialises a large raster at full resolution.
The 16-bit stretch is estimated from a decimated read (<= 1024 px long side), never a full one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from osgeo import gdal

from .gather import STRIP_BYTES, BufferPool, HandlePool, default_workers, gather_source
from .raster_checks import MAX_BLOCK_BYTES, check_blocks, dataset_files, file_entry, refuse_special_file  # noqa: F401
from .raster_window import RasterWindow  # noqa: F401  (imported from here by callers)
from .errors import (BadFileName, BadGeoreference, BandError, EmptyRaster, NotARaster, RasterNotFound, RasterTooLarge,
                     RasterUnreadable)

gdal.UseExceptions()
log = logging.getLogger(__name__)

#: GDAL's block cache defaults to 5% of RAM; a small one keeps peak memory flat on huge rasters.
DEFAULT_CACHE_MB = 64
if "GDAL_CACHEMAX" not in os.environ:
    gdal.SetCacheMax(DEFAULT_CACHE_MB * 1024 * 1024)

STATS_LONG_SIDE = 1024  # decimated read used for percentile estimation
#: Longest raster side served. The exact pixel path reads whole rows (3 bands, float32 for non-byte
#: data), so a read's memory follows the width: 2^22 px is about 50 MB a row; a VRT declaring
#: 2^31 x 2^31 pixels took 18 GB before this bound.
MAX_SIDE = 1 << 22
RESAMPLING = {
    "nearest": gdal.GRIORA_NearestNeighbour,
    "bilinear": gdal.GRIORA_Bilinear,
    "cubic": gdal.GRIORA_Cubic,
    "average": gdal.GRIORA_Average,
    "lanczos": gdal.GRIORA_Lanczos,
}

Window = tuple[float, float, float, float]


@dataclass(frozen=True)
class BandStretch:
    """Linear map [low, high] -> [0, 255] for one band (identity for 8-bit data)."""

    low: float
    high: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        span = self.high - self.low if self.high > self.low else 1.0
        out = (values.astype(np.float32, copy=False) - np.float32(self.low)) * np.float32(255.0 / span)
        np.nan_to_num(out, copy=False)  # NaN nodata (painted later) would warn in the uint8 cast
        return np.clip(out, 0.0, 255.0, out=out).round().astype(np.uint8)


def _gdal_span(start: float, size: float, limit: int) -> tuple[float, float]:
    """Nudge a floating window span (< 0.5 px) so GDAL's rounded integer window stays inside.

    GDAL validates round(start) + round(size) <= limit even for floating-point windows.
    """
    eps = 1e-6
    if int(start + 0.5) >= limit:
        start = limit - 0.5 - eps
        size = min(size, limit - start)
    if int(start + 0.5) + int(size + 0.5) > limit:
        size = limit - int(start + 0.5) + 0.5 - eps
    return start, size


def georeference(path: str, dataset: gdal.Dataset) -> tuple[Optional[tuple[float, ...]], str]:
    """(geotransform or None, CRS WKT or "") of an open dataset; BadGeoreference when they cannot
    place it: a CRS GDAL refuses to read (an .aux.xml <SRS> naming a file: GDAL reports it on the
    first metadata call), a non-finite geotransform (inf/NaN from a world file or .aux.xml) or a
    degenerate one (pixels of zero area)."""
    try:
        gt = dataset.GetGeoTransform(can_return_null=True)
        srs = dataset.GetSpatialRef()
        wkt = srs.ExportToWkt() if (srs is not None and gt is not None) else ""
    except RuntimeError as exc:
        raise BadGeoreference(f"{path}: GDAL cannot read its georeferencing ({exc})") from None
    if gt is not None:
        gt = tuple(float(v) for v in gt)
        if not all(math.isfinite(v) for v in gt):
            raise BadGeoreference(f"{path}: its geotransform {list(gt)} is not finite (check its world file "
                                  "or .aux.xml)")
        if gt[1] * gt[5] - gt[2] * gt[4] == 0:
            raise BadGeoreference(f"{path}: its geotransform {list(gt)} gives pixels no area (check its world "
                                  "file or .aux.xml)")
    return gt, wkt


def _vsi_stat(path):
    flags = gdal.VSI_STAT_EXISTS_FLAG | gdal.VSI_STAT_NATURE_FLAG
    try:
        return gdal.VSIStatL(path, flags)
    except RuntimeError:
        return None


def _file_signature(path: str) -> tuple | None:
    """(size, modification time) of a local file, or None: what shows another program rewriting it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns)


def _open_settled(path: str, open_options: list[str], attempts: int = 4, wait_s: float = 0.25) -> Any:
    """gdal.OpenEx, tried again while the file is being rewritten under us.

    QGIS computes a VRT's statistics and GDAL writes them into the .vrt itself, in place: a reader
    at that moment sees a truncated file ("not recognized as a supported file format"). A failure on
    a file whose size or time changed during the attempt is retried after a short wait; a file that
    stays the same fails at once, as before."""
    for attempt in range(attempts):
        before = _file_signature(path)
        try:
            ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY, open_options=open_options)
            if ds is not None:
                return ds
            failure: RuntimeError | None = None
        except RuntimeError as exc:
            failure = exc
        changed = before is not None and _file_signature(path) != before
        if not changed or attempt == attempts - 1:
            if failure is not None:
                raise failure
            return None
        time.sleep(wait_s)
    return None


class RasterSource:
    """An open raster with a fixed RGB band choice and 8-bit stretch. Use `RasterSource.open`."""

    def __init__(self, path: str, dataset: gdal.Dataset, bands: Sequence[int], palette: Optional[np.ndarray],
                 percentiles: Optional[tuple[float, float]], resampling: str,
                 stretch: Optional[Sequence[Sequence[float]]] = None,
                 georef: Optional[tuple[Optional[tuple[float, ...]], str]] = None):
        self.path = path
        self._ds = dataset
        self.height = dataset.RasterYSize
        self.width = dataset.RasterXSize
        self.band_count = dataset.RasterCount
        self.bands = tuple(bands)  # 1-based; len 1 (grey or palette) or 3 (RGB)
        self.palette = palette  # (n, 3) uint8 lookup table when band 1 is a palette index
        self.percentiles = percentiles
        self.resampling = resampling
        first = dataset.GetRasterBand(self.bands[0])
        self.data_type = gdal.GetDataTypeName(first.DataType)
        self.driver = dataset.GetDriver().ShortName
        self.block_size = tuple(first.GetBlockSize())
        self.overview_sizes = [
            (first.GetOverview(i).YSize, first.GetOverview(i).XSize) for i in range(first.GetOverviewCount())
        ]
        self._mask_needed = any(
            dataset.GetRasterBand(b).GetMaskFlags() != gdal.GMF_ALL_VALID for b in self.bands
        )
        self._is_float = first.DataType in (gdal.GDT_Float32, gdal.GDT_Float64)
        gt, self.crs_wkt = georef if georef is not None else georeference(path, dataset)
        self.georeferenced = gt is not None
        # Ungeoreferenced: QGIS draws pixel (col, row) at map (col, -row), y negative downward.
        self.geotransform: tuple[float, ...] = tuple(gt) if gt is not None else (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        # gather's threads (each on its own handle, opened with the same GDAL open options)
        self.open_options, self.workers = [], default_workers()
        self._handles = HandlePool(lambda: gdal.OpenEx(path, gdal.OF_RASTER, open_options=self.open_options))
        self._buffers = BufferPool()  # the strip buffers of `gather`
        # An explicit stretch (the display's min/max) also applies to 8-bit data; without one,
        # 8-bit data is taken as is and other types get the 2-98 % percentiles, estimated lazily.
        self.explicit_stretch = stretch is not None and self.palette is None
        self._stretch: Optional[list[BandStretch]] = (
            [BandStretch(float(lo), float(hi)) for lo, hi in stretch] if self.explicit_stretch else None
        )

    @property
    def stretch(self) -> list[BandStretch]:
        """Per-band linear map to 0..255; estimated on first use (a decimated read of the whole raster)."""
        if self._stretch is None:
            self._stretch = self._estimate_stretch()
        return self._stretch

    @stretch.setter
    def stretch(self, value: Sequence[BandStretch]) -> None:
        """Set precomputed statistics (the engine's cache): a follow-up question skips the stats read."""
        self._stretch = list(value)

    def identity(self) -> tuple:
        """What changes when the pixels may have changed: (name, size, mtime, ctime, inode) of every
        file GDAL reads for this dataset (the raster, its .ovr/.aux.xml, a VRT's sources and, through
        nested VRTs, their leaves); the path alone when GDAL lists none (in-memory datasets)."""
        # a name that is not UTF-8 comes back as bytes: GDAL and os.stat take it as is
        return (self.path, tuple(file_entry(raw) for raw in dataset_files(self._ds)))

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path, bands: Optional[Sequence[int]] = None,
             percentiles: Optional[tuple[float, float]] = (2.0, 98.0),
             resampling: str = "bilinear", open_options: Optional[Sequence[str]] = None,
             stretch: Optional[Sequence[Sequence[float]]] = None) -> "RasterSource":
        """Open `path` (anything GDAL opens, `/vsi...` included) or raise a specific RasterError.

        `open_options` go to GDAL (e.g. ["OVERVIEW_LEVEL=NONE"] to ignore overviews). `stretch`:
        one [low, high] per chosen band, mapped linearly to 0..255 (what QGIS's renderer shows);
        ignored for palettes.
        """
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # a surrogate-escaped byte: GDAL's bindings refuse such a str
            raise BadFileName(f"{path.encode('utf-8', 'backslashreplace').decode()}: the file name is not valid "
                              "UTF-8, which GDAL's Python bindings cannot open; rename the file") from None
        stat = _vsi_stat(path)
        if stat is None and not path.startswith("/vsi"):
            raise RasterNotFound(f"{path}: no such file")
        if stat is not None and stat.IsDirectory():
            raise NotARaster(f"{path}: is a directory, not a raster file")
        refuse_special_file(path)
        try:
            ds = _open_settled(path, list(open_options or []))
        except RuntimeError as exc:
            msg = str(exc)
            if "dimension" in msg.lower():
                raise EmptyRaster(f"{path}: raster has zero size ({msg})") from None
            if stat is None:
                raise RasterNotFound(f"{path}: cannot be opened ({msg})") from None
            raise NotARaster(f"{path}: GDAL cannot open it as a raster ({msg})") from None
        if ds is None:
            raise NotARaster(f"{path}: GDAL cannot open it as a raster")
        if ds.RasterXSize < 1 or ds.RasterYSize < 1:
            raise EmptyRaster(f"{path}: raster has zero size ({ds.RasterXSize} x {ds.RasterYSize} pixels)")
        if max(ds.RasterXSize, ds.RasterYSize) > MAX_SIDE:
            raise RasterTooLarge(f"{path}: {ds.RasterXSize} x {ds.RasterYSize} pixels; this engine reads rasters "
                                 f"of at most {MAX_SIDE} pixels a side")
        if ds.RasterCount < 1:
            subs = ds.GetSubDatasets()
            hint = f"; it has subdatasets, open one of them, e.g. {subs[0][0]}" if subs else ""
            raise EmptyRaster(f"{path}: raster has no bands{hint}")
        georef = georeference(path, ds)  # first: GDAL reports a bad .aux.xml on the first metadata call
        check_blocks(path, ds)
        chosen, palette = cls._choose_bands(path, ds, bands)
        if stretch is not None and palette is None and len(stretch) != len(chosen):
            raise BandError(f"{path}: {len(stretch)} stretch pair(s) for {len(chosen)} band(s) {chosen}")
        src = cls(path, ds, chosen, palette, percentiles, resampling, stretch, georef)
        src.open_options = list(open_options or [])
        src._probe()
        return src

    @staticmethod
    def _choose_bands(path: str, ds: gdal.Dataset, bands: Optional[Sequence[int]]):
        count = ds.RasterCount
        if bands is not None:
            bands = [int(b) for b in bands]
            if len(bands) not in (1, 3):
                raise BandError(f"{path}: give 1 or 3 bands, not {bands}")
            missing = [b for b in bands if not 1 <= b <= count]
            if missing:
                raise BandError(f"{path}: has {count} band(s), cannot read band(s) {missing} (asked {bands})")
            chosen = bands
        else:
            interp = {ds.GetRasterBand(i).GetColorInterpretation(): i for i in range(count, 0, -1)}
            rgb = [interp.get(c) for c in (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)]
            if all(rgb):
                chosen = rgb
            elif count >= 3:
                chosen = [1, 2, 3]
            else:
                chosen = [1]
        palette = None
        if len(chosen) == 1:
            band = ds.GetRasterBand(chosen[0])
            table = band.GetColorTable()
            if table is not None and band.GetColorInterpretation() == gdal.GCI_PaletteIndex:
                palette = np.array([table.GetColorEntry(i)[:3] for i in range(table.GetCount())], dtype=np.uint8)
        return chosen, palette

    def _probe(self) -> None:
        """Read the bottom-right block: a truncated file fails here, at open, not mid-question."""
        bw, bh = (min(v, 512) for v in self.block_size)
        x0, y0 = max(0, self.width - bw), max(0, self.height - bh)
        self._read_raw((x0, y0, self.width, self.height), (self.height - y0, self.width - x0), "nearest")

    # -- low-level reads ----------------------------------------------------------------------
    def _read_raw(self, window: Window, out_size: tuple[int, int], resampling: Optional[str] = None, ds=None):
        """(values (n_bands, h, w) native-or-float32, valid mask (h, w) bool or None); `ds`: a gather
        thread's own handle."""
        ds = self._ds if ds is None else ds
        x0, y0, x1, y1 = window
        h, w = int(out_size[0]), int(out_size[1])
        x0, xs = _gdal_span(float(x0), float(x1) - float(x0), self.width)
        y0, ys = _gdal_span(float(y0), float(y1) - float(y0), self.height)
        alg = RESAMPLING["nearest" if self.palette is not None else (resampling or self.resampling)]
        raw_bytes = (self.data_type == "Byte" and not self.explicit_stretch) or self.palette is not None
        buf_type = gdal.GDT_Byte if raw_bytes else gdal.GDT_Float32
        if self.palette is not None and len(self.palette) > 256:
            buf_type = gdal.GDT_UInt16
        dtype = {gdal.GDT_Byte: np.uint8, gdal.GDT_UInt16: np.uint16, gdal.GDT_Float32: np.float32}[buf_type]
        try:
            raw = ds.ReadRaster(x0, y0, xs, ys, w, h, buf_type=buf_type, band_list=list(self.bands), resample_alg=alg)
            values = np.frombuffer(raw, dtype=dtype).reshape(len(self.bands), h, w)
            valid = None
            if self._mask_needed:
                valid = np.ones((h, w), dtype=bool)
                for b in self.bands:
                    mask = ds.GetRasterBand(b).GetMaskBand()
                    m = mask.ReadRaster(x0, y0, xs, ys, w, h, buf_type=gdal.GDT_Byte,
                                        resample_alg=gdal.GRIORA_NearestNeighbour)
                    valid &= np.frombuffer(m, dtype=np.uint8).reshape(h, w) > 0
        except RuntimeError as exc:
            raise RasterUnreadable(f"{self.path}: reading pixels failed ({exc})") from None
        if self._is_float:
            finite = np.isfinite(values).all(axis=0)
            valid = finite if valid is None else (valid & finite)
        return values, valid

    def _estimate_stretch(self) -> list[BandStretch]:
        """Per-band percentiles from a decimated read; identity for 8-bit data and palettes."""
        n = len(self.bands)
        if self.palette is not None or self.data_type == "Byte":
            return [BandStretch(0.0, 255.0)] * n
        if self.percentiles is None:
            return [BandStretch(0.0, 255.0)] * n
        scale = min(1.0, STATS_LONG_SIDE / max(self.height, self.width))
        size = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        values, valid = self._read_raw((0, 0, self.width, self.height), size, "nearest")
        lo_p, hi_p = self.percentiles
        out = []
        for i in range(n):
            v = values[i] if valid is None else values[i][valid]
            if v.size == 0:
                log.warning("%s: band %d has no valid pixels in the stats read", self.path, self.bands[i])
                out.append(BandStretch(0.0, 1.0))
                continue
            lo, hi = np.percentile(v, [lo_p, hi_p])
            out.append(BandStretch(float(lo), float(hi)))
        return out

    # -- public reads ---------------------------------------------------------------------------
    def read_rgb(self, window: Window, out_size: tuple[int, int], pad_rgb=(0, 0, 0), _ds=None) -> np.ndarray:
        """uint8 (h, w, 3) of the original-pixel window (x0, y0, x1, y1), resampled by GDAL.

        Nodata / masked / non-finite pixels are painted `pad_rgb`.
        """
        x0, y0, x1, y1 = (float(v) for v in window)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(self.width), x1), min(float(self.height), y1)
        h, w = int(out_size[0]), int(out_size[1])
        if x1 <= x0 or y1 <= y0 or h < 1 or w < 1:
            raise ValueError(f"empty read: window {window} -> {out_size} on {self.width}x{self.height}")
        values, valid = self._read_raw((x0, y0, x1, y1), (h, w), **({"ds": _ds} if _ds is not None else {}))
        if self.palette is not None:
            idx = values[0]
            inside = idx < len(self.palette)
            rgb = self.palette[np.minimum(idx, len(self.palette) - 1)]
            valid = inside if valid is None else (valid & inside)
        else:
            planes = [self.stretch[i].apply(values[i]) if values.dtype != np.uint8 else values[i]
                      for i in range(len(self.bands))]
            if len(planes) == 1:
                planes = planes * 3
            rgb = np.stack(planes, axis=-1)
        if valid is not None and not valid.all():
            rgb = np.array(rgb, copy=True)
            rgb[~valid] = np.asarray(pad_rgb, dtype=np.uint8)
        return np.ascontiguousarray(rgb)

    def gather(self, rows, cols, pad_rgb=(0, 0, 0), check=None, workers: Optional[int] = None,
               max_bytes: int = STRIP_BYTES, sink=None) -> Optional[np.ndarray]:
        """uint8 (len(rows), len(cols), 3) at sorted unique full-resolution rows x cols, or None when
        the pieces go to `sink(rows, cols, pixels)` as they are read (gather.gather_source)."""
        return gather_source(self, rows, cols, pad_rgb, check, self.workers if workers is None else workers,
                             max_bytes, sink)

    def overview_for(self, factor: float) -> Optional[int]:
        """Index of the overview GDAL would pick when reading `factor` source px per output px.

        Approximates GDALBandGetBestOverviewLevel: the coarsest overview not coarser than needed
        (20% oversampling tolerance); None means full resolution.
        """
        best, best_factor = None, 1.0
        for i, (oh, ow) in enumerate(self.overview_sizes):
            f = self.width / ow
            if best_factor < f <= factor * 1.2:
                best, best_factor = i, f
        return best

    def describe(self) -> dict:
        return {
            "path": self.path,
            "size": [self.height, self.width],
            "band_count": self.band_count,
            "bands": list(self.bands),
            "palette": self.palette is not None,
            "data_type": self.data_type,
            "block_size": list(self.block_size),
            "overviews": [list(s) for s in self.overview_sizes],
            "stretch": [[s.low, s.high] for s in self.stretch],
            "georeferenced": self.georeferenced,
            "geotransform": list(self.geotransform),
            "crs_wkt": self.crs_wkt,
            "driver": self.driver,
        }

    def close(self) -> None:
        self._ds, _ = None, self._handles.close()
        self._buffers.clear()

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
