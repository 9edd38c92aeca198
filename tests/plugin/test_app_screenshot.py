"""Full QGIS under xvfb-run: the plugin installed from the built zip into a throw-away profile,
a question asked from its dock, a screenshot of the main window with the focus layer.

Set LRS_FOCUS_SCREENSHOT=docs/screenshot.png to keep the PNG (the README's picture).
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


def test_full_qgis_screenshot(plugin_zip, backend, sentinel2_vrt, tmp_path, qgis_python):
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
        f"[lrs_focus]\nendpoint={backend.endpoint}\n\n"
        "[qgis]\ncheckVersion=false\nshowTips322=false\nshowTips=false\n"
        "[core]\nMessages\\\\Tips=false\n",
        encoding="utf-8",
    )
    png, report = tmp_path / "qgis.png", tmp_path / "report.json"
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home), LRS_SHOT_RASTER=str(sentinel2_vrt),
               LRS_SHOT_QUESTION="Where are the largest agricultural fields?", LRS_SHOT_PNG=str(png),
               LRS_SHOT_REPORT=str(report))
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("VIRTUAL_ENV", None)
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", qgis_bin, "--profiles-path", str(profiles),
           "--nologo", "--noversioncheck", "--skipbadlayers", "--code", str(SCRIPT)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert report.exists(), f"QGIS wrote no report ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    doc = json.loads(report.read_text())
    assert doc["plugin_loaded"], doc
    assert doc["answer"] and doc["groups"] and doc["groups"][0].startswith("Q: Where are")
    assert png.stat().st_size > 20_000
    assert doc["canvas_reddish"] > 0.01, "no focus tiles visible on the canvas"
    keep = os.environ.get("LRS_FOCUS_SCREENSHOT")
    if keep:
        shutil.copy(png, REPO / keep if not os.path.isabs(keep) else keep)
