"""The `heatmap` entry: decoding (also of hostile entries) and the GeoTIFF on the raster's ground."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
from osgeo import gdal, osr

from lrs_focus.heatmap import MAX_CELLS, HeatmapError, cell_geotransform, decode, encode, write_geotiff

ROTATED = (300000.0, 8.66, -5.0, 5000000.0, -5.0, -8.66)
CUSTOM_TM = "+proj=tmerc +lat_0=0 +lon_0=7.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"


def _grid(rows=3, cols=4):
    values = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) / 7
    values[0, 0] = np.nan
    return values


def test_round_trip_is_float16_exact():
    values = _grid()
    entry = encode(values, [10, 20, 410, 320], level=2)
    grid = decode(entry)
    assert grid.level == 2 and grid.window == (10.0, 20.0, 410.0, 320.0) and grid.shape == (3, 4)
    want = values.astype(np.float16).astype(np.float32)
    assert np.isnan(grid.values[0, 0]) and np.array_equal(grid.values[1:], want[1:])
    assert grid.values.dtype == np.float32


def test_null_is_no_heatmap():
    assert decode(None) is None


def _entry(**change):
    entry = encode(_grid(), [0, 0, 40, 30], level=1)
    entry.update(change)
    return entry


@pytest.mark.parametrize("change, words", [
    ({"dtype": "float32"}, "float16"),
    ({"encoding": "base64"}, r"zlib\+base64"),
    ({"shape": [3]}, "shape"),
    ({"shape": [0, 4]}, "shape"),
    ({"shape": [True, 4]}, "shape"),
    ({"shape": [4, 4]}, "needs 32"),  # data holds 24 bytes only
    ({"shape": [2, 4]}, "needs 16"),  # data holds more than the shape
    ({"shape": [MAX_CELLS, 2]}, "exceeds"),
    ({"window": [0, 0, 0, 30]}, "window"),
    ({"window": [0, 0, "nan", 30]}, "window"),
    ({"window": "0,0,40,30"}, "window"),
    ({"data": "!!not base64!!"}, r"not zlib\+base64"),
    ({"data": base64.b64encode(b"plain bytes").decode()}, r"not zlib\+base64"),
    ({"data": 17}, "base64 string"),
    ({"level": "2"}, "level"),
    ({"level": True}, "level"),
])
def test_hostile_entries_are_refused_with_the_reason(change, words):
    with pytest.raises(HeatmapError, match=words):
        decode(_entry(**change))


def test_zlib_bomb_is_not_inflated():
    """A tiny entry claiming a small shape but inflating to 100 MB stops at what the shape needs."""
    bomb = base64.b64encode(zlib.compress(b"\0" * 100_000_000, 9)).decode()
    with pytest.raises(HeatmapError, match=r"\+ bytes"):
        decode(_entry(shape=[10, 10], data=bomb))


def test_not_an_object():
    with pytest.raises(HeatmapError, match="object or null"):
        decode([1, 2])


def test_cell_geotransform_matches_gdal_on_a_rotated_raster():
    window, shape = (12.0, 30.0, 812.0, 630.0), (20, 50)
    gt = cell_geotransform(ROTATED, window, shape)
    dx, dy = (window[2] - window[0]) / shape[1], (window[3] - window[1]) / shape[0]
    for r, c in [(0, 0), (0, 50), (20, 0), (20, 50), (7, 13)]:
        want = gdal.ApplyGeoTransform(list(ROTATED), window[0] + c * dx, window[1] + r * dy)
        assert gdal.ApplyGeoTransform(list(gt), c, r) == pytest.approx(want, abs=1e-6)


def _read(path):
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    return ds, band, band.ReadAsArray()


def test_geotiff_on_a_rotated_raster_in_a_crs_without_epsg(tmp_path):
    srs = osr.SpatialReference()
    srs.ImportFromProj4(CUSTOM_TM)
    assert srs.GetAuthorityCode(None) is None  # really no EPSG code
    grid = decode(encode(_grid(), [100, 50, 500, 350], level=3))
    path = write_geotiff(str(tmp_path / "h.tif"), grid, ROTATED, srs.ExportToWkt())
    ds, band, values = _read(path)
    assert band.DataType == gdal.GDT_Float32 and ds.RasterCount == 1
    assert (ds.RasterXSize, ds.RasterYSize) == (4, 3)
    assert ds.GetGeoTransform() == pytest.approx(cell_geotransform(ROTATED, grid.window, grid.shape))
    assert ds.GetGeoTransform()[2] != 0 and ds.GetGeoTransform()[4] != 0  # the rotation is kept
    assert ds.GetSpatialRef().IsSame(srs)
    assert np.isnan(band.GetNoDataValue())
    assert np.array_equal(np.isnan(values), np.isnan(grid.values))
    assert np.array_equal(values[~np.isnan(values)], grid.values[~np.isnan(grid.values)])
    assert ds.GetMetadataItem("LRS_FOCUS_LEVEL") == "3"


def test_geotiff_without_georeferencing_lands_y_down_negative(tmp_path):
    """No CRS written; the grid's corners are where QGIS draws the raster's pixels: (x, -y)."""
    grid = decode(encode(_grid(), [0, 0, 640, 480], level=0))
    path = write_geotiff(str(tmp_path / "h.tif"), grid, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    ds, _, _ = _read(path)
    assert ds.GetSpatialRef() is None
    assert ds.GetGeoTransform() == pytest.approx((0.0, 160.0, 0.0, 0.0, 0.0, -160.0))


def test_unwritable_path_raises_oserror(tmp_path):
    grid = decode(encode(_grid(), [0, 0, 4, 3], level=0))
    with pytest.raises((OSError, RuntimeError)):
        write_geotiff(str(tmp_path / "missing" / "h.tif"), grid, ROTATED, "")
