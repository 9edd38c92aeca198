"""The dock on a laptop screen, a drawn area, a small raster, and a project saved for the first
time, copied and reopened elsewhere.

usage: draw_save_copy.py ENDPOINT WORKDIR
WORKDIR/first/ holds scene.tif (UTM 18N) and small.tif: the project is saved there after two
answers asked while it was unsaved (a drawn rectangle on scene.tif; the whole of small.tif),
then the folder is copied to WORKDIR/copy/, the original renamed away and the copy opened.
"""

import os
import shutil
import sys

from qgis_env import FakeIface, add_raster, ask_in_dock, emit, load_plugin, rect, start_qgis, wait_for

endpoint, work = sys.argv[1:3]
app = start_qgis()
from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProject,
    QgsProjectBadLayerHandler,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt  # noqa: E402
from qgis.PyQt.QtWidgets import QLabel  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
project = QgsProject.instance()
first, copy = os.path.join(work, "first"), os.path.join(work, "copy")
scene = add_raster(os.path.join(first, "scene.tif"), "scene")
small = add_raster(os.path.join(first, "small.tif"), "small")
iface = FakeIface()
plugin = load_plugin(iface)
dock = plugin.dock
report = {}

# -- a 1366 x 768 laptop: the dock at its narrowest --------------------------------------------
plugin.check_backend()
wait_for(lambda: plugin.health_task is None, 30)
window = iface.window
window.resize(1366, 768)
window.show()
window.resizeDocks([dock], [1], Qt.Orientation.Horizontal)  # as narrow as the dock lets itself be
wait_for(lambda: False, 0.5)
labels = [w for w in dock.findChildren(QLabel) if w.isVisible() and w.wordWrap() and w.text()]
report["dock"] = {
    "minimum_width": dock.minimumSizeHint().width(),
    "width": dock.width(),
    "map_width": iface.canvas.width(),
    "backend_text": dock.backend.text(),
    "clipped": [w.text()[:60] for w in labels if w.height() < w.heightForWidth(w.width())],
    "backend_height": [dock.backend.height(), dock.backend.heightForWidth(dock.backend.width())],
}

# -- a drawn rectangle, in the canvas CRS ------------------------------------------------------
canvas = iface.canvas
canvas.setDestinationCrs(scene.crs())
canvas.setExtent(scene.extent())
e = scene.extent()
drawn = QgsRectangle(e.xMinimum() + 0.1 * e.width(), e.yMinimum() + 0.3 * e.height(),
                     e.xMinimum() + 0.6 * e.width(), e.yMinimum() + 0.9 * e.height())
plugin.area_picker.draw()
plugin.area_picker.tool.extentChanged.emit(drawn)
band = plugin.area_picker.band
report["drawn"] = {"rect": rect(drawn), "band": rect(band.asGeometry().boundingBox()) if band else None,
                   "band_visible": bool(band and band.isVisible()), "note": dock.area_note.text(),
                   "area_choice": dock.area_choice()}
ask_in_dock(plugin, scene, "Where is the field?")
wait_for(lambda: plugin.task is None, 180)
root = project.layerTreeRoot()
group = root.children()[0]
names = [n.name() for n in group.children()]
area = [n.layer() for n in group.findLayers() if n.layer().name() == "asked area"]
report["drawn"].update(names=names, band_after_answer=bool(plugin.area_picker.band and plugin.area_picker.band.isVisible()),
                       area_extent=rect(area[0].extent()) if area else None,
                       area_window=[f[k] for f in area[0].getFeatures() for k in ("x0", "y0", "x1", "y1")] if area else None)

# -- a raster small enough to be seen whole ----------------------------------------------------
dock.area.setCurrentText("whole raster")
report["drawn"]["band_hidden_for_whole"] = not plugin.area_picker.band.isVisible()
dock.alpha.setValue(1.0)  # keep every scored token: nothing is pruned, as on a raster of a tile or two
ask_in_dock(plugin, small, "What is in the picture?")
wait_for(lambda: plugin.task is None, 180)
group = root.children()[0]
focus = group.findLayers()[0].layer()
report["small"] = {"names": [n.name() for n in group.children()], "focus": focus.name(),
                   "labels": focus.labelsEnabled(), "stage": dock.stage.text(), "features": focus.featureCount()}

# -- first save: the answers move from the profile into the project's GeoPackage --------------
def sources():
    return sorted({lyr.source().split("|")[0] for lyr in project.mapLayers().values() if lyr not in (scene, small)})


report["before_save"] = sources()
unsaved = os.path.join(QgsApplication.qgisSettingsDirPath(), "lrs_focus", "unsaved_project_lrs_focus.gpkg")
assert project.write(os.path.join(first, "survey.qgz"))
wait_for(lambda: False, 1.0)  # the plugin writes the project once more, naming the moved files
report["after_save"] = sources()
from osgeo import ogr  # noqa: E402

ds = ogr.Open(unsaved)
report["left_in_profile"] = [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] if ds else []
ds = None
import zipfile  # noqa: E402

with zipfile.ZipFile(os.path.join(first, "survey.qgz")) as archive:
    qgs = [archive.read(n) for n in archive.namelist() if n.endswith(".qgs")][0]
report["saved_names_profile"] = b"unsaved_project" in qgs
report["saved_names_own"] = b"survey_lrs_focus.gpkg" in qgs

# -- copy the folder, take the original away, open the copy ------------------------------------
shutil.copytree(first, copy)
shutil.move(first, first + "_gone")
project.clear()


class BadLayers(QgsProjectBadLayerHandler):
    def __init__(self):
        super().__init__()
        self.seen = []

    def handleBadLayers(self, layers):  # noqa: N802 ("Handle Unavailable Layers")
        self.seen += [node.toElement().firstChildElement("datasource").text() for node in layers]


handler = BadLayers()
project.setBadLayerHandler(handler)
report["reopened"] = project.read(os.path.join(copy, "survey.qgz"))
report["bad_layers"] = handler.seen
report["reopened_layers"] = {lyr.name(): [lyr.isValid(), lyr.source().split("|")[0],
                                          lyr.featureCount() if isinstance(lyr, QgsVectorLayer) else None]
                             for lyr in project.mapLayers().values()}
report["history"] = [(e.results, e.heatmap) for e in __import__("lrs_focus_plugin.history", fromlist=["load"]).load()]
report["messages"] = iface.messages
emit(report)
plugin.unload()
