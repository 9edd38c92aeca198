"""`lrs-focus ask --out/--heatmap` as a user runs it (subprocess of the real CLI, tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from osgeo import gdal, ogr, osr

from lrs_focus.samples import write_synthetic_raster

LRS_FOCUS = str(Path(sys.executable).parent / "lrs-focus")
CUSTOM_TM = "+proj=tmerc +lat_0=0 +lon_0=7.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"


def _run(*args, timeout=300):
    return subprocess.run([LRS_FOCUS, "ask", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def nogeo(tmp_path_factory):
    return write_synthetic_raster(tmp_path_factory.mktemp("r") / "nogeo.tif", 600, 400, geotransform=None)


@pytest.fixture(scope="module")
def custom_rotated(tmp_path_factory):
    return write_synthetic_raster(tmp_path_factory.mktemp("r") / "custom.tif", 900, 700,
                                  geotransform=(480000.0, 8.66, -5.0, 5200000.0, -5.0, -8.66), crs=CUSTOM_TM)


def test_geojson_for_a_raster_without_crs_is_refused_before_the_model_runs(nogeo, tmp_path):
    t0 = time.monotonic()
    done = _run(nogeo, "What is there?", "--model", "tiny", "--out", tmp_path / "t.geojson")
    assert done.returncode == 2
    assert "no CRS" in done.stderr and "t.gpkg instead" in done.stderr
    assert "RANDOM WEIGHTS" not in done.stderr  # refused before a model was even built
    assert time.monotonic() - t0 < 30 and not (tmp_path / "t.geojson").exists()


def test_unknown_out_format_is_a_usage_error(nogeo, tmp_path):
    done = _run(nogeo, "q", "--model", "tiny", "--out", tmp_path / "t.shp")
    assert done.returncode == 2 and ".geojson" in done.stderr and ".gpkg" in done.stderr


def test_heatmap_in_thumbnail_mode_is_refused(nogeo, tmp_path):
    done = _run(nogeo, "q", "--model", "tiny", "--mode", "thumbnail", "--heatmap", tmp_path / "h.tif")
    assert done.returncode == 2 and "thumbnail mode scores none" in done.stderr


@pytest.mark.parametrize("option, name, message", [
    ("--out", "missing/t.gpkg", "does not exist"),
    ("--heatmap", "missing/h.tif", "does not exist"),
    ("--heatmap", "folder.tif", "it is a folder"),
    ("--heatmap", "h.png", "name it .tif"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_runs(nogeo, tmp_path, option, name, message):
    """A missing folder used to surface after the whole question: `internal`, or a GDAL traceback."""
    (tmp_path / "folder.tif").mkdir()
    done = _run(nogeo, "q", "--model", "tiny", option, tmp_path / name)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "RANDOM WEIGHTS" not in done.stderr  # before a model was built


def test_ask_writes_geojson_and_geopackage_of_a_rotated_raster_in_a_custom_crs(custom_rotated, tmp_path):
    geojson, gpkg = tmp_path / "t.geojson", tmp_path / "t.gpkg"
    done = _run(custom_rotated, "Where is the bright square?", "--model", "tiny", "--out", geojson, "--out", gpkg,
                "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["out"] == [str(geojson), str(gpkg)]
    assert all("question" not in f["properties"] for f in doc["features"]["features"])
    n = len(doc["features"]["features"])
    ds = ogr.Open(str(gpkg))
    layer = ds.GetLayerByName("focus_tiles")
    assert layer.GetFeatureCount() == n
    assert layer.GetSpatialRef().IsSame(osr.SpatialReference(wkt=doc["crs_wkt"]))
    row = ds.GetLayerByName("lrs_focus_results").GetNextFeature()
    assert row.GetField("question") == "Where is the bright square?" and row.GetField("answer") == doc["answer"]
    text = json.loads(geojson.read_text(encoding="utf-8"))
    assert len(text["features"]) == n and "crs" not in text
    lon, lat = text["features"][0]["geometry"]["coordinates"][0][0]
    assert 4 < lon < 11 and 40 < lat < 50  # near the custom meridian 7.3 E, 5200 km north


@pytest.mark.parametrize("raster_fixture", ["custom_rotated", "nogeo"])
def test_ask_writes_the_heatmap_on_the_raster(raster_fixture, request, tmp_path):
    raster = request.getfixturevalue(raster_fixture)
    tif = tmp_path / "h.tif"
    done = _run(raster, "Where is the bright square?", "--model", "tiny", "--heatmap", tif, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    entry = doc["heatmap"]
    ds = gdal.Open(str(tif))
    assert (ds.RasterYSize, ds.RasterXSize) == tuple(entry["shape"])
    raster_gt = gdal.Open(str(raster)).GetGeoTransform(can_return_null=True) or (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    x0, y0, x1, y1 = entry["window"]
    rows, cols = entry["shape"]
    for c, r in [(0, 0), (cols, rows), (cols // 2, rows // 3)]:
        px, py = x0 + c * (x1 - x0) / cols, y0 + r * (y1 - y0) / rows
        assert gdal.ApplyGeoTransform(ds.GetGeoTransform(), c, r) == pytest.approx(
            gdal.ApplyGeoTransform(list(raster_gt), px, py), abs=1e-6)
    if doc["crs_wkt"]:
        assert ds.GetSpatialRef().IsSame(osr.SpatialReference(wkt=doc["crs_wkt"]))
    else:
        assert ds.GetSpatialRef() is None
    values = ds.GetRasterBand(1).ReadAsArray()
    assert (values[values == values] > 0).any()  # scores, not an empty grid
