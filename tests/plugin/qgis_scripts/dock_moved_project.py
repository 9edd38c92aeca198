"""Ask in a saved project, move the project's folder (with its results), reopen it there, Export.

usage: dock_moved_project.py ENDPOINT RASTER WORKDIR
"""

import os
import shutil
import sys

from qgis_env import FakeIface, add_raster, ask_in_dock, emit, load_plugin, start_qgis, wait_for

endpoint, raster, work = sys.argv[1:4]
app = start_qgis()
from qgis.core import QgsProject, QgsSettings  # noqa: E402
from qgis.PyQt.QtWidgets import QFileDialog  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
project = QgsProject.instance()
first, moved = os.path.join(work, "before"), os.path.join(work, "after")
os.makedirs(first)
layer = add_raster(raster)
assert project.write(os.path.join(first, "survey.qgz"))
iface = FakeIface()
plugin = load_plugin(iface)
ask_in_dock(plugin, layer, "Where is the river?")
wait_for(lambda: plugin.task is None, 120)
assert project.write()
project.clear()
shutil.move(first, moved)  # the user moves the project folder, results and all
assert project.read(os.path.join(moved, "survey.qgz"))
entry = plugin.dock.selected_entry()
out = {}
for ext in ("gpkg", "geojson"):
    target = os.path.join(work, f"export.{ext}")
    QFileDialog.getSaveFileName = staticmethod(lambda *_a, _t=target, **_k: (_t, ""))
    out[ext] = plugin.export_result(entry)
emit({
    "results": entry.results if entry else None,
    "heatmap": entry.heatmap if entry else None,
    "layers_valid": [lyr.isValid() for lyr in project.mapLayers().values()],
    "exports": out,
    "messages": iface.messages,
})
plugin.unload()
