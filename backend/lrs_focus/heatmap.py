"""The result's `heatmap` entry: a compact score grid <-> array, and the grid as a GeoTIFF on the raster.

One module for both sides: the CLI (`ask --heatmap`) imports it as `lrs_focus.heatmap`, and the
QGIS plugin ships the same file (qgis_plugin/heatmap.py is a symlink, the zip holds a copy). So it
needs only the standard library, numpy and GDAL's `osgeo`, which QGIS's Python has, and it never
switches GDAL's global exception mode (that would change QGIS's own behaviour): GDAL calls are
checked for None here whatever the mode.

The entry (contract in notes/common.md):
    {"level": int, "shape": [rows, cols], "window": [x0, y0, x1, y1], "dtype": "float16",
     "encoding": "zlib+base64", "data": str, "nodata": "nan", "units": str}
Cell (r, c) covers raster pixels x0 + c*(x1-x0)/cols .. x0 + (c+1)*(x1-x0)/cols (same for y),
in full-raster pixel coordinates; NaN where no level scored the cell.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

DTYPE, ENCODING = "float16", "zlib+base64"
#: A 27k-pixel raster at 14-pixel tokens is ~2,000 x 2,000 cells; the cap keeps a hostile entry
#: from decompressing into gigabytes (zlib bombs) while leaving 16x headroom.
MAX_CELLS = 64_000_000
UNITS = "relative attention (token score x tokens scored at its level; 1 = uniform)"


class HeatmapError(ValueError):
    """A `heatmap` entry that does not follow the contract (the message says which part)."""


@dataclass(frozen=True)
class HeatmapGrid:
    values: np.ndarray  # (rows, cols) float32, NaN = no score
    window: tuple[float, float, float, float]  # full-raster pixel coordinates of the grid's outer edges
    level: int
    units: str = UNITS

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])


def encode(values: np.ndarray, window: Sequence[float], level: int, units: str = UNITS) -> dict[str, Any]:
    """The `heatmap` entry of a (rows, cols) score array (for producers and tests)."""
    grid = np.asarray(values, dtype=np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise HeatmapError(f"a heatmap is a non-empty 2-D array, not shape {grid.shape}")
    raw = grid.astype("<f2").tobytes()
    return {
        "level": int(level),
        "shape": [int(grid.shape[0]), int(grid.shape[1])],
        "window": [float(v) for v in window],
        "dtype": DTYPE,
        "encoding": ENCODING,
        "data": base64.b64encode(zlib.compress(raw, 6)).decode("ascii"),
        "nodata": "nan",
        "units": units,
    }


def decode(entry: Any) -> Optional[HeatmapGrid]:
    """The grid of a result's `heatmap` entry; None for `null` (thumbnail mode). Raises HeatmapError."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise HeatmapError(f"heatmap must be an object or null, not {type(entry).__name__}")
    if entry.get("dtype") != DTYPE or entry.get("encoding") != ENCODING:
        raise HeatmapError(
            f"heatmap must be {DTYPE} / {ENCODING}, not {entry.get('dtype')!r} / {entry.get('encoding')!r}"
        )
    rows, cols = _shape(entry.get("shape"))
    window = _window(entry.get("window"))
    data = entry.get("data")
    if not isinstance(data, str):
        raise HeatmapError("heatmap data must be a base64 string")
    expected = rows * cols * 2
    try:
        packed = base64.b64decode(data.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, expected + 1)  # never inflate past what the shape needs
    except (binascii.Error, UnicodeEncodeError, zlib.error) as exc:
        raise HeatmapError(f"heatmap data is not {ENCODING}: {exc}") from None
    if len(raw) != expected or inflater.unconsumed_tail:
        raise HeatmapError(f"heatmap data holds {len(raw)}{'+' if inflater.unconsumed_tail else ''} bytes, "
                           f"shape {rows}x{cols} needs {expected}")
    values = np.frombuffer(raw, dtype="<f2").reshape(rows, cols).astype(np.float32)
    level = entry.get("level")
    if isinstance(level, bool) or not isinstance(level, int):
        raise HeatmapError(f"heatmap level must be an integer, not {level!r}")
    return HeatmapGrid(values, window, level, str(entry.get("units") or UNITS))


def _shape(shape: Any) -> tuple[int, int]:
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
        raise HeatmapError(f"heatmap shape must be [rows, cols] of positive integers, not {shape!r}")
    if shape[0] * shape[1] > MAX_CELLS:
        raise HeatmapError(f"heatmap shape {shape[0]}x{shape[1]} exceeds {MAX_CELLS} cells")
    return int(shape[0]), int(shape[1])


def _window(window: Any) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in window)
    except (TypeError, ValueError):
        raise HeatmapError(f"heatmap window must be [x0, y0, x1, y1], not {window!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise HeatmapError(f"heatmap window must be finite with x1 > x0 and y1 > y0, not {window!r}")
    return x0, y0, x1, y1


def cell_geotransform(raster_geotransform: Sequence[float], window: Sequence[float],
                      shape: Sequence[int]) -> tuple[float, ...]:
    """GDAL geotransform of the grid: the raster's (rotation included) composed with cell -> pixel.

    Cell (c, r) is raster pixel (x0 + c*dx, y0 + r*dy); the raster maps pixel (x, y) to
    (g0 + x*g1 + y*g2, g3 + x*g4 + y*g5). Substituting gives the grid's own affine transform.
    """
    g0, g1, g2, g3, g4, g5 = (float(v) for v in raster_geotransform)
    x0, y0, x1, y1 = (float(v) for v in window)
    rows, cols = int(shape[0]), int(shape[1])
    dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
    return (g0 + x0 * g1 + y0 * g2, dx * g1, dy * g2, g3 + x0 * g4 + y0 * g5, dx * g4, dy * g5)


def write_geotiff(path: str, grid: HeatmapGrid, raster_geotransform: Sequence[float], crs_wkt: str = "") -> str:
    """Single-band Float32 GeoTIFF (NaN nodata) of the grid, on the raster's ground; returns `path`.

    `raster_geotransform` is the raster's (for a raster without georeferencing, (0, 1, 0, 0, 0, -1):
    QGIS draws such rasters with y negative downward, and so the grid lands on it there too).
    `crs_wkt` "" writes no CRS.
    """
    from osgeo import gdal, osr

    rows, cols = grid.shape
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(str(path), cols, rows, 1, gdal.GDT_Float32,
                       ["COMPRESS=DEFLATE", "PREDICTOR=3", "GEOTIFF_VERSION=1.1"])
    if ds is None:
        raise OSError(f"GDAL cannot create {path}: {gdal.GetLastErrorMsg()}")
    try:
        ds.SetGeoTransform(list(cell_geotransform(raster_geotransform, grid.window, grid.shape)))
        if crs_wkt:
            srs = osr.SpatialReference()
            if srs.ImportFromWkt(crs_wkt) != 0:
                raise HeatmapError("the raster's CRS WKT cannot be read by GDAL")
            ds.SetSpatialRef(srs)
        ds.SetMetadata({"LRS_FOCUS_LEVEL": str(grid.level), "LRS_FOCUS_UNITS": grid.units,
                        "LRS_FOCUS_WINDOW": ",".join(f"{v:g}" for v in grid.window)})
        band = ds.GetRasterBand(1)
        band.SetNoDataValue(float("nan"))
        band.SetDescription("relative attention, 1 = uniform")
        if band.WriteArray(np.ascontiguousarray(grid.values, dtype=np.float32)) != 0:
            raise OSError(f"GDAL cannot write {path}: {gdal.GetLastErrorMsg()}")
        ds.FlushCache()
    finally:
        ds = None
    return str(path)
