"""Real QGIS (offscreen) against a real backend: cancel, dead backend, refused layers,
Processing, non-georeferenced rasters."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.qgis


def test_cancel_from_dock(run_qgis, backend, sentinel2_vrt):
    doc = run_qgis("dock_cancel.py", backend.endpoint, sentinel2_vrt)
    assert doc["finished"]
    assert not doc["answered"], "the job finished before the cancel reached it"
    assert doc["error"][0] == "cancelled"
    assert doc["cancel_seconds"] < 10
    assert doc["groups"] == []
    assert doc["ask_enabled"] and doc["dock_stage"] == "cancelled"


def test_answer_after_project_closed_stays_out_of_the_next_project(run_qgis, backend, sentinel2_vrt, tmp_path):
    doc = run_qgis("dock_project_closed.py", backend.endpoint, sentinel2_vrt, tmp_path)
    assert doc["finished"] and doc["cleared"] and doc["answered"], doc
    assert doc["layers"] == 0 and doc["groups"] == [] and doc["map_layers"] == 0
    assert doc["history"] == 0  # the new project's history does not get the old project's answer
    first = str(tmp_path / "first_lrs_focus.gpkg")
    assert doc["filed"] == first
    assert doc["dock_answer"]
    assert any("after its project was closed" in m and first in m for m in doc["messages"]), doc["messages"]


def test_export_follows_a_moved_project_folder(run_qgis, backend, sentinel2_vrt, tmp_path):
    doc = run_qgis("dock_moved_project.py", backend.endpoint, sentinel2_vrt, tmp_path)
    after = tmp_path / "after"
    assert doc["results"] == str(after / "survey_lrs_focus.gpkg")
    assert doc["heatmap"].startswith(str(after / "survey_lrs_focus_heatmaps") + os.sep)
    assert all(doc["layers_valid"])  # QGIS's relative paths: the map followed the folder
    assert doc["exports"]["gpkg"] == [str(tmp_path / "export.gpkg"), str(tmp_path / "export_heatmap.tif")], doc
    assert doc["exports"]["geojson"][0] == str(tmp_path / "export.geojson"), doc["messages"]


def test_no_backend_gives_message_within_seconds(run_qgis, unused_endpoint, sentinel2_vrt):
    doc = run_qgis("dock_dead_backend.py", unused_endpoint, sentinel2_vrt)
    assert doc["finished"] and doc["error"][0] == "timeout"
    assert doc["seconds"] < 3.0 + 3.0  # health timeout set to 3 s in the script
    assert "No answer from the backend" in doc["error"][1] and "lrs-focus serve" in doc["error"][1]
    assert any("No answer from the backend" in m for m in doc["messages"])
    assert doc["ticks"] >= 0.5 * doc["seconds"] / 0.05, "the main thread was blocked"


@pytest.mark.slow
def test_backend_killed_during_job(run_qgis, fresh_backend, sentinel2_vrt):
    doc = run_qgis("dock_dead_backend.py", fresh_backend.endpoint, sentinel2_vrt, fresh_backend.process.pid)
    assert doc["finished"] and doc["error"][0] == "timeout", doc
    assert "stopped answering" in doc["error"][1]
    # Timeouts.silence (5 s) + the health probe (3 s here) + polling slack
    assert doc["seconds_after_kill"] < 5 + 3 + 3
    assert doc["ticks"] >= 0.5 * doc["seconds"] / 0.05


def test_web_and_memory_layers_refused(run_qgis, sentinel2_vrt, tmp_path):
    doc = run_qgis("refuse_layers.py", sentinel2_vrt, tmp_path)
    # GDAL-provider layers are listed (the dock's note under the combo says why one cannot be asked)
    assert sorted(doc["combo"]) == ["erdas", "file raster", "geopackage", "geopackage table", "zipped"]
    assert "'wms' provider" in doc["reasons"]["a WMS layer"] and "GeoTIFF" in doc["reasons"]["a WMS layer"]
    assert "'wms' provider" in doc["reasons"]["xyz tiles"]
    assert "not a raster layer" in doc["reasons"]["a memory layer"]
    assert doc["reasons"]["file raster"] == "" and doc["good_path"] == str(sentinel2_vrt)
    # file rasters the backend would refuse with a puzzling code (raster_not_found, not_a_raster...)
    assert "inside an archive (zip)" in doc["reasons"]["zipped"] and "Extract it" in doc["reasons"]["zipped"]
    assert "GPKG file, which the backend does not read" in doc["reasons"]["geopackage"]
    assert "table of a GPKG container" in doc["reasons"]["geopackage table"]
    assert "HFA file" in doc["reasons"]["erdas"] and "GeoTIFF" in doc["reasons"]["erdas"]
    assert not doc["task_started"]
    assert any("'wms' provider" in m for m in doc["messages"])


def test_processing_algorithm(run_qgis, backend, sentinel2_vrt, tmp_path):
    doc = run_qgis("processing_ask.py", backend.endpoint, sentinel2_vrt, tmp_path / "focus.gpkg")
    assert doc["algorithm"] == "Ask raster"
    assert doc["answer"] and doc["job_id"]
    assert doc["tiles"] == len(doc["features"]) > 0
    assert doc["crs"] == doc["raster_crs"] == "EPSG:32618"
    assert any(line.startswith("Answer: ") for line in doc["log"])
    base = [f["bbox"] for f in doc["features"] if f["level"] == 0]
    union = [min(b[0] for b in base), min(b[1] for b in base), max(b[2] for b in base), max(b[3] for b in base)]
    assert union == pytest.approx(doc["raster_extent"], abs=1e-6)
    # ranks 1..n only on the kept tiles of the final level, never repeated across levels
    ranked = [f for f in doc["features"] if f["focus_rank"] is not None]
    assert ranked and len({f["level"] for f in ranked}) == 1 and all(f["kept"] for f in ranked)
    assert sorted(f["focus_rank"] for f in ranked) == list(range(1, len(ranked) + 1))
    assert ranked[0]["level"] == max(f["level"] for f in doc["features"])


def test_processing_bands_area_and_heatmap(run_qgis, backend, sentinel2_vrt, tmp_path):
    from osgeo import gdal

    # the upper-left quarter of the scene, given in the raster's CRS
    gt = gdal.Open(str(sentinel2_vrt)).GetGeoTransform()
    x0, y1 = gt[0], gt[3]
    x1, y0 = gt[0] + 900 * gt[1], gt[3] + 800 * gt[5]
    area = f"{x0},{x1},{y0},{y1} [EPSG:32618]"
    heat = tmp_path / "heat.tif"
    doc = run_qgis("processing_ask.py", backend.endpoint, sentinel2_vrt, tmp_path / "focus.gpkg", heat, "3,2,1", area)
    assert doc["heatmap"] == str(heat) and heat.exists()
    asked = [line for line in doc["log"] if line.startswith("Asking")][0]
    assert "bands 3,2,1;" in asked and "pixel window 0,0,900,800" in asked
    assert all(f["window"][2] <= 900 and f["window"][3] <= 800 for f in doc["features"])  # inside the area
    ds = gdal.Open(str(heat))
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32618" and ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    hx0, hy1 = ds.GetGeoTransform()[0], ds.GetGeoTransform()[3]
    assert hx0 == pytest.approx(x0, abs=gt[1]) and hy1 == pytest.approx(y1, abs=gt[1])


def test_ungeoreferenced_raster_lines_up(run_qgis, backend, tmp_path):
    from osgeo import gdal

    import numpy as np

    path = tmp_path / "plain.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 1500, 1000, 3, gdal.GDT_Byte)
    for b in range(1, 4):
        ds.GetRasterBand(b).WriteArray((np.indices((1000, 1500)).sum(0) * b % 255).astype("uint8"))
    ds = None
    doc = run_qgis("dock_ask.py", backend.endpoint, path, "What is in the top left corner?", 120, 1,
                   tmp_path / "plain.qgz")
    run = doc["runs"][0]
    assert run["finished"] and run["error"] is None, run["error"]
    assert doc["raster_crs"] == ""
    assert doc["raster_extent"] == [0.0, -1000.0, 1500.0, 0.0]  # how QGIS draws it
    assert doc["crs_note"].startswith("This raster has no georeferencing: answers are drawn in its pixel units")
    assert doc["crs_note_after_crs_set"] == ""  # the user set a CRS on the layer: the line went
    group = doc["tree"][0]
    focus, heat, levels = group["children"][0], group["children"][1], group["children"][-1]
    layers = levels["children"]
    # like the raster, every result layer has no CRS, also after the project is reopened: the tiles'
    # srs_id -1 alone reads as QGIS's valid "Undefined Cartesian SRS", which the canvas then tries
    # to transform to the project CRS ("No transform available ...")
    for tree in (doc["tree"], doc["reopened_tree"]):
        kept = [n for n in _layers(tree[0]) if n["crs_valid"]]
        assert not kept, [(n["layer"], n["crs"]) for n in kept]
    assert heat["valid"] and focus["valid"]
    base = [f["bbox"] for l in layers for f in l["features"] if f["level"] == 0]
    union = [min(b[0] for b in base), min(b[1] for b in base), max(b[2] for b in base), max(b[3] for b in base)]
    assert union == pytest.approx(doc["raster_extent"], abs=1e-6)
    x0, y0, x1, y1 = run["heatmap"]["window"]
    assert heat["extent"] == pytest.approx([x0, -y1, x1, -y0], abs=1e-6)  # y negative downward, like the raster


def _layers(node: dict) -> list[dict]:
    """The layer nodes under a node of qgis_env.layer_tree, depth first."""
    children = node.get("children")
    if children is None:
        return [node]
    return [leaf for child in children for leaf in _layers(child)]


@pytest.mark.slow
def test_start_command_starts_checks_and_stops_backend(run_qgis, unused_endpoint, sentinel2_vrt, backend_argv):
    import shlex

    command = shlex.join(backend_argv(unused_endpoint))
    doc = run_qgis("start_command.py", unused_endpoint, sentinel2_vrt, command, timeout=300)
    assert doc["finished"] and doc["error"] is None, doc["error"]
    assert "start" in doc["stages"] and doc["answer"] and doc["layers"] >= 1
    assert doc["running_after_answer"] and doc["pid"]
    assert doc["exit_code_after_unload"] is not None  # stopped by unload()


def test_start_command_never_goes_through_a_shell(run_qgis, unused_endpoint, sentinel2_vrt, tmp_path):
    marker = tmp_path / "shell-ran"
    doc = run_qgis("start_command.py", unused_endpoint, sentinel2_vrt, f"echo hi; touch {marker}", timeout=60)
    assert doc["error"][0] == "backend_exited" and "exited with code 0" in doc["error"][1]
    assert "hi; touch" in doc["error"][1]  # echo got the ';' as an argument: no shell parsed it
    assert not marker.exists()


def test_unwritable_results_folder_falls_back_to_the_profile(run_qgis, backend, sentinel2_vrt):
    """The results folder cannot be created (its parent is a file): the answer is filed in the
    QGIS profile instead, the map shows it, and the user is told where it went."""
    doc = run_qgis("dock_ask.py", backend.endpoint, sentinel2_vrt, "Is there a beach?",
                   env={"LRS_TEST_RESULTS_DIR": "/dev/null/results"})
    run = doc["runs"][0]
    assert run["finished"] and run["error"] is None, run["error"]
    warning = [m for m in doc["messages"] if "could not be filed" in m]
    assert warning and "/dev/null/results" in warning[0] and "instead" in warning[0]
    focus = doc["tree"][0]["children"][0]
    assert focus["valid"] and focus["features"] and "lrs_focus/unsaved_project_lrs_focus.gpkg" in focus["source"]
