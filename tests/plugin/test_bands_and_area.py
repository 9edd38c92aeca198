"""Real QGIS + the real backend: the model sees the bands and stretch the layer displays, and an
area of the map (visible extent, drawn rectangle, selected features) becomes the right pixel window.

Expected windows are computed here independently of the plugin: GDAL/osr reprojection of the
densified area and gdal.InvGeoTransform, then the pixel bounding box."""

from __future__ import annotations

import json
import math

import pytest
from osgeo import gdal, osr

from lrs_focus.samples import write_synthetic_raster

pytestmark = pytest.mark.qgis
MULTI_GT = (500000.0, 10.0, 0.0, 4500000.0, 0.0, -10.0)
ROTATED_GT = (300000.0, 8.66, -5.0, 5000000.0, -5.0, -8.66)


def _transform(src_def, dst_def):
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.SetFromUserInput(src_def)
    dst.SetFromUserInput(dst_def)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(src, dst)


def _to_map(gt, points, crs, target):
    ct = _transform("EPSG:32618", target) if target != crs else None
    out = [gdal.ApplyGeoTransform(list(gt), x, y) for x, y in points]
    return [ct.TransformPoint(x, y)[:2] for x, y in out] if ct else out


def _expected_window(rect, rect_crs, gt, width, height, n=200):
    x0, y0, x1, y1 = rect
    edge = [(x0 + (x1 - x0) * i / n, y0) for i in range(n)] + [(x1, y0 + (y1 - y0) * i / n) for i in range(n)]
    edge += [(x1 - (x1 - x0) * i / n, y1) for i in range(n)] + [(x0, y1 - (y1 - y0) * i / n) for i in range(n)]
    ct = _transform(rect_crs, "EPSG:32618") if rect_crs != "EPSG:32618" else None
    inv = gdal.InvGeoTransform(list(gt))
    px = [gdal.ApplyGeoTransform(inv, *(ct.TransformPoint(x, y)[:2] if ct else (x, y))) for x, y in edge]
    return (max(0, math.floor(min(p[0] for p in px))), max(0, math.floor(min(p[1] for p in px))),
            min(width, math.ceil(max(p[0] for p in px))), min(height, math.ceil(max(p[1] for p in px))))


def _bbox(points):
    return [min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points), max(p[1] for p in points)]


@pytest.fixture(scope="module")
def report(backend, run_qgis_module, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bands")
    multi = write_synthetic_raster(folder / "six.tif", 1200, 900, bands=6, dtype="UInt16", rgb=False,
                                   geotransform=MULTI_GT, epsg=32618)
    rotated = write_synthetic_raster(folder / "rotated.tif", 800, 600, geotransform=ROTATED_GT)
    rgb8 = write_synthetic_raster(folder / "rgb8.tif", 400, 300)
    palette = folder / "palette.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(palette), 300, 200, 1, gdal.GDT_Byte)
    table = gdal.ColorTable()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0)]):
        table.SetColorEntry(i, (*rgb, 255))
    ds.GetRasterBand(1).SetRasterColorTable(table)
    ds.GetRasterBand(1).SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    ds = None
    drawn = _bbox(_to_map(MULTI_GT, [(300, 200), (700, 200), (700, 600), (300, 600)], "EPSG:32618", "EPSG:3857"))
    visible = _bbox(_to_map(MULTI_GT, [(100, 100), (600, 100), (600, 500), (100, 500)], "EPSG:32618", "EPSG:3857"))
    polygon = _to_map(ROTATED_GT, [(100, 100), (400, 100), (400, 300), (100, 300), (100, 100)], "EPSG:32618", "EPSG:4326")
    plain = write_synthetic_raster(folder / "plain.tif", 500, 400, geotransform=None, epsg=None)
    # drawn by QGIS at x 0..500, y -400..0 of whatever CRS the canvas has (EPSG:3857 in the script)
    to_4326 = _transform("EPSG:3857", "EPSG:4326")
    on_plain = [to_4326.TransformPoint(x, y)[:2] for x, y in [(100, -100), (400, -100), (400, -300), (100, -300),
                                                              (100, -100)]]
    rotated_box = _bbox([gdal.ApplyGeoTransform(list(ROTATED_GT), x, y) for x, y in [(200, 150), (600, 450)]])
    spec = {
        "multiband": str(multi), "rotated": str(rotated), "rgb8": str(rgb8), "palette": str(palette),
        "drawn_3857": drawn, "visible_3857": visible,
        "selected_wkt_4326": "POLYGON((" + ", ".join(f"{x} {y}" for x, y in polygon) + "))",
        "plain": str(plain), "plain_wkt_4326": "POLYGON((" + ", ".join(f"{x!r} {y!r}" for x, y in on_plain) + "))",
        "areas": [["multiband, rectangle in EPSG:3857", "multiband", "EPSG:3857", drawn],
                  ["rotated, rectangle in its own CRS", "rotated", "EPSG:32618", rotated_box],
                  ["multiband, rectangle half outside", "multiband", "EPSG:32618",
                   [499000.0, 4495000.0, 503000.0, 4501000.0]],
                  ["multiband, rectangle outside", "multiband", "EPSG:32618", [0.0, 0.0, 10.0, 10.0]]],
    }
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    doc = run_qgis_module("bands_and_area.py", backend.endpoint, spec_file, timeout=300)
    return doc, spec


def test_bands_and_stretch_come_from_the_renderer(report):
    doc, _ = report
    r = doc["renderers"]
    assert r["multiband 3,2,1"]["bands"] == [3, 2, 1]
    assert r["multiband 3,2,1"]["stretch"] == [[1200, 9000], [1100, 8000], [1000, 7000]]
    assert r["single band grey 4"]["bands"] == [4] and r["single band grey 4"]["stretch"] == [[500, 6000]]
    assert r["pseudocolour 5"]["bands"] == [5] and r["pseudocolour 5"]["stretch"] == [[250, 7500]]
    assert r["palette default"] == {**r["palette default"], "renderer": "paletted", "bands": [1], "stretch": None}
    # 8-bit RGB: QGIS draws raw values (no enhancement), so the model gets 0..255, not a 2-98 % stretch
    assert r["rgb 8-bit default"]["bands"] == [1, 2, 3] and r["rgb 8-bit default"]["stretch"] == [[0, 255]] * 3


def test_bands_override_is_checked(report):
    parse = report[0]["parse"]
    assert parse[""] == [None, ""] and parse["4,3,2"] == [[4, 3, 2], ""] and parse["4 3 2"] == [[4, 3, 2], ""]
    assert parse["7"][0] is None and "no band 7" in parse["7"][1]
    assert parse["1,2"][0] is None and "1 band" in parse["1,2"][1]
    assert parse["a,b,c"][0] is None and "4,3,2" in parse["a,b,c"][1]
    refused = report[0]["asks"]["bad bands"]["refused"]
    assert "there is no band 9" in refused


def test_the_backend_gets_the_displayed_bands_and_stretch(report):
    options = report[0]["asks"]["multiband as displayed"]["options"]
    assert options["bands"] == [3, 2, 1] and options["stretch"] == [[1200, 9000], [1100, 8000], [1000, 7000]]


def _close(got, want):
    assert got is not None and all(abs(a - b) <= 1 for a, b in zip(got, want)), (got, want)


def test_rectangles_become_pixel_windows(report):
    doc, spec = report
    w = doc["windows"]
    _close(w["multiband, rectangle in EPSG:3857"], _expected_window(spec["drawn_3857"], "EPSG:3857", MULTI_GT, 1200, 900))
    _close(w["multiband, rectangle in EPSG:3857"], (300, 200, 700, 600))
    _close(w["rotated, rectangle in its own CRS"],
           _expected_window(spec["areas"][1][3], "EPSG:32618", ROTATED_GT, 800, 600))
    assert w["multiband, rectangle half outside"] == [0, 0, 300, 500]  # clipped to the raster
    assert w["multiband, rectangle outside"] is None


def _inside(windows, window):
    x0, y0, x1, y1 = window
    return windows and all(a >= x0 and b >= y0 and c <= x1 and d <= y1 for a, b, c, d in windows)


@pytest.mark.parametrize("name", ["visible extent", "drawn rectangle"])
def test_asks_about_an_area_send_its_window_and_get_tiles_inside_it(report, name):
    doc, spec = report
    ask = doc["asks"][name]
    assert ask["error"] is None, ask
    rect = doc["visible_extent"]["extent"] if name == "visible extent" else spec["drawn_3857"]
    want = _expected_window(rect, "EPSG:3857", MULTI_GT, 1200, 900)
    _close(ask["options"]["window"], want)
    assert _inside(ask["windows"], ask["options"]["window"])  # the trace stays in full-raster pixels


def test_drawn_rectangle_selects_the_area_choice(report):
    assert report[0]["drawn_area_choice"] == "drawn rectangle"


def test_selected_feature_on_a_rotated_raster(report):
    ask = report[0]["asks"]["selected features on rotated"]
    assert ask["error"] is None, ask
    _close(ask["options"]["window"], (100, 100, 400, 300))
    assert _inside(ask["windows"], ask["options"]["window"])


def test_selected_feature_over_a_raster_without_crs_is_taken_where_it_is_drawn(report):
    """No CRS on the raster: QGIS draws it in the canvas's coordinates, so the polygon (EPSG:4326)
    is reprojected to the canvas CRS, not read as degrees (which missed the raster)."""
    assert report[0]["plain_canvas_crs"] == "EPSG:3857"
    _close(report[0]["plain_selected"], (100, 100, 400, 300))


def test_area_outside_the_raster_is_refused(report):
    assert "does not overlap" in report[0]["asks"]["no overlap"]["refused"]
