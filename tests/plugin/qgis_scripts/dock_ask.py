"""Ask through the plugin's dock (Ask button), then report the layer tree and what the result holds.

usage: dock_ask.py ENDPOINT RASTER QUESTION [TIMEOUT_S] [ASKS] [PROJECT_FILE]

ASKS questions are asked one after the other (the tree then shows how earlier answers are hidden).
With PROJECT_FILE the project is saved there before the asks (so answers are filed beside it) and
after them, cleared, and read back; the tree after reopening is reported too (results must survive).
"""

import os
import sys
import time

from qgis_env import FakeIface, add_raster, emit, layer_tree, load_plugin, rect, start_qgis, wait_for

endpoint, raster, question = sys.argv[1:4]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
asks = int(sys.argv[5]) if len(sys.argv) > 5 else 1
project_file = sys.argv[6] if len(sys.argv) > 6 else ""
app = start_qgis()

from qgis.core import QgsProject, QgsRectangle, QgsSettings  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
QgsSettings().setValue("lrs_focus/results_dir", os.environ.get("LRS_TEST_RESULTS_DIR", ""))
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
dock = plugin.dock
dock.layer_combo.setLayer(layer)
if project_file:  # a saved project: its answers are filed beside it
    QgsProject.instance().write(project_file)
runs = []
for i in range(asks):
    dock.question.setText(question if i == 0 else f"{question} ({i + 1})")
    captured = {"progress": []}
    started = time.monotonic()
    dock.ask_button.click()
    task = plugin.task
    task.answered.connect(lambda result, layers: captured.update(result=result))
    task.failed.connect(lambda code, message: captured.update(error=[code, message]))
    task.progressChanged.connect(lambda p: captured["progress"].append(p))
    stages = []
    task.stageChanged.connect(lambda stage, text: stages.append(stage))
    finished = wait_for(lambda: plugin.task is None, timeout)
    wait_for(lambda: False, 0.6)  # let the deferred message-bar notice arrive
    result = captured.get("result") or {}
    runs.append({
        "finished": finished, "seconds": time.monotonic() - started, "error": captured.get("error"),
        "answer": result.get("answer"), "job_id": result.get("job_id"), "stages": stages,
        "progress": captured["progress"], "features": (result.get("features") or {}).get("features", []),
        "heatmap": {k: v for k, v in (result.get("heatmap") or {}).items() if k != "data"},
        "stopped_at": (result.get("trace") or {}).get("stopped_at"),
        "answer_in_dock": dock.answer.toPlainText(),
    })

# Export... of the selected (latest) answer, with the file dialog answered by the script
from qgis.PyQt import QtWidgets  # noqa: E402

exports, messages_after_asks = {}, list(iface.messages)
if project_file:
    for suffix in ("gpkg", "geojson"):
        target = project_file.rsplit(".", 1)[0] + f"_export.{suffix}"
        QtWidgets.QFileDialog.getSaveFileName = staticmethod(lambda *a, _t=target, **k: (_t, ""))
        exports[suffix] = plugin.export_result(dock.selected_entry())

report = {
    "exports": exports,
    "tooltips": {name: getattr(dock, name).toolTip() for name in ("mode", "alpha", "n_max", "bands", "area")},
    "runs": runs,
    "tree": layer_tree(QgsProject.instance().layerTreeRoot()),
    "raster_crs": layer.crs().authid(),
    "raster_extent": rect(layer.extent()),
    "canvas_extent": rect(iface.canvas.extent()),
    "history": [dock.history.item(i).text() for i in range(dock.history.count())],
    "backend_label": dock.backend.text(),
    "crs_note": dock.crs_note.text() if not dock.crs_note.isHidden() else "",
    "messages": messages_after_asks,
    "export_messages": iface.messages[len(messages_after_asks):],
}
if not layer.crs().isValid():  # the user gives the layer a CRS: the dock's no-CRS line goes
    from qgis.core import QgsCoordinateReferenceSystem  # noqa: E402

    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:32633"))
    report["crs_note_after_crs_set"] = dock.crs_note.text() if not dock.crs_note.isHidden() else ""
    layer.setCrs(QgsCoordinateReferenceSystem())
if project_file:
    QgsProject.instance().write(project_file)
    QgsProject.instance().clear()
    report["zoom_enabled_after_clear"] = dock.zoom_button.isEnabled()
    QgsProject.instance().read(project_file)
    report["reopened_tree"] = layer_tree(QgsProject.instance().layerTreeRoot())
    report["history_after_reopen"] = [dock.history.item(i).text() for i in range(dock.history.count())]
    report["zoom_enabled_after_reopen"] = dock.zoom_button.isEnabled()
    x0, y0, x1, y1 = report["raster_extent"]  # the layer object itself went with the cleared project
    iface.canvas.setExtent(QgsRectangle(x0, y0, x1, y1).buffered(3 * (x1 - x0)))
    dock.zoom_button.click()
    report["canvas_extent_after_reopen_zoom"] = rect(iface.canvas.extent())
emit(report)
plugin.unload()
