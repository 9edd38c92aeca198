"""Shared set-up of the QGIS-side test scripts (run by /usr/bin/python3, not the venv).

Each script starts a headless QgsApplication, imports the plugin from the extracted zip (on
PYTHONPATH as `lrs_focus_plugin`), does its work, and prints ONE JSON line last on stdout for
the venv test to assert on.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer  # noqa: E402
from qgis.gui import QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow  # noqa: E402

_APP = None


def start_qgis(processing: bool = False):
    global _APP
    QgsApplication.setPrefixPath("/usr", True)
    _APP = QgsApplication([], True)  # GUI app (offscreen platform): the dock has widgets
    _APP.initQgis()
    if processing:
        from processing.core.Processing import Processing

        Processing.initialize()
    return _APP


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.02)
    QCoreApplication.processEvents()
    return predicate()


def add_raster(path: str, name: str = "raster") -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name, "gdal")
    assert layer.isValid(), f"QGIS cannot open {path}"
    QgsProject.instance().addMapLayer(layer)
    return layer


class FakeIface:
    """The few QgisInterface calls the plugin makes, on real widgets."""

    def __init__(self):
        self.window = QMainWindow()
        self.canvas = QgsMapCanvas(self.window)
        self.window.setCentralWidget(self.canvas)
        self.bar = QgsMessageBar(self.window)
        self.messages = []
        self.bar.widgetAdded.connect(self._record)
        self.active = None  # the "active layer" of the Layers panel

    def _record(self, _widget):
        item = self.bar.currentItem()
        if item is not None:
            self.messages.append(f"{item.title()}: {item.text()}")

    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar

    def activeLayer(self):  # noqa: N802
        return self.active

    def addDockWidget(self, area, dock):  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.window.removeDockWidget(dock)

    def addToolBarIcon(self, action):  # noqa: N802
        pass

    removeToolBarIcon = addToolBarIcon  # noqa: N815

    def addPluginToRasterMenu(self, menu, action):  # noqa: N802
        pass

    removePluginRasterMenu = addPluginToRasterMenu  # noqa: N815


def load_plugin(iface):
    import lrs_focus_plugin

    plugin = lrs_focus_plugin.classFactory(iface)
    plugin.initGui()
    return plugin


def ask_in_dock(plugin, layer, question: str):
    """Choose `layer`, type `question` and press Ask, as a user does; returns the started task."""
    plugin.dock.layer_combo.setLayer(layer)
    plugin.dock.question.setText(question)
    plugin.dock.ask_button.click()
    return plugin.task


def layer_tree(node) -> list[dict]:
    """The layer tree below `node`: groups (name, checked, expanded, children) and layers."""
    from qgis.core import QgsLayerTreeGroup, QgsRasterLayer, QgsVectorLayer

    out = []
    for child in node.children():
        if isinstance(child, QgsLayerTreeGroup):
            out.append({"group": child.name(), "checked": child.itemVisibilityChecked(),
                        "expanded": child.isExpanded(), "job_id": child.customProperty("lrs_focus/job_id"),
                        "children": layer_tree(child)})
            continue
        layer = child.layer()
        info = {"layer": layer.name(), "checked": child.itemVisibilityChecked(), "valid": layer.isValid(),
                "source": layer.source(), "crs": layer.crs().authid(), "crs_valid": layer.crs().isValid(),
                "extent": rect(layer.extent()), "renderer": layer.renderer().type() if layer.renderer() else None}
        if isinstance(layer, QgsVectorLayer):
            info["labels"] = layer.labelsEnabled()
            info["subset"] = layer.subsetString()
            info["features"] = [
                {"level": f["level"], "row": f["row"], "col": f["col"], "kept": bool(f["kept"]),
                 "focus_rank": _value(f["focus_rank"]), "window": [f[k] for k in ("x0", "y0", "x1", "y1")],
                 "bbox": bbox(f.geometry())}
                for f in layer.getFeatures()
            ]
        elif isinstance(layer, QgsRasterLayer):
            info["size"] = [layer.width(), layer.height()]
            info["legend"] = [text for text, _ in layer.legendSymbologyItems()]
        out.append(info)
    return out


def _value(v):
    return None if v is None or str(v) == "NULL" else v


def rect(r) -> list[float]:
    return [r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum()]


def bbox(geom) -> list[float]:
    r = geom.boundingBox()
    return [r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum()]


def emit(document: dict) -> None:
    sys.stdout.write("\n" + json.dumps(document) + "\n")
    sys.stdout.flush()
