"""Real QGIS (offscreen) + a real backend: ask from the dock twice, check the map's layer tree,
the files behind it, the progress bar, and that everything comes back when the project is reopened."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from osgeo import gdal, ogr

pytestmark = pytest.mark.qgis


def _key(f):
    return (f["level"], f["row"], f["col"])


def _bbox(ring):
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return [min(xs), min(ys), max(xs), max(ys)]


def _clean(text):
    import sys

    from lrs_focus_plugin.display_text import clean_text  # the zip's copy (plugin_import put it on sys.path)

    assert "lrs_focus_plugin" in sys.modules
    return clean_text(text)


def _layers(group):
    return {n["layer"].split(":")[0].split(" (")[0]: n for n in group["children"] if "layer" in n}


@pytest.fixture(scope="module")
def asked(run_qgis_module, backend, sentinel2_vrt, tmp_path_factory):
    project = tmp_path_factory.mktemp("project") / "analysis.qgz"
    return run_qgis_module("dock_ask.py", backend.endpoint, sentinel2_vrt,
                           "Where are the largest agricultural fields?", 120, 2, project), project


def test_answers_reach_the_dock_and_the_history(asked, plugin_import):
    doc, _ = asked
    for run in doc["runs"]:
        assert run["finished"] and run["error"] is None, run["error"]
        # the backend runs `--model tiny`: the dock must not pass its noise off as a prediction; its
        # broken UTF-8 (U+FFFD) and control characters are not shown raw
        assert run["answer_in_dock"] == _clean(run["answer"]) + " [random-weight test model: this answer is noise]"
        assert not re.search(r"[\ufffd\x00-\x08\x0b-\x1f\x7f]", run["answer_in_dock"])
    assert len(doc["history"]) == 2 and _clean(doc["runs"][1]["answer"]) in doc["history"][0]
    assert "tiny" in doc["backend_label"] and "RANDOM WEIGHTS" in doc["backend_label"]
    assert doc["messages"][-1].startswith("LRS Focus: Answer: ")


def test_one_monotone_progress_bar(asked):
    doc, _ = asked
    for run in doc["runs"]:
        progress = run["progress"]
        assert progress == sorted(progress) and progress[-1] == 100
        assert len(set(round(p) for p in progress)) >= 8  # it moves through the levels, not in 2 jumps


def test_new_result_visible_and_expanded_the_previous_hidden(asked):
    doc, _ = asked
    groups = [n for n in doc["tree"] if "group" in n]
    assert [g["group"] for g in groups] == ["Q: Where are the largest agricultural fields? (2)",
                                            "Q: Where are the largest agricultural fields?"]
    new, old = groups
    assert new["checked"] and new["expanded"] and not old["checked"] and not old["expanded"]
    assert new["job_id"] == doc["runs"][1]["job_id"]
    names = [n.get("layer") or n.get("group") for n in new["children"]]
    stopped_at = doc["runs"][1]["stopped_at"]
    assert re.fullmatch(r"focus \(level \d+\): (1 tile|\d+ tiles), 1 = most attention", names[0]), names[0]
    # the heatmap shown is the final level's alone; coarser levels are their own hidden layers
    assert names[1] == f"attention, level {stopped_at} (final)", names
    assert names[-1] == "tiles of every level (finest first)"
    for sub in new["children"][2:]:
        assert "group" in sub and not sub["checked"] and not sub["expanded"]
        assert all(not n["checked"] for n in sub["children"])
    if len(names) == 4:
        coarser = new["children"][2]
        assert names[2].startswith("attention of coarser levels")
        assert [n["layer"] for n in coarser["children"]] == [f"attention, level {k}" for k in
                                                            range(stopped_at - 1, stopped_at - 1 - len(coarser["children"]), -1)]


def test_focus_layer_is_the_final_levels_kept_tiles_ranked_1_to_n(asked):
    doc, _ = asked
    run = doc["runs"][1]
    focus = doc["tree"][0]["children"][0]
    assert focus["valid"] and focus["checked"] and focus["labels"] and focus["crs"] == "EPSG:32618"
    want = {_key(f["properties"]): f for f in run["features"] if f["properties"]["focus_rank"] is not None}
    got = {_key(f): f for f in focus["features"]}
    assert got.keys() == want.keys() and want
    assert {k[0] for k in got} == {run["stopped_at"]}
    assert sorted(f["focus_rank"] for f in got.values()) == list(range(1, len(got) + 1))
    for key, f in want.items():
        assert got[key]["focus_rank"] == f["properties"]["focus_rank"] and got[key]["kept"]
        assert got[key]["bbox"] == pytest.approx(_bbox(f["geometry"]["coordinates"][0]), abs=1e-6)
        assert got[key]["window"] == f["properties"]["window"]


def test_all_levels_hold_every_tile_and_the_base_covers_the_raster(asked):
    doc, _ = asked
    run = doc["runs"][1]
    levels = doc["tree"][0]["children"][-1]["children"]
    assert [n["layer"] for n in levels] == [f"level {k}" for k in range(run["stopped_at"], -1, -1)]
    got = {_key(f): f for n in levels for f in n["features"]}
    want = {_key(f["properties"]): f for f in run["features"]}
    assert got.keys() == want.keys()
    for key, f in want.items():
        assert got[key]["bbox"] == pytest.approx(_bbox(f["geometry"]["coordinates"][0]), abs=1e-6)
    base = [f["bbox"] for f in got.values() if f["level"] == 0]
    union = [min(b[0] for b in base), min(b[1] for b in base), max(b[2] for b in base), max(b[3] for b in base)]
    assert union == pytest.approx(doc["raster_extent"], abs=1e-6)


def test_heatmap_layer_lies_on_the_raster(asked, sentinel2_vrt):
    doc, _ = asked
    run = doc["runs"][1]
    heat = doc["tree"][0]["children"][1]
    assert heat["valid"] and heat["crs"] == "EPSG:32618" and heat["renderer"] == "singlebandpseudocolor"
    assert heat["size"] == list(reversed(run["heatmap"]["shape"]))
    x0, y0, x1, y1 = run["heatmap"]["window"]
    gt = gdal.Open(str(sentinel2_vrt)).GetGeoTransform()
    corners = [gdal.ApplyGeoTransform(gt, x, y) for x, y in [(x0, y0), (x1, y1)]]
    want = [min(c[0] for c in corners), min(c[1] for c in corners), max(c[0] for c in corners),
            max(c[1] for c in corners)]
    assert heat["extent"] == pytest.approx(want, abs=1e-6)
    assert heat["legend"][0] == "below the top 25 % (no tint)", heat["legend"]
    assert heat["legend"][-1] == "top 3 %: where the model looked hardest"
    assert not any("Band 1" in text or "Gray" in text for text in heat["legend"])


def test_results_are_filed_and_survive_reopening_the_project(asked):
    doc, project = asked
    gpkg = project.with_name("analysis_lrs_focus.gpkg")
    ds = ogr.Open(str(gpkg))
    rows = [(f.GetField("job_id"), f.GetField("question"), f.GetField("tiles_layer"))
            for f in ds.GetLayerByName("lrs_focus_results")]
    assert [r[0] for r in rows] == [run["job_id"] for run in doc["runs"]]
    assert rows[1][1] == "Where are the largest agricultural fields? (2)"
    assert all(ds.GetLayerByName(r[2]) is not None for r in rows)
    assert list(project.parent.glob("analysis_lrs_focus_heatmaps/*.tif"))

    def summary(tree):
        out = []
        for node in tree:
            if "group" in node:
                out.append((node["group"], node["checked"], summary(node["children"])))
            else:
                out.append((node["layer"], node["valid"], len(node.get("features", [])), node["extent"]))
        return out

    assert summary(doc["reopened_tree"]) == summary(doc["tree"])
    assert doc["history_after_reopen"] == doc["history"]
    # "Zoom to focus" goes to the reopened project's newest answer (it stayed greyed out)
    assert not doc["zoom_enabled_after_clear"] and doc["zoom_enabled_after_reopen"]
    assert doc["canvas_extent_after_reopen_zoom"] == pytest.approx(doc["canvas_extent"], rel=1e-6)


def test_export_writes_the_answer_with_its_tiles_and_heatmap(asked):
    doc, project = asked
    gpkg, heat = doc["exports"]["gpkg"]
    ds = ogr.Open(gpkg)
    row = ds.GetLayerByName("lrs_focus_results").GetNextFeature()
    assert row.GetField("answer") == doc["runs"][1]["answer"] and row.GetField("heatmap") == Path(heat).name
    assert ds.GetLayerByName("focus_tiles").GetFeatureCount() == len(doc["runs"][1]["features"])
    assert gdal.Open(heat).GetRasterBand(1).DataType == gdal.GDT_Float32
    assert doc["export_messages"][-1].startswith("LRS Focus: Exported to ")
    geojson = json.loads(Path(doc["exports"]["geojson"][0]).read_text(encoding="utf-8"))
    assert geojson["lrs_focus"]["answer"] == doc["runs"][1]["answer"] and "crs" not in geojson


def test_options_have_tooltips(asked):
    tips = asked[0]["tooltips"]
    assert "kept" in tips["alpha"] and "N_max" in tips["n_max"] and "paper" in tips["mode"]
    assert "4,3,2" in tips["bands"] and "rectangle you draw" in tips["area"]
