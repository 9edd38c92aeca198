"""Ask through the dock in a saved project, start a new project while the job runs.

The answer must not land in the new project (no group, no history entry); it stays filed in the
first project's GeoPackage and a message says where.

usage: dock_project_closed.py ENDPOINT RASTER WORKDIR
"""

import os
import sys

from qgis_env import FakeIface, add_raster, ask_in_dock, emit, load_plugin, start_qgis, wait_for

endpoint, raster, work = sys.argv[1:4]
app = start_qgis()
from qgis.core import QgsProject, QgsSettings  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
project = QgsProject.instance()
layer = add_raster(raster)
assert project.write(os.path.join(work, "first.qgz"))
iface = FakeIface()
plugin = load_plugin(iface)
task = ask_in_dock(plugin, layer, "Where is the river?")
state = {"stages": []}


def on_stage(stage, _text):
    state["stages"].append(stage)
    if stage == "queued" and "cleared" not in state:
        state["cleared"] = True
        project.clear()  # Project > New while the backend works


task.stageChanged.connect(on_stage)
task.answered.connect(lambda result, layers: state.update(answered=True, layers=len(layers)))
task.failed.connect(lambda code, message: state.update(error=[code, message]))
finished = wait_for(lambda: plugin.task is None, 120)
wait_for(lambda: False, 1.0)  # the message is posted after QGIS's task notice
from lrs_focus_plugin import history  # noqa: E402

emit({
    "finished": finished,
    "cleared": state.get("cleared", False),
    "answered": state.get("answered", False),
    "error": state.get("error"),
    "layers": state.get("layers"),
    "groups": [g.name() for g in project.layerTreeRoot().findGroups()],
    "map_layers": len(project.mapLayers()),
    "history": len(history.load()),
    "filed": task.stored.gpkg_path if task.stored else None,
    "dock_answer": plugin.dock.answer.toPlainText(),
    "dock_stage": plugin.dock.stage.text(),
    "messages": iface.messages,
})
plugin.unload()
