"""Pixel windows -> map polygons, checked against GDAL's own transform; trace -> GeoJSON."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from osgeo import gdal
from shapely.geometry import shape

from lrs_focus.geo import pixel_to_map, trace_to_features, window_polygon
from lrs_focus.pyramid import PyramidGeometry
from lrs_focus.raster import RasterSource

gdal.UseExceptions()


def _corners_match(window, gt, poly):
    x0, y0, x1, y1 = window
    want = {tuple(round(v, 6) for v in gdal.ApplyGeoTransform(list(gt), x, y))
            for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]}
    got = {tuple(round(v, 6) for v in xy) for xy in list(poly.exterior.coords)[:-1]}
    assert got == want


def test_rotated_raster_matches_gdal(rasters):
    src = RasterSource.open(rasters["rotated"])
    gt = src.geotransform
    assert gt[2] != 0 and gt[4] != 0
    assert list(gt) == list(gdal.Open(str(rasters["rotated"])).GetGeoTransform())
    geo = PyramidGeometry(src.height, src.width)
    for lv in geo.levels:
        for r in range(lv.grid[0]):
            for c in range(lv.grid[1]):
                win = geo.tile_window(lv, r, c)
                poly = window_polygon(win, gt)
                _corners_match(win, gt, poly)
                assert poly.exterior.is_ccw
                # rotation preserves area: pixel area = |det| of the affine part
                assert poly.area == pytest.approx((win[2] - win[0]) * (win[3] - win[1]) * abs(gt[1] * gt[5] - gt[2] * gt[4]))


def test_sentinel2_tiles_match_gdal(sentinel2_vrt):
    src = RasterSource.open(sentinel2_vrt)
    geo = PyramidGeometry(src.height, src.width)
    fine = geo.levels[-1]
    win = geo.tile_window(fine, fine.grid[0] - 1, fine.grid[1] - 1)
    assert win[2:] == (1933, 1947)
    poly = window_polygon(win, src.geotransform)
    _corners_match(win, src.geotransform, poly)
    # the full raster's footprint is GDAL's extent (gdalinfo corner coordinates)
    full = window_polygon((0, 0, src.width, src.height), src.geotransform)
    assert full.bounds == pytest.approx((435730.0, 4179460.0 - 19470.0, 435730.0 + 19330.0, 4179460.0))


def test_ungeoreferenced_is_y_down_negative(rasters):
    src = RasterSource.open(rasters["nogeo"])
    assert not src.georeferenced and src.crs_wkt == ""
    assert src.geotransform == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert pixel_to_map(src.geotransform, 10, 20) == (10.0, -20.0)
    assert window_polygon((0, 0, 640, 480), src.geotransform).bounds == (0.0, -480.0, 640.0, 0.0)


QGIS_PY = "/usr/bin/python3"


@pytest.mark.qgis
def test_ungeoreferenced_lands_where_qgis_draws_it(rasters):
    probe = subprocess.run([QGIS_PY, "-c", "import qgis.core"], capture_output=True)
    if shutil.which(QGIS_PY) is None or probe.returncode != 0:
        pytest.skip("Debian's QGIS Python (python3-qgis) is not installed")
    code = (
        "import sys; from qgis.core import QgsApplication, QgsRasterLayer\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "e = QgsRasterLayer(sys.argv[1], 'r').extent()\n"
        "print(e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum())\n"
    )
    out = subprocess.run([QGIS_PY, "-c", code, str(rasters["nogeo"])], capture_output=True, text=True,
                         timeout=120, env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    qgis_extent = tuple(float(v) for v in out.stdout.split()[-4:])
    src = RasterSource.open(rasters["nogeo"])
    assert window_polygon((0, 0, src.width, src.height), src.geotransform).bounds == qgis_extent


def _trace(geo):
    levels = []
    for lv in geo.levels[:2]:
        tiles = []
        for r in range(lv.grid[0]):
            for c in range(lv.grid[1]):
                kept = (r + c) % 2 == 0
                tiles.append({"row": r, "col": c, "window": list(geo.tile_window(lv, r, c)),
                              "encoded": True, "score": 0.1 * (r + c), "kept": kept,
                              "rank": (r * lv.grid[1] + c + 1) if kept else None})
        levels.append({"level": lv.index, "scale": lv.scale, "grid": list(lv.grid), "tiles": tiles})
    return {"levels": levels, "thumbnail": {"size": list(geo.thumbnail_size)}, "stopped_at": 1, "mode": "paper"}


def test_trace_to_features(sentinel2_vrt):
    src = RasterSource.open(sentinel2_vrt)
    geo = PyramidGeometry(src.height, src.width)
    trace = _trace(geo)
    fc = trace_to_features(trace, src.geotransform, src.crs_wkt, job_id="j1")
    n = sum(len(lv["tiles"]) for lv in trace["levels"])
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == n
    assert fc["crs"]["properties"]["name"] == "EPSG:32618" and fc["crs_wkt"] == src.crs_wkt
    f = fc["features"][4]
    assert f["geometry"]["type"] == "Polygon"
    assert set(f["properties"]) == {"level", "row", "col", "window", "score", "rank", "focus_rank", "kept",
                                    "encoded", "job_id"}  # the question is in the result document, once
    assert f["properties"]["job_id"] == "j1"
    _corners_match(f["properties"]["window"], src.geotransform, shape(f["geometry"]))
    # base-level tiles tile the whole footprint without overlap
    base = [shape(g["geometry"]) for g in fc["features"] if g["properties"]["level"] == 0]
    full = window_polygon((0, 0, src.width, src.height), src.geotransform)
    assert sum(p.area for p in base) == pytest.approx(full.area)
    json.dumps(fc)  # serialisable as is


def test_geojson_readable_by_gdal(tmp_path, sentinel2_vrt):
    src = RasterSource.open(sentinel2_vrt)
    geo = PyramidGeometry(src.height, src.width)
    fc = trace_to_features(_trace(geo), src.geotransform, src.crs_wkt)
    path = tmp_path / "tiles.geojson"
    path.write_text(json.dumps(fc))
    ds = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == len(fc["features"])
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32618"
    feat = layer.GetNextFeature()
    assert feat.GetField("level") == 0 and feat.GetField("kept") in (0, 1, True, False)


def test_features_are_the_focused_tiles_only(sentinel2_vrt):
    """Tiles the model never encoded stay in the trace but are not map features."""
    src = RasterSource.open(sentinel2_vrt)
    geo = PyramidGeometry(src.height, src.width)
    trace = _trace(geo)
    finest = trace["levels"][-1]["tiles"]
    for tile in finest[:3]:
        tile.update(encoded=False, kept=False)
    fc = trace_to_features(trace, src.geotransform, src.crs_wkt)
    n = sum(len(lv["tiles"]) for lv in trace["levels"])
    assert len(fc["features"]) == n - 3
    skipped = {(t["row"], t["col"]) for t in finest[:3]}
    last = trace["levels"][-1]["level"]
    assert not any((f["properties"]["row"], f["properties"]["col"]) in skipped
                   for f in fc["features"] if f["properties"]["level"] == last)
