"""Real QGIS (offscreen) + a real backend: the dock on a 1366 x 768 laptop, a drawn area that
stays on the map, a raster small enough that every tile is kept, and answers asked before the
first save that move into the project's GeoPackage, so a copied project folder opens whole."""

from __future__ import annotations

import re

import pytest

from lrs_focus.samples import write_synthetic_raster

pytestmark = pytest.mark.qgis
GT = (500000.0, 10.0, 0.0, 4500000.0, 0.0, -10.0)


@pytest.fixture(scope="module")
def report(run_qgis_module, backend, tmp_path_factory):
    work = tmp_path_factory.mktemp("survey")
    (work / "first").mkdir()
    write_synthetic_raster(work / "first" / "scene.tif", 1400, 1000, geotransform=GT, epsg=32618)
    write_synthetic_raster(work / "first" / "small.tif", 120, 90, geotransform=GT, epsg=32618)
    return run_qgis_module("draw_save_copy.py", backend.endpoint, work, timeout=400), work


def test_dock_fits_a_laptop_screen(report):
    dock = report[0]["dock"]
    assert dock["minimum_width"] <= 340, dock
    assert dock["map_width"] >= 1366 - 340 - 40, dock  # the map keeps the rest of the screen
    assert not dock["clipped"], dock["clipped"]  # every wrapping line shows all of its text
    assert "RANDOM WEIGHTS" in dock["backend_text"] and dock["backend_height"][0] >= dock["backend_height"][1]


def test_drawn_area_stays_on_the_map_with_its_size_in_metres(report):
    drawn = report[0]["drawn"]
    assert drawn["area_choice"] == "drawn rectangle" and drawn["band_visible"]
    assert drawn["band"] == pytest.approx(drawn["rect"], abs=1e-6)
    # 50 % x 60 % of a 14 x 10 km scene, and the raster pixels it covers
    assert re.fullmatch(r"drawn: 7 km x 6 km = 700 x 600 pixels of 'scene'", drawn["note"]), drawn["note"]
    assert drawn["band_after_answer"] and drawn["band_hidden_for_whole"]
    assert "asked area" in drawn["names"]
    assert drawn["area_extent"] == pytest.approx(drawn["rect"], abs=1e-6)
    assert drawn["area_window"] == [140, 100, 840, 700]


def test_small_raster_says_every_tile_was_kept(report):
    small = report[0]["small"]
    assert re.fullmatch(r"every tile kept \((\d+) of \1\): nothing to rank", small["focus"]), small
    assert not small["labels"] and small["features"] >= 1
    assert "Every tile was kept" in small["stage"]


def test_answers_move_into_the_project_geopackage_on_first_save(report):
    doc, work = report
    assert all("unsaved_project_lrs_focus" in s or s.endswith(".tif") for s in doc["before_save"]), doc["before_save"]
    first = str(work / "first")
    assert doc["after_save"] and all(s.startswith(first + "/survey_lrs_focus") for s in doc["after_save"]), doc["after_save"]
    assert doc["saved_names_own"] and not doc["saved_names_profile"]  # the file names its own GeoPackage only
    assert not [name for name in doc["left_in_profile"] if name.startswith(("tiles_", "area_"))]


def test_copied_project_opens_without_unavailable_layers(report):
    doc, work = report
    assert doc["reopened"] and doc["bad_layers"] == []
    copy = str(work / "copy")
    assert len(doc["reopened_layers"]) >= 8
    for name, (valid, source, count) in doc["reopened_layers"].items():
        assert valid and source.startswith(copy + "/"), (name, source)
        assert count is None or count >= 1, name
    assert len(doc["history"]) == 2
    assert all(results == f"{copy}/survey_lrs_focus.gpkg" and heat.startswith(f"{copy}/survey_lrs_focus_heatmaps/")
               for results, heat in doc["history"]), doc["history"]
