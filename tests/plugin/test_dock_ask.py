"""Real QGIS (offscreen) + a real backend: ask from the dock, check the layer group."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qgis


def _key(f):
    return (f["level"], f["row"], f["col"])


def test_dock_ask_adds_group_matching_result(run_qgis, backend, sentinel2_vrt):
    doc = run_qgis("dock_ask.py", backend.endpoint, sentinel2_vrt, "Where are the largest agricultural fields?")
    assert doc["finished"] and doc["error"] is None, doc["error"]
    # the backend runs `--model tiny`: the dock must not pass its noise off as a prediction
    assert doc["answer"] and doc["answer_in_dock"] == doc["answer"] + " [random-weight test model: this answer is noise]"
    assert len(doc["groups"]) == 1
    group = doc["groups"][0]
    assert group["name"].startswith("Q: Where are the largest")
    layers = group["layers"]
    assert layers and all(l["same_crs_as_raster"] and l["crs"] == "EPSG:32618" for l in layers)
    assert doc["raster_crs"] == "EPSG:32618"
    got = {_key(f): f for l in layers for f in l["features"]}
    want = {_key(f): f for f in doc["expected"]}
    assert got.keys() == want.keys() and want
    for key, f in want.items():
        assert got[key]["kept"] == f["kept"] and got[key]["rank"] == f["rank"]
        assert got[key]["bbox"] == pytest.approx(f["bbox"], abs=1e-6)
    # base level tiles cover exactly the raster, as QGIS draws it
    base = [f for f in want.values() if f["level"] == 0]
    union = [min(f["bbox"][0] for f in base), min(f["bbox"][1] for f in base),
             max(f["bbox"][2] for f in base), max(f["bbox"][3] for f in base)]
    assert union == pytest.approx(doc["raster_extent"], abs=1e-6)
    # finest level first, one layer per level, styled and labelled
    levels = [l["features"][0]["level"] for l in layers]
    assert levels == sorted(set(levels), reverse=True)
    assert all(l["renderer"] == "graduatedSymbol" for l in layers)
    assert [l["labels"] for l in layers] == [True] + [False] * (len(layers) - 1)  # finest level labelled
    assert len(doc["history"]) == 1 and doc["answer"] in doc["history"][0]
    # zoomed to the focus: the canvas lies inside the raster's neighbourhood
    cx0, cy0, cx1, cy1 = doc["canvas_extent"]
    rx0, ry0, rx1, ry1 = doc["raster_extent"]
    assert cx1 > rx0 and cx0 < rx1 and cy1 > ry0 and cy0 < ry1
