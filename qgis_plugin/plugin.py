"""The plugin object QGIS loads: wires the dock, the ask task, messages and history.

Nothing heavy happens here: it holds at most one running AskTask (a Python reference is kept
until `finished`, so the task cannot be garbage-collected while QGIS still runs it) and the
backend process it started, if any.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

from qgis.core import QgsApplication, QgsCoordinateTransform, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from . import history, settings
from .backend_process import BackendLauncher
from .compat import qaction_class
from .log import notify
from .params import AskRequest
from .raster_check import check_layer

MENU = "&LRS Focus"
ICON = os.path.join(os.path.dirname(__file__), "icon.svg")

#: Appended to answers of a backend started with `--model tiny`, so nobody mistakes noise for a prediction.
RANDOM_WEIGHTS_NOTE = "[random-weight test model: this answer is noise]"


class LrsFocusPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.provider = None
        self.actions: list = []
        self.launcher = BackendLauncher()
        self.task = None
        self.last_layers: list = []

    # -- QGIS plugin API ----------------------------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802
        from .algorithms.provider import LrsFocusProvider

        self.provider = LrsFocusProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        from .dock import AskDock

        self.initProcessing()
        QAction = qaction_class()  # noqa: N806
        window = self.iface.mainWindow()
        show = QAction(QIcon(ICON), "Ask a raster (LRS Focus)", window)
        show.setObjectName("lrsFocusShowDock")
        show.setCheckable(True)
        configure = QAction("LRS Focus settings...", window)
        configure.setObjectName("lrsFocusSettings")
        self.actions = [show, configure]
        self.iface.addToolBarIcon(show)
        for action in self.actions:
            self.iface.addPluginToRasterMenu(MENU, action)

        self.dock = AskDock(window)
        self.dock.set_options(settings.load_options())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.setToggleVisibilityAction(show)
        self.dock.askRequested.connect(self.ask)
        self.dock.cancelRequested.connect(self.cancel)
        self.dock.zoomRequested.connect(self.zoom_to_focus)
        self.dock.settingsRequested.connect(self.open_settings)
        configure.triggered.connect(self.open_settings)
        project = QgsProject.instance()
        project.readProject.connect(self._refresh_history)
        project.cleared.connect(self._refresh_history)
        self._refresh_history()

    def unload(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        project = QgsProject.instance()
        for signal in (project.readProject, project.cleared):
            try:
                signal.disconnect(self._refresh_history)
            except TypeError:
                pass
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        self.launcher.stop()

    # -- actions ------------------------------------------------------------------------------
    def ask(self) -> Optional[object]:
        """Start an AskTask for the dock's layer and question; returns the task (or None)."""
        from .ask_task import AskTask

        if self.task is not None:
            notify(self.iface, "A question is already running: wait for it or press Cancel.", "warning")
            return None
        layer = self.dock.layer_combo.currentLayer()
        check = check_layer(layer)
        if not check.ok:
            notify(self.iface, check.reason, "warning")
            return None
        question = self.dock.question.text().strip()
        if not question:
            notify(self.iface, "Type a question first.", "warning")
            return None
        request = AskRequest(check.path, question, self.dock.options(), layer.name())
        task = AskTask(request, settings.load_backend(), layer.crs(), self.launcher)
        task.stageChanged.connect(lambda _stage, text: self.dock.show_stage(text, task.progress()))
        task.progressChanged.connect(lambda p: self.dock.show_stage(self.dock.stage.text(), p))
        task.answered.connect(lambda result, layers: self._answered(task, result, layers))
        task.failed.connect(lambda code, message: self._failed(code, message))
        self.task = task
        self.dock.show_running(True)
        self.dock.show_stage(f"asking about '{layer.name()}'", 0)
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        if self.task is not None:
            self.dock.show_stage("cancelling...")
            self.task.cancel()

    def _answered(self, task, result: dict, layers: list) -> None:
        self.task = None
        if self.dock is None:  # unloaded while the task ran
            return
        self.last_layers = layers
        answer = str(result.get("answer", ""))
        if (result.get("model") or {}).get("random_weights"):
            answer += f" {RANDOM_WEIGHTS_NOTE}"
        self.dock.show_running(False)
        self.dock.show_answer(answer)
        counts = result.get("counts") or {}
        self.dock.show_stage(
            f"done in {task.seconds:.1f} s: {counts.get('tiles_encoded', '?')} tiles encoded, "
            f"{counts.get('llm_vision_tokens', '?')} vision tokens to the LLM"
        )
        history.append(
            history.HistoryEntry(
                question=task.request.question,
                answer=answer,
                raster=task.request.raster_path,
                job_id=str(result.get("job_id", "")),
                when=datetime.datetime.now().isoformat(timespec="seconds"),
                seconds=round(task.seconds, 2),
            )
        )
        self._refresh_history()
        notify(self.iface, f"Answer: {answer}", "success", duration=5)
        if layers:
            self.zoom_to_focus()

    def _failed(self, code: str, message: str) -> None:
        self.task = None
        if self.dock is None:
            return
        self.dock.show_running(False)
        if code == "cancelled":
            self.dock.show_stage("cancelled", 0)
            notify(self.iface, "Question cancelled.", "info", duration=4)
        else:
            self.dock.show_stage(f"failed [{code}]: {message}", 0)
            notify(self.iface, f"[{code}] {message}", "critical", duration=15)

    def zoom_to_focus(self) -> None:
        from .result_layers import focus_extent

        layers = [layer for layer in self.last_layers if _alive(layer)]
        if not layers:
            return
        extent = focus_extent(layers)
        canvas = self.iface.mapCanvas()
        source, target = layers[0].crs(), canvas.mapSettings().destinationCrs()
        if source.isValid() and target.isValid() and source != target:
            extent = QgsCoordinateTransform(source, target, QgsProject.instance()).transformBoundingBox(extent)
        margin = max(extent.width(), extent.height()) * 0.15
        canvas.setExtent(extent.buffered(margin))
        canvas.refresh()

    def open_settings(self) -> None:
        from .settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.iface.mainWindow())
        if dialog.exec():
            self.dock.set_options(settings.load_options())

    def _refresh_history(self, *_) -> None:
        if self.dock is not None:
            self.dock.show_history(history.load())


def _alive(layer) -> bool:
    """False for layers the user removed (their C++ object is gone)."""
    try:
        return layer.isValid() and QgsProject.instance().mapLayer(layer.id()) is not None
    except RuntimeError:
        return False
