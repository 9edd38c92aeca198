"""Qt6 smoke check, run by the venv's Python (PyQt6 from PyPI, no QGIS).

`qgis.PyQt.*` are mapped onto PyQt6 as QGIS 4 does (QAction in QtGui, not QtWidgets), and
`qgis.core` / `qgis.gui` are stubs: QObject-based classes whose unknown attributes are mocks,
with QgsDockWidget / QgsMapLayerComboBox on real Qt6 widgets. Then every plugin module is
imported and the dock, the settings dialog and the plugin's initGui run, so a Qt5-only enum
(Qt.RightDockWidgetArea), exec_() or a QtWidgets.QAction import fails here. Prints one JSON line.

usage: python qt6_smoke.py PLUGIN_ROOT
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import types
from unittest import mock

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PyQt6 import QtCore, QtGui, QtWidgets  # noqa: E402

META = type("StubMeta", (type(QtCore.QObject),), {"__getattr__": lambda cls, name: mock.MagicMock(name=name)})


def stub_class(name: str, base=QtCore.QObject, **members):
    def __init__(self, *args, **kwargs):  # noqa: N807
        base.__init__(self)

    def __getattr__(self, attr):  # noqa: N807
        return mock.MagicMock(name=f"{name}.{attr}")

    body = {"__init__": __init__, "__getattr__": __getattr__}
    body.update(members)
    return META(name, (base,), body)


class StubModule(types.ModuleType):
    def __init__(self, name: str, classes: dict):
        super().__init__(name)
        self.__dict__.update(classes)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = stub_class(name)
        setattr(self, name, cls)
        return cls


class DockWidget(QtWidgets.QDockWidget):
    def __init__(self, title="", parent=None):
        super().__init__(title, parent)

    def setToggleVisibilityAction(self, action):  # noqa: N802
        action.toggled.connect(self.setVisible)


class LayerCombo(QtWidgets.QComboBox):
    layerChanged = QtCore.pyqtSignal(object)  # noqa: N815

    def setFilters(self, filters):  # noqa: N802
        self.filters = filters

    def setExcludedProviders(self, providers):  # noqa: N802
        self.excluded = providers

    def currentLayer(self):  # noqa: N802
        return None


class Registry:
    @staticmethod
    def instance():
        return Registry()

    def providerList(self):  # noqa: N802
        return ["gdal", "wms", "memory", "ogr", "postgresraster"]


class Project:
    readProject = mock.MagicMock()  # noqa: N815
    cleared = mock.MagicMock()
    projectSaved = mock.MagicMock()  # noqa: N815

    @staticmethod
    def instance():
        return Project()

    def readEntry(self, scope, key, default=""):  # noqa: N802
        return default, False


class Settings:
    def value(self, key, default=None):
        return default

    def setValue(self, key, value):  # noqa: N802
        pass


def install_stubs() -> None:
    qgis = types.ModuleType("qgis")
    pyqt = types.ModuleType("qgis.PyQt")
    qgis.PyQt = pyqt
    from PyQt6 import sip

    pyqt.sip = sip  # qgis.PyQt.sip is PyQt6.sip in QGIS 4
    sys.modules.update({"qgis": qgis, "qgis.PyQt": pyqt, "qgis.PyQt.QtCore": QtCore, "qgis.PyQt.sip": sip,
                        "qgis.PyQt.QtGui": QtGui, "qgis.PyQt.QtWidgets": QtWidgets})
    core = StubModule("qgis.core", {"QgsProviderRegistry": Registry, "QgsSettings": Settings, "QgsProject": Project,
                                     "QgsTask": stub_class("QgsTask")})
    gui = StubModule("qgis.gui", {"QgsDockWidget": DockWidget, "QgsMapLayerComboBox": LayerCombo})
    qgis.core, qgis.gui = core, gui
    sys.modules.update({"qgis.core": core, "qgis.gui": gui})


def main(plugin_root: str) -> dict:
    install_stubs()
    sys.path.insert(0, plugin_root)
    app = QtWidgets.QApplication([])
    package = importlib.import_module("lrs_focus_plugin")
    imported = []
    for info in pkgutil.walk_packages(package.__path__, "lrs_focus_plugin."):
        importlib.import_module(info.name)
        imported.append(info.name)

    from lrs_focus_plugin.compat import qaction_class
    from lrs_focus_plugin.dock import AskDock
    from lrs_focus_plugin.history import HistoryEntry
    from lrs_focus_plugin.plugin import LrsFocusPlugin
    from lrs_focus_plugin.settings_dialog import SettingsDialog

    dock = AskDock(None)
    dock.show_running(True)
    dock.show_stage("encode (level 1)", 40)
    dock.show_answer("two ships")
    dock.show_history([HistoryEntry("q?", "a.", "/x.tif", "job", "2024-01-01T00:00:00", 1.0)])
    dock.history.setCurrentRow(0)
    dialog = SettingsDialog(None)
    window = QtWidgets.QMainWindow()
    iface = mock.MagicMock()
    iface.mainWindow.return_value = window
    iface.addDockWidget.side_effect = window.addDockWidget
    plugin = LrsFocusPlugin(iface)
    plugin.initGui()
    plugin.unload()
    return {
        "qt": QtCore.QT_VERSION_STR,
        "imported": sorted(imported),
        "qaction_module": qaction_class().__module__,
        "dock_answer": dock.answer.toPlainText(),
        "dock_options": [dock.options().mode, dock.options().alpha, dock.options().n_max],
        "n_max_limits": [dock.n_max.maximum(), dialog.n_max.maximum()],
        "history_rows": dock.history.count(),
        "settings_endpoint": dialog.backend().endpoint,
        "app": bool(app),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
