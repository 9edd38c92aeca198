"""Every plugin module imports, and the dock/settings/initGui run, on Qt6 (PyQt6 + qgis stubs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("qt6_smoke.py")


def test_qt6_smoke(plugin_root):
    pytest.importorskip("PyQt6.QtWidgets", reason="PyQt6 is a test extra (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, str(SCRIPT), str(plugin_root)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["qt"].startswith("6.")
    modules = {p.stem for p in (plugin_root / "lrs_focus_plugin").rglob("*.py") if p.stem != "__init__"}
    assert modules <= {name.rsplit(".", 1)[-1] for name in doc["imported"]}
    assert doc["qaction_module"] == "PyQt6.QtGui"
    assert doc["dock_answer"] == "a." and doc["history_rows"] == 1  # the selected history row's answer
    assert doc["dock_options"] == ["paper", 0.25, None]
    from lrs_focus.engine import MAX_N_MAX

    assert doc["n_max_limits"] == [MAX_N_MAX, MAX_N_MAX]  # no N_max the backend refuses with bad_options
    assert doc["settings_endpoint"] == "tcp://127.0.0.1:5555"
