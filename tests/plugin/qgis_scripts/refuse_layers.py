"""Layers the backend cannot read are refused with a reason, and no task starts.

usage: refuse_layers.py RASTER WORKDIR
"""

import os
import sys
import zipfile

from qgis_env import FakeIface, add_raster, emit, load_plugin, start_qgis

app = start_qgis()
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer  # noqa: E402

good = add_raster(sys.argv[1], "file raster")
# file rasters `lrs-focus serve` does not open: a member of a zip, a GeoPackage raster, an ERDAS .img
from osgeo import gdal  # noqa: E402

work = sys.argv[2]
tif = gdal.Translate(os.path.join(work, "small.tif"), sys.argv[1], width=64, height=64, outputType=gdal.GDT_Byte,
                     scaleParams=[[]])
tif = None
with zipfile.ZipFile(os.path.join(work, "rasters.zip"), "w") as zf:
    zf.write(os.path.join(work, "small.tif"), "inner/small.tif")
gdal.Translate(os.path.join(work, "small.gpkg"), os.path.join(work, "small.tif"), format="GPKG",
               creationOptions=["RASTER_TABLE=scene"])
gdal.Translate(os.path.join(work, "small.img"), os.path.join(work, "small.tif"), format="HFA")
unserved = [add_raster("/vsizip/" + os.path.join(work, "rasters.zip") + "/inner/small.tif", "zipped"),
            add_raster(os.path.join(work, "small.gpkg"), "geopackage"),
            add_raster(f"GPKG:{os.path.join(work, 'small.gpkg')}:scene", "geopackage table"),
            add_raster(os.path.join(work, "small.img"), "erdas")]
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
reasons = {lyr.name(): check_layer(lyr).reason for lyr in (wms, xyz, memory, good, *unserved)}
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
