"""The plugin's QGIS-free modules, imported from the built zip: the pyzmq install hint per
platform, the overall progress bar, where results are filed, storing and exporting an answer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from osgeo import gdal, ogr

from lrs_focus.geo import trace_to_features
from lrs_focus.heatmap import encode


@pytest.fixture(scope="module")
def pure(plugin_import):
    """Modules without QGIS imports: deps, progress, results_store (numpy + osgeo only)."""
    import lrs_focus_plugin.deps as deps
    import lrs_focus_plugin.progress as progress
    import lrs_focus_plugin.results_store as store
    from lrs_focus_plugin.params import StoreTarget

    return deps, progress, store, StoreTarget


@pytest.mark.parametrize("platform, prefix, debian, want", [
    ("win32", "", None, "python -m pip install pyzmq"),
    ("darwin", "/Applications/QGIS-LTR.app/Contents/MacOS", None,
     '"/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3" -m pip install --user pyzmq'),
    ("darwin", "", None, '"/Applications/QGIS.app/Contents/MacOS/bin/python3" -m pip install --user pyzmq'),
    ("linux", "/usr", True, "sudo apt install python3-zmq"),
])
def test_install_command_per_platform(pure, platform, prefix, debian, want):
    deps = pure[0]
    assert deps.install_command(platform, prefix, debian) == want


def test_install_text_says_where_to_run_it(pure):
    deps = pure[0]
    text = deps.missing_zmq_text("No module named 'zmq'", "win32")
    assert "OSGeo4W Shell" in text and "python -m pip install pyzmq" in text and "restart QGIS" in text
    assert deps.install_command("linux", "", False).endswith("-m pip install --user pyzmq")


def _job_events(levels=4):
    yield "queued", None, 0.0
    yield "open", None, 0.0
    yield "pyramid", None, 0.0
    yield "encode", None, 0.0
    for level in range(levels):
        for f in (0.0, 0.25, 0.5, 0.75):
            yield "encode", level, f
        yield "focus", level, 0.0
    yield "generate", None, 0.0
    yield "done", None, 1.0


def test_progress_is_one_monotone_bar(pure):
    progress = pure[1]
    bar = progress.OverallProgress()
    values = [bar.update(*event) for event in _job_events()]
    assert values == sorted(values) and values[-1] == 100
    assert len(set(values)) == len(values)  # every event moves it forward
    # the old bar showed the stage's own fraction: 0 % through the levels
    assert values[8] > values[4] > 0


def test_progress_never_goes_back_and_levels_never_reach_generation(pure):
    progress = pure[1]
    bar = progress.OverallProgress()
    bar.update("encode", 2, 0.9)
    assert bar.update("encode", 1, 0.1) == bar.update("encode", 2, 0.9)  # out-of-order event: no step back
    assert bar.update("unknown-stage", None, 0.5) == bar.percent
    assert progress.position("focus", 30, 1.0) < progress.position("generate", None, 0.0)


def test_progress_follows_the_backends_overall_and_falls_back_without_it(pure):
    """A backend that sends `overall` drives the bar (not the fixed stage spans: a long thumbnail stage
    moves it); an older one without it still gets the spans; the bar never goes back."""
    progress = pure[1]
    bar = progress.OverallProgress()
    assert bar.update("open", None, 0.0) == progress.position("open", None, 0.0)  # no overall yet: spans
    assert bar.update("encode", None, 0.0, 0.01) == progress.position("open", None, 0.0)  # waits for overall
    assert round(bar.update("encode", None, 0.0, 0.29)) == 29  # the backend's own figure (`job 29%`)
    assert bar.update("encode", None, 0.0, 0.5) == 50  # thumbnail (its base pass) at half the job
    assert bar.update("encode", 0, 0.0, 0.4) == 50  # never back
    assert bar.update("generate", None, 0.0, 1.5) == 100 and bar.update("done", None, 1.0, 1.0) == 100
    old = progress.OverallProgress()
    assert old.update("encode", None, 0.0) == progress.position("encode", None, 0.0) < 15


def test_stage_line_is_the_backends_message(pure):
    """The backend's message names stage and level already ("encode (level 2): encoded 16/34 tiles of
    level 2" said it twice); a message without text gets the stage in words."""
    progress = pure[1]
    assert progress.stage_text("encode", 2, "encoded 16/34 tiles of level 2") == "encoded 16/34 tiles of level 2"
    assert progress.stage_text("focus", 3, "") == "scoring tiles (level 3)"
    assert progress.stage_text("generate", None, "") == "writing the answer"
    assert progress.stage_text("mystery", None, "") == "mystery"


def test_results_location(pure, tmp_path):
    store = pure[2]
    assert store.results_location("/data/my project.qgz", "", "/profile") == "/data/my_project_lrs_focus.gpkg"
    assert store.results_location("/data/a.qgs", "/results", "/profile") == "/results/a_lrs_focus.gpkg"
    assert store.results_location("", "", "/profile") == "/profile/lrs_focus/unsaved_project_lrs_focus.gpkg"


def _doc(heatmap):
    tiles = [{"row": r, "col": c, "window": [c * 100, r * 100, c * 100 + 100, r * 100 + 100], "encoded": True,
              "score": 0.1 * (r + c), "kept": r == c, "rank": None} for r in range(2) for c in range(2)]
    trace = {"levels": [{"level": 0, "grid": [2, 2], "tiles": tiles}], "stopped_at": 0, "mode": "paper"}
    return {"answer": "a river", "question": "Is there a river?", "trace": trace, "crs_wkt": "", "job_id": "j-1",
            "features": trace_to_features(trace, (0, 1, 0, 0, 0, -1), "", "j-1"), "heatmap": heatmap,
            "model": {"name": "tiny", "random_weights": True}}


def test_store_result_files_tiles_heatmap_and_answer(pure, tmp_path):
    _, _, store, StoreTarget = pure
    grid = np.array([[1.0, 2.0], [np.nan, 4.0]], dtype=np.float32)
    target = StoreTarget(str(tmp_path / "p_lrs_focus.gpkg"), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    stored = store.store_result(target, _doc(encode(grid, [0, 0, 200, 200], 0)), "Is there a river?", 1.5)
    assert stored.levels == (0,) and stored.focus_tiles == 2 and stored.heatmap_level == 0
    assert stored.heatmap_breaks == pytest.approx((2.0, 3.0, 3.6, 3.88, 4.0))
    assert gdal.Open(stored.heatmap_path).GetGeoTransform() == (0.0, 100.0, 0.0, 0.0, 0.0, -100.0)
    with sqlite3.connect(target.gpkg_path) as db:
        assert db.execute("SELECT answer, heatmap FROM lrs_focus_results").fetchone() == (
            "a river", "p_lrs_focus_heatmaps/" + stored.heatmap_path.rsplit("/", 1)[1])


def test_store_result_keeps_the_tiles_when_the_heatmap_is_broken(pure, tmp_path):
    _, _, store, StoreTarget = pure
    target = StoreTarget(str(tmp_path / "p.gpkg"), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    broken = dict(encode(np.ones((2, 2)), [0, 0, 2, 2], 0), data="AAAA")
    stored = store.store_result(target, _doc(broken), "q", 1.0)
    assert stored.heatmap_path == "" and "unreadable" in stored.warning
    ds = ogr.Open(target.gpkg_path)
    assert ds.GetLayerByName(stored.tiles_layer).GetFeatureCount() == 4


def test_export_entry(plugin_import, pure, tmp_path):
    from types import SimpleNamespace

    from lrs_focus_plugin.export_result import export_entry

    _, _, store, StoreTarget = pure
    target = StoreTarget(str(tmp_path / "p.gpkg"), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    stored = store.store_result(target, _doc(encode(np.ones((2, 2)), [0, 0, 200, 200], 0)), "q", 1.0)
    entry = SimpleNamespace(question="q", answer="a river", job_id="j-1", results=stored.gpkg_path,
                            tiles_layer=stored.tiles_layer, heatmap=stored.heatmap_path)
    with pytest.raises(ValueError, match="no CRS"):
        export_entry(entry, str(tmp_path / "out.geojson"))
    assert not (tmp_path / "out_heatmap.tif").exists()
    written = export_entry(entry, str(tmp_path / "out.gpkg"))
    assert written == [str(tmp_path / "out.gpkg"), str(tmp_path / "out_heatmap.tif")]
    ds = ogr.Open(written[0])
    row = ds.GetLayerByName("lrs_focus_results").GetNextFeature().items()
    assert row["answer"] == "a river" and row["heatmap"] == "out_heatmap.tif"
    assert ds.GetLayerByName("focus_tiles").GetFeatureCount() == 4


def test_crs_notice_says_where_answers_of_a_raster_without_crs_are_drawn(plugin_import, tmp_path):
    """The dock's line for a raster layer without CRS, from the file as GDAL (and QGIS) reads it."""
    from lrs_focus.samples import write_synthetic_raster
    from lrs_focus_plugin.crs_notice import crs_notice

    map_units = write_synthetic_raster(tmp_path / "gt.tif", 64, 48, geotransform=(1000.0, 10.0, 0.0, 5000.0, 0.0, -10.0),
                                       epsg=None)
    pixels = write_synthetic_raster(tmp_path / "px.tif", 64, 48, geotransform=None, epsg=None)
    utm = write_synthetic_raster(tmp_path / "utm.tif", 64, 48)
    assert crs_notice(str(map_units), False) == (
        "This raster has no CRS: answers are drawn in its own map units, over the raster, not on a georeferenced map.")
    assert crs_notice(str(pixels), False).startswith("This raster has no georeferencing: answers are drawn in its pixel")
    # a CRS on the layer (QGIS's, or one the user set on a file without one): nothing to say
    assert crs_notice(str(utm), True) == "" and crs_notice(str(map_units), True) == ""
    # no file to read (a refused layer): no notice, no exception
    assert crs_notice(str(tmp_path / "missing.tif"), False) == "" and crs_notice(None, False) == ""
