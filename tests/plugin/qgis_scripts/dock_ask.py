"""Ask through the plugin's dock (Ask button) and report the layers it added.

usage: dock_ask.py ENDPOINT RASTER QUESTION [TIMEOUT_S]
"""

import sys
import time

from qgis_env import FakeIface, add_raster, bbox, emit, load_plugin, start_qgis, wait_for

endpoint, raster, question = sys.argv[1:4]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
app = start_qgis()

from qgis.core import QgsGeometry, QgsProject, QgsSettings  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
dock = plugin.dock
dock.layer_combo.setLayer(layer)
dock.question.setText(question)
captured = {}
started = time.monotonic()
dock.ask_button.click()
task = plugin.task
task.answered.connect(lambda result, layers: captured.update(result=result))
task.failed.connect(lambda code, message: captured.update(error=[code, message]))
stages = []
task.stageChanged.connect(lambda stage, text: stages.append(stage))
finished = wait_for(lambda: plugin.task is None, timeout)
elapsed = time.monotonic() - started

root = QgsProject.instance().layerTreeRoot()
groups = []
for group in root.findGroups():
    layers = []
    for node in group.findLayers():
        vl = node.layer()
        feats = [
            {"level": f["level"], "row": f["row"], "col": f["col"], "kept": bool(f["kept"]),
             "rank": f["rank"] if f["rank"] is not None and str(f["rank"]) != "NULL" else None,
             "bbox": bbox(f.geometry())}
            for f in vl.getFeatures()
        ]
        layers.append({"name": vl.name(), "crs": vl.crs().authid(), "crs_valid": vl.crs().isValid(),
                       "same_crs_as_raster": vl.crs() == layer.crs(), "features": feats,
                       "renderer": vl.renderer().type(), "labels": vl.labelsEnabled()})
    groups.append({"name": group.name(), "layers": layers})

expected = []
result = captured.get("result") or {}
for f in (result.get("features") or {}).get("features", []):
    p = f["properties"]
    if p.get("encoded") or p.get("kept"):
        ring = f["geometry"]["coordinates"][0]
        xs, ys = [c[0] for c in ring], [c[1] for c in ring]
        expected.append({"level": p["level"], "row": p["row"], "col": p["col"], "kept": p["kept"],
                         "rank": p.get("rank"), "bbox": [min(xs), min(ys), max(xs), max(ys)]})
ext = layer.extent()
canvas = iface.canvas.extent()
emit({
    "finished": finished,
    "seconds": elapsed,
    "error": captured.get("error"),
    "answer_in_dock": dock.answer.toPlainText(),
    "answer": result.get("answer"),
    "job_id": result.get("job_id"),
    "stages": stages,
    "groups": groups,
    "expected": expected,
    "raster_crs": layer.crs().authid(),
    "raster_extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
    "canvas_extent": [canvas.xMinimum(), canvas.yMinimum(), canvas.xMaximum(), canvas.yMaximum()],
    "history": [dock.history.item(i).text() for i in range(dock.history.count())],
    "messages": iface.messages,
})
plugin.unload()
