"""Tiles written as RFC 7946 GeoJSON and as a GeoPackage: positions, CRS, attributes, the answer."""

from __future__ import annotations

import json
import sqlite3

import pytest
from osgeo import gdal, ogr, osr

from lrs_focus.geo import trace_to_features
from lrs_focus.pyramid import PyramidGeometry
from lrs_focus.result_files import (
    EDGE_SEGMENTS,
    RESULTS_TABLE,
    ResultFileError,
    kind_of,
    read_results,
    read_tiles,
    write_geopackage,
    write_result,
)

ALBERS_GT = (-1_500_000.0, 30.0, 0.0, 2_100_000.0, 0.0, -30.0)
ROTATED_GT = (300000.0, 8.66, -5.0, 5000000.0, -5.0, -8.66)
CUSTOM_TM = "+proj=tmerc +lat_0=0 +lon_0=7.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"
NOGEO_GT = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _wkt(definition: str) -> str:
    srs = osr.SpatialReference()
    srs.SetFromUserInput(definition)
    return srs.ExportToWkt()


def _doc(gt, crs_wkt, width=1500, height=1000, job_id="job-1"):
    geo = PyramidGeometry(height, width)
    levels = []
    for lv in geo.levels[:2]:
        tiles = []
        for r in range(lv.grid[0]):
            for c in range(lv.grid[1]):
                score = 0.1 * ((3 * r + c) % 5)
                kept = score >= 0.2
                tiles.append({"row": r, "col": c, "window": list(geo.tile_window(lv, r, c)), "encoded": True,
                              "score": score, "kept": kept, "rank": None})
        levels.append({"level": lv.index, "grid": list(lv.grid), "tiles": tiles})
    trace = {"levels": levels, "stopped_at": 1, "mode": "paper"}
    return {"answer": "two ships", "question": "How many ships?", "trace": trace, "crs_wkt": crs_wkt,
            "features": trace_to_features(trace, gt, crs_wkt, job_id), "job_id": job_id,
            "model": {"name": "tiny", "device": "cpu", "random_weights": True},
            "counts": {"llm_vision_tokens": 123}, "raster": {"path": "/data/r.tif"}}


def _signed_area(ring):
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2


def _to_wgs84_independently(crs_wkt, x, y):
    """Authority axis order (lat, lon for EPSG:4326), swapped by hand: a check of the writer's order."""
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromWkt(crs_wkt)
    dst.ImportFromEPSG(4326)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dst.SetAxisMappingStrategy(osr.OAMS_AUTHORITY_COMPLIANT)
    lat, lon, _ = osr.CoordinateTransformation(src, dst).TransformPoint(x, y)
    return lon, lat


@pytest.mark.parametrize("gt, crs", [(ALBERS_GT, "EPSG:5070"), (ROTATED_GT, CUSTOM_TM)], ids=["albers", "custom-rotated"])
def test_geojson_is_rfc7946_wgs84(tmp_path, gt, crs):
    wkt = _wkt(crs)
    doc = _doc(gt, wkt)
    path = write_result(str(tmp_path / "t.geojson"), doc)
    text = json.loads(open(path, encoding="utf-8").read())
    assert "crs" not in text and "crs_wkt" not in text  # RFC 7946: WGS 84 implied, no crs member
    assert text["lrs_focus"]["question"] == "How many ships?" and text["lrs_focus"]["answer"] == "two ships"
    ds = gdal.OpenEx(path, gdal.OF_VECTOR)
    assert ds.GetLayer(0).GetSpatialRef().GetAuthorityCode(None) == "4326"
    assert len(text["features"]) == len(doc["features"]["features"])
    for got, want in zip(text["features"], doc["features"]["features"]):
        props, ring = got["properties"], got["geometry"]["coordinates"][0]
        assert [props[k] for k in ("x0", "y0", "x1", "y1")] == want["properties"]["window"]
        assert props["focus_rank"] == want["properties"]["focus_rank"]
        assert len(ring) >= 4 * EDGE_SEGMENTS + 1  # densified edges (every edge in >= 8 parts)
        assert _signed_area(ring) > 0  # exterior ring counter-clockwise
        assert all(-180 <= lon <= 180 and -90 <= lat <= 90 for lon, lat in ring)
        for corner in want["geometry"]["coordinates"][0][:4]:
            lon, lat = _to_wgs84_independently(wkt, *corner)
            assert min(abs(lon - x) + abs(lat - y) for x, y in ring) < 2e-7


def test_geojson_of_a_raster_without_crs_is_refused_with_a_way_out(tmp_path):
    with pytest.raises(ResultFileError, match=r"no CRS.*t\.gpkg instead"):
        write_result(str(tmp_path / "t.geojson"), _doc(NOGEO_GT, ""))
    assert not (tmp_path / "t.geojson").exists()


def _srs_id(path, table):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)).fetchone()[0]


def test_geopackage_keeps_a_crs_without_epsg_code(tmp_path):
    wkt = _wkt(CUSTOM_TM)
    doc = _doc(ROTATED_GT, wkt)
    path = write_result(str(tmp_path / "t.gpkg"), doc)
    ds = ogr.Open(path)  # held: a GDAL layer dies with its dataset
    srs = ds.GetLayerByName("focus_tiles").GetSpatialRef()
    assert srs.IsSame(osr.SpatialReference(wkt=wkt)) and srs.GetAuthorityCode(None) is None
    with sqlite3.connect(path) as db:
        org, = db.execute("SELECT organization FROM gpkg_spatial_ref_sys WHERE srs_id = ?",
                          (_srs_id(path, "focus_tiles"),)).fetchone()
    assert org.upper() == "NONE"
    # geometries untouched: the raster CRS coordinates of the result document
    collection, back_wkt = read_tiles(path, "focus_tiles")
    assert osr.SpatialReference(wkt=back_wkt).IsSame(srs)
    for got, want in zip(collection["features"], doc["features"]["features"]):
        assert got["properties"]["window"] == want["properties"]["window"]
        got_ring, want_ring = got["geometry"]["coordinates"][0], want["geometry"]["coordinates"][0]
        assert [list(p) for p in got_ring] == [list(p) for p in want_ring]
    rows = read_results(path)
    assert len(rows) == 1 and rows[0]["answer"] == "two ships" and rows[0]["tiles_layer"] == "focus_tiles"
    assert rows[0]["focus_tiles"] == sum(f["properties"]["focus_rank"] is not None for f in doc["features"]["features"])


def test_geopackage_without_crs_is_undefined_cartesian(tmp_path):
    """srs_id -1: QGIS draws it untransformed over the raster; GDAL's default 0 is a geographic CRS."""
    path = write_result(str(tmp_path / "t.gpkg"), _doc(NOGEO_GT, ""))
    assert _srs_id(path, "focus_tiles") == -1
    ds = ogr.Open(path)
    ext = ds.GetLayerByName("focus_tiles").GetExtent()
    assert ext == (0.0, 1500.0, -1000.0, 0.0)  # minx, maxx, miny, maxy: the raster as QGIS draws it


def test_one_geopackage_collects_several_results(tmp_path):
    path = str(tmp_path / "project.gpkg")
    for i in range(3):
        doc = _doc(ALBERS_GT, _wkt("EPSG:5070"), job_id=f"job-{i}")
        write_geopackage(path, doc["features"], doc["crs_wkt"], {"job_id": f"job-{i}", "answer": f"a{i}",
                                                                 "tiles_layer": f"tiles_{i}"}, f"tiles_{i}")
    rows = read_results(path)
    assert [r["job_id"] for r in rows] == ["job-0", "job-1", "job-2"]
    ds = ogr.Open(path)
    assert {ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())} == {"tiles_0", "tiles_1", "tiles_2", RESULTS_TABLE}


def test_focus_ranks_run_1_to_n_at_the_final_level_only():
    feats = _doc(ALBERS_GT, _wkt("EPSG:5070"))["features"]["features"]
    final = [f["properties"] for f in feats if f["properties"]["focus_rank"] is not None]
    assert final and all(p["level"] == 1 and p["kept"] for p in final)
    assert sorted(p["focus_rank"] for p in final) == list(range(1, len(final) + 1))
    by_rank = sorted(final, key=lambda p: p["focus_rank"])
    assert [p["score"] for p in by_rank] == sorted((p["score"] for p in final), reverse=True)
    assert not any(f["properties"]["focus_rank"] for f in feats if f["properties"]["level"] == 0)


@pytest.mark.parametrize("name", ["a.shp", "a", "a.tif"])
def test_unknown_formats_are_refused(name):
    with pytest.raises(ResultFileError, match=r"\.geojson.*\.gpkg"):
        kind_of(name)
