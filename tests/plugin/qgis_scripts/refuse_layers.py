"""Layers the backend cannot read are refused with a reason, and no task starts.

usage: refuse_layers.py RASTER
"""

import sys

from qgis_env import FakeIface, add_raster, emit, load_plugin, start_qgis

app = start_qgis()
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer  # noqa: E402

good = add_raster(sys.argv[1], "file raster")
wms = QgsRasterLayer(
    "contextualWMSLegend=0&crs=EPSG:4326&dpiMode=7&format=image/png&layers=osm&styles=&url=https://example.invalid/wms",
    "a WMS layer", "wms")
xyz = QgsRasterLayer("type=xyz&url=https://tile.example.invalid/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0", "xyz tiles", "wms")
memory = QgsVectorLayer("Polygon?crs=EPSG:4326", "a memory layer", "memory")
for lyr in (wms, xyz, memory):
    QgsProject.instance().addMapLayer(lyr)

from lrs_focus_plugin.raster_check import check_layer  # noqa: E402

iface = FakeIface()
plugin = load_plugin(iface)
combo_names = [plugin.dock.layer_combo.itemText(i) for i in range(plugin.dock.layer_combo.count())]
reasons = {lyr.name(): check_layer(lyr).reason for lyr in (wms, xyz, memory, good)}
# force the WMS layer into the dock (as if chosen) and press Ask
plugin.dock.layer_combo.currentLayer = lambda: wms
plugin.dock.question.setText("anything?")
plugin.dock.ask_button.click()
emit({
    "combo": combo_names,
    "reasons": reasons,
    "good_path": check_layer(good).path,
    "task_started": plugin.task is not None,
    "messages": iface.messages,
})
plugin.unload()
