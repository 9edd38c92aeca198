"""Run INSIDE the full QGIS application (`qgis --code app_screenshot.py`, under xvfb-run).

The plugin was installed from the zip into a throw-away profile and enabled there. Depending on
LRS_SHOT_MODE this
- "answer": asks a question from the dock and waits for the result group;
- "processing": runs "Ask raster" with processing.runAndLoadResults (tiles + heatmap outputs);
- "nozmq": does nothing but look (QGIS was started with a Python path where pyzmq fails to import);
- "notices": the start-up health check fails (nothing at the configured endpoint), then a question
  to LRS_SHOT_LIVE is cancelled: which notices stay in the message bar;
- "progress": asks, holds the task's worker at the first progress message with overall >= 0.2 while
  the dock is read and shot (what a user sees at that moment), lets it finish; then asks about
  LRS_SHOT_BIG and presses Cancel at its first base-pass heartbeat: what the stage line says until the end;
then lets the canvas render, saves a PNG of the main window and a JSON report, and quits QGIS.

Arguments come from the environment: LRS_SHOT_MODE, LRS_SHOT_RASTER, LRS_SHOT_QUESTION,
LRS_SHOT_ENDPOINT, LRS_SHOT_PNG, LRS_SHOT_REPORT, LRS_SHOT_OUT (a folder for Processing outputs).
"""

import json
import os
import threading
import time

import qgis.utils
from qgis.core import QgsApplication, QgsLayerTreeGroup, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QDockWidget

MODE = os.environ.get("LRS_SHOT_MODE", "answer")
RASTER = os.environ["LRS_SHOT_RASTER"]
QUESTION = os.environ.get("LRS_SHOT_QUESTION", "")
PNG = os.environ["LRS_SHOT_PNG"]
REPORT = os.environ["LRS_SHOT_REPORT"]
iface = qgis.utils.iface
state = {"t0": time.monotonic(), "report": {"mode": MODE, "log": []}}
_timers = []


def _logged(message, tag, level):
    """Warnings and errors of every tab of Log Messages (QGIS's own transform errors included)."""
    if int(level) >= 1:
        state["report"]["log"].append(f"{tag}: {message}")


QgsApplication.messageLog().messageReceived.connect(_logged)


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


def bar_messages():
    bar = iface.messageBar()
    return [f"{item.title()}: {item.text()}" for item in bar.items()]


def start():
    plugin = qgis.utils.plugins.get("lrs_focus_plugin")
    report = state["report"]
    report["plugin_loaded"] = plugin is not None
    report["active_plugins"] = sorted(qgis.utils.active_plugins)
    if plugin is None:
        finish(error="plugin not loaded", messages=bar_messages())
        return
    window = iface.mainWindow()
    window.resize(1600, 1000)
    window.showMaximized()
    # the Layers panel (with the legend) gets the whole left column, wide enough for the names
    docks = {d.objectName(): d for d in window.findChildren(QDockWidget)}
    if "Browser" in docks:
        docks["Browser"].hide()
    if "Layers" in docks:
        window.resizeDocks([docks["Layers"]], [360], Qt.Orientation.Horizontal)
    layer = iface.addRasterLayer(RASTER, os.environ.get("LRS_SHOT_LAYER_NAME", "raster"))
    plugin.dock.show()
    plugin.dock.raise_()
    plugin.dock.layer_combo.setLayer(layer)
    plugin.dock.question.setText(QUESTION)
    state.update(plugin=plugin, layer=layer)
    report["backend_on_show"] = plugin.dock.backend.text()  # the health check started when the dock showed
    if MODE in ("answer", "big", "nocrs"):
        plugin.dock.ask_button.click()
        later(250, wait_answer)
    elif MODE == "notices":
        later(4000, ask_and_cancel)
    elif MODE == "processing":
        later(1500, run_processing)
    elif MODE == "progress":
        ask_and_hold()
    else:
        report["backend_on_show"] = plugin.dock.backend.text()
        report["dependency_note"] = plugin.dock.dependency_note.text() if plugin.dock.dependency_note.isVisible() else ""
        report["ask_enabled"] = plugin.dock.ask_button.isEnabled()
        later(2000, shoot)


def wait_answer():
    plugin = state["plugin"]
    if plugin.task is not None and time.monotonic() - state["t0"] < 150:
        later(250, wait_answer)
        return
    report = state["report"]
    report["answer"] = plugin.dock.answer.toPlainText()
    report["stage"] = plugin.dock.stage.text()
    report["groups"] = [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups()]
    report["legend"] = legend_texts()
    report["dock_width"] = plugin.dock.width()
    if MODE == "nocrs":
        report.update(placement())
    iface.mapCanvas().refreshAllLayers()
    later(3000, shoot)


def placement():
    """Where the answer's layers are, next to the raster, and in which CRS each is drawn."""
    layer = state["layer"]

    def box(rect):
        return [rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()]

    results = state["plugin"].last_layers
    note = getattr(state["plugin"].dock, "crs_note", None)
    return {"raster_extent": box(layer.extent()), "raster_crs": layer.crs().authid() or layer.crs().toWkt(),
            "project_crs": QgsProject.instance().crs().authid(),
            "canvas_crs": iface.mapCanvas().mapSettings().destinationCrs().authid(),
            "results": [{"name": lyr.name(), "extent": box(lyr.extent()), "crs_valid": lyr.crs().isValid()}
                        for lyr in results],
            "canvas_extent": box(iface.mapCanvas().extent()), "crs_note": note.text() if note is not None and not note.isHidden() else ""}


def ask_and_cancel():
    from qgis.core import QgsSettings

    plugin = state["plugin"]
    report = state["report"]
    report["backend_after_failed_check"] = plugin.dock.backend.text()
    report["bar_after_failed_check"] = bar_messages()
    QgsSettings().setValue("lrs_focus/endpoint", os.environ["LRS_SHOT_LIVE"])

    def on_stage(stage, _text):
        if stage == "queued" and not state.get("cancelled"):
            state["cancelled"] = True
            plugin.dock.cancel_button.click()

    plugin.dock.ask_button.click()
    plugin.task.stageChanged.connect(on_stage)
    later(250, wait_cancel)


def wait_cancel():
    plugin = state["plugin"]
    if plugin.task is not None and time.monotonic() - state["t0"] < 150:
        later(250, wait_cancel)
        return
    state["report"]["stage"] = plugin.dock.stage.text()
    later(2500, shoot)


def hold_progress(hold):
    """Every AskTask delivers its progress messages, then calls `hold(stage, level, fraction, message,
    overall)` in its worker thread. Patched on the class before Ask is pressed: the worker may reach
    the ask before an attribute of the task could be set."""
    from lrs_focus_plugin.ask_task import AskTask

    deliver = state.setdefault("deliver", AskTask._on_progress)

    def held(task, stage, level, fraction, message, overall=None):
        deliver(task, stage, level, fraction, message, overall)
        hold(stage, level, fraction, message, overall)

    AskTask._on_progress = held


def ask_and_hold():
    """The worker thread waits at one real message until the main thread has read the dock."""
    plugin, report = state["plugin"], state["report"]
    resume = threading.Event()
    report["bar_values"] = []

    def hold(stage, level, fraction, message, overall):
        if overall is not None and overall >= 0.2 and "held" not in state:
            state["held"] = {"stage": stage, "level": level, "message": message, "overall": overall}
            resume.wait(20)

    hold_progress(hold)
    plugin.dock.ask_button.click()
    task = plugin.task
    task.progressChanged.connect(lambda _p: report["bar_values"].append(plugin.dock.progress.value()))

    def look():
        if "held" not in state and plugin.task is not None:
            later(50, look)
            return
        if "held" in state and not state.get("settled"):
            state["settled"] = True  # the signals the worker emitted before it stopped: delivered in 300 ms
            later(300, look)
            return
        if "held" in state:
            dock = plugin.dock
            report["held"] = dict(state["held"], bar=dock.progress.value(), bar_text=dock.progress.text(),
                                  stage_line=dock.stage.text())
            shoot_window("held")
        resume.set()
        later(250, wait_then_cancel_big)

    later(50, look)


def wait_then_cancel_big():
    plugin, report = state["plugin"], state["report"]
    if plugin.task is not None and time.monotonic() - state["t0"] < 150:
        later(250, wait_then_cancel_big)
        return
    report["answer"] = plugin.dock.answer.toPlainText()
    report["stage_after_answer"] = plugin.dock.stage.text()
    big = iface.addRasterLayer(os.environ["LRS_SHOT_BIG"], "large raster")
    plugin.dock.layer_combo.setLayer(big)
    report.update(lines_after_cancel=[], task_progress_after_cancel=[], worker_messages_after_cancel=0)
    resume = threading.Event()

    def reading(message):  # a heartbeat of the base pass: more come every 0.5 s while it reads
        return message.startswith("reading the raster")

    def hold(stage, level, fraction, message, overall):
        """The first heartbeat of the base pass waits until Cancel was pressed and 2 s more: the
        backend's messages of that time queue up, as they are on their way when a user presses Cancel."""
        if resume.is_set():
            report["worker_messages_after_cancel"] += 1
        elif reading(message):
            state["cancel_hold_t"] = time.monotonic()
            resume.wait(20)

    hold_progress(hold)
    plugin.dock.ask_button.click()
    task = plugin.task

    def on_stage(_stage, text):
        dock = plugin.dock
        if "cancel_at" not in report and reading(text):
            state["cancel_t"] = time.monotonic()
            dock.cancel_button.click()
            report["cancel_at"] = {"bar": dock.progress.value(), "line": dock.stage.text(),
                                   "cancel_enabled": dock.cancel_button.isEnabled()}
            later(30, lambda: shoot_window("cancelling"))
            later(2000, resume.set)

    task.stageChanged.connect(on_stage)  # after the plugin's own slot: the dock is updated
    later(250, wait_cancelled)


def wait_cancelled():
    plugin = state["plugin"]
    if plugin.task is not None and time.monotonic() - state["t0"] < 150:
        if "cancel_at" in state["report"]:  # what the dock and QGIS's task bar show meanwhile
            state["report"]["lines_after_cancel"].append(plugin.dock.stage.text())
            state["report"]["task_progress_after_cancel"].append(plugin.task.progress())
        later(250, wait_cancelled)
        return
    report = state["report"]
    report["stage"] = plugin.dock.stage.text()
    report["bar_after_cancel"] = plugin.dock.progress.value()
    report["cancel_seconds"] = time.monotonic() - state.get("cancel_t", time.monotonic())
    report["worker_held"] = "cancel_hold_t" in state
    later(1000, shoot)


def shoot_window(name):
    """An extra PNG of the main window in LRS_SHOT_OUT (the test keeps them with LRS_FOCUS_SCREENSHOTS)."""
    iface.mainWindow().grab().save(os.path.join(os.environ["LRS_SHOT_OUT"], f"{name}.png"))


def run_processing():
    import processing

    out = os.environ["LRS_SHOT_OUT"]
    layer = state["layer"]
    iface.layerTreeView().collapseAllNodes()
    results = processing.runAndLoadResults("lrsfocus:askraster", {
        "INPUT": layer, "QUESTION": QUESTION, "MODE": 0, "ALPHA": 0.25, "N_MAX": 0,
        "ENDPOINT": os.environ["LRS_SHOT_ENDPOINT"], "OUTPUT": os.path.join(out, "focus.gpkg"),
        "HEATMAP": os.path.join(out, "heatmap.tif"),
    })
    report = state["report"]
    report["answer"] = results.get("ANSWER")
    report["backend_after_check"] = state["plugin"].dock.backend.text()
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.id() != layer.id()]
    report["loaded"] = [{"name": lyr.name(), "renderer": lyr.renderer().type() if lyr.renderer() else None,
                         "labels": bool(getattr(lyr, "labelsEnabled", lambda: False)())} for lyr in loaded]
    report["order"] = [node.name() for node in QgsProject.instance().layerTreeRoot().children()]
    view = iface.layerTreeView()
    for node in QgsProject.instance().layerTreeRoot().findLayers():
        node.setExpanded(node.layer().id() != layer.id())
    view.refreshLayerSymbology(layer.id())
    vectors = [lyr for lyr in loaded if isinstance(lyr, QgsVectorLayer)]
    if vectors:
        iface.mapCanvas().setExtent(vectors[0].extent().buffered(vectors[0].extent().width() * 0.05))
    iface.mapCanvas().refreshAllLayers()
    later(3000, shoot)


def legend_texts():
    """What the Layers panel writes under each visible layer of the newest answer."""
    model = iface.layerTreeView().layerTreeModel()
    out = {}
    root = QgsProject.instance().layerTreeRoot()
    groups = [g for g in root.children() if isinstance(g, QgsLayerTreeGroup)]
    if not groups:
        return out
    for node in groups[0].findLayers():
        out[node.name()] = [str(n.data(Qt.ItemDataRole.DisplayRole)) for n in model.layerLegendNodes(node)]
    return out


def tree_view_state():
    """What the Layers panel shows: each group's expanded state in the view itself."""
    view = iface.layerTreeView()
    out = []
    for node in QgsProject.instance().layerTreeRoot().children():
        if isinstance(node, QgsLayerTreeGroup):
            index = view.node2index(node)
            out.append({"group": node.name(), "view_expanded": view.isExpanded(index),
                        "checked": node.itemVisibilityChecked()})
    return out


def shoot():
    window = iface.mainWindow()
    window.grab().save(PNG)
    image = iface.mapCanvas().grab().toImage()
    warm = cyan = total = 0
    for y in range(0, image.height(), 4):
        for x in range(0, image.width(), 4):
            c = image.pixelColor(x, y)
            total += 1
            warm += c.red() > c.green() + 40 and c.blue() > c.green() + 20  # the heatmap's pink to purple
            cyan += c.blue() > c.red() + 100 and c.green() > c.red() + 100
    bar = iface.messageBar().currentItem()
    finish(png=PNG, canvas_warm=warm / max(total, 1), canvas_cyan=cyan / max(total, 1),
           width=window.width(), height=window.height(), tree=tree_view_state(), messages=bar_messages(),
           bar_top=f"{bar.title()}: {bar.text()}" if bar is not None else "")


later(1500, start)
