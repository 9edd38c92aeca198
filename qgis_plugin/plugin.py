"""The plugin object QGIS loads: wires the dock, the ask task, messages, history, export and the map tool.

Nothing heavy happens here: it holds at most one running AskTask (a Python reference is kept
until `finished`, so the task cannot be garbage-collected while QGIS still runs it) and the
backend process it started, if any. pyzmq is never imported at load: without it the plugin
still loads and the dock says how to install it.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Optional

from qgis.core import QgsApplication, QgsCoordinateTransform, QgsProject
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QIcon

from . import history, settings
from .backend_process import BackendLauncher
from .compat import qaction_class
from .deps import missing_zmq_text, zmq_problem
from .display_text import clean_text
from .area_picker import AreaPicker
from .log import log, notify, notify_after_task_notice
from .project_results import ProjectResults, restore_last_result

MENU = "&LRS Focus"
ICON = os.path.join(os.path.dirname(__file__), "icon.svg")

#: Appended to answers of a backend started with `--model tiny`, so nobody mistakes noise for a prediction.
RANDOM_WEIGHTS_NOTE = "[random-weight test model: this answer is noise]"
#: Error codes that mean the backend itself is gone (the dock's Backend line then says so).
BACKEND_GONE = ("timeout", "backend_exited", "backend_start_failed", "bad_endpoint", "shutting_down")


class LrsFocusPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.provider = None
        self.actions: list = []
        self.launcher = BackendLauncher()
        self.task = None
        self.health_task = None
        self.last_layers: list = []
        self.area_picker = AreaPicker(iface, lambda: self.dock)
        self.results = ProjectResults(iface, self._refresh_history)
        self.watched_layer = None
        self.zmq_problem: Optional[str] = None
        self.backend_checked = False

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
        # connected before the dock is added: after "Install from ZIP" QGIS is already on screen,
        # so the dock becomes visible inside addDockWidget
        self.dock.visibilityChanged.connect(self._dock_shown)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.setToggleVisibilityAction(show)
        self.dock.askRequested.connect(self.ask)
        self.dock.cancelRequested.connect(self.cancel)
        self.dock.zoomRequested.connect(self.zoom_to_focus)
        self.dock.settingsRequested.connect(self.open_settings)
        self.dock.drawRequested.connect(self.area_picker.draw)
        self.dock.exportRequested.connect(self.export_result)
        self.dock.checkRequested.connect(self.check_backend)
        self.dock.layerChanged.connect(self._watch_layer)
        self.dock.area.currentTextChanged.connect(self.area_picker.choice_changed)
        configure.triggered.connect(self.open_settings)
        project = QgsProject.instance()
        project.readProject.connect(self._refresh_history)
        project.readProject.connect(self._restore_last_result)
        project.cleared.connect(self._refresh_history)
        project.cleared.connect(self._project_closed)
        project.projectSaved.connect(self.results.saved)
        self._refresh_history()
        self._watch_layer(self.dock.layer_combo.currentLayer())
        self.zmq_problem = zmq_problem()
        if self.zmq_problem:
            text = missing_zmq_text(self.zmq_problem, sys.platform, QgsApplication.prefixPath())
            self.dock.show_missing_dependency(text)
            log(text)
            notify(self.iface, "pyzmq is missing from the Python of QGIS: the LRS Focus dock shows the command "
                               "that installs it.", "warning", duration=0)
        QTimer.singleShot(0, lambda: self.dock is not None and self._dock_shown(self.dock.isVisible()))

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
        for signal, slot in ((project.readProject, self._refresh_history),
                             (project.readProject, self._restore_last_result),
                             (project.cleared, self._refresh_history), (project.cleared, self._project_closed),
                             (project.projectSaved, self.results.saved)):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass
        self._watch_layer(None)
        self.area_picker.unload()
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        self.launcher.stop()

    # -- asking -------------------------------------------------------------------------------
    def ask(self) -> Optional[object]:
        """Start an AskTask for the dock's layer, question, bands and area; returns the task (or None)."""
        from .ask_request import RequestProblem, build_request
        from .ask_task import AskTask

        if self.zmq_problem:
            notify(self.iface, "pyzmq is missing: see the note at the top of the LRS Focus dock.", "warning")
            return None
        if self.task is not None:
            notify(self.iface, "A question is already running: wait for it or press Cancel.", "warning")
            return None
        try:
            request, target, described = build_request(self.dock, self.iface, self.area_picker.drawn)
        except RequestProblem as exc:
            notify(self.iface, str(exc), "warning")
            return None
        layer = self.dock.layer_combo.currentLayer()
        task = AskTask(request, settings.load_backend(), layer.crs(), self.launcher, store=target)
        task.stageChanged.connect(lambda _stage, text: self.dock and self.dock.show_progress(text, task.progress()))
        task.progressChanged.connect(lambda p: self.dock and self.dock.show_progress(self.dock.stage.text(), p))
        task.backendReady.connect(lambda health: self.dock and self.dock.show_backend(health))
        task.answered.connect(lambda result, layers: self._answered(task, result, layers))
        task.failed.connect(lambda code, message: self._failed(task, code, message))
        self.task = task
        self.dock.show_running(True)
        self.dock.show_stage(f"asking about '{layer.name()}' ({described})", 0)
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        if self.task is not None:
            self.dock.show_cancelling()
            self.task.cancel()

    def _project_closed(self) -> None:
        """The project was closed (New, Open, Close) while a question ran: its answer must not land in the next one."""
        self.last_layers = []
        self.area_picker.forget()
        if self.dock is not None:
            self.dock.zoom_button.setEnabled(False)
        if self.task is not None:
            self.task.add_layers = False
            self.task.project_closed = True

    def _restore_last_result(self, *_) -> None:
        """A reopened project's newest answer is what "Zoom to focus" goes to."""
        self.last_layers = restore_last_result()
        if self.dock is not None:
            self.dock.zoom_button.setEnabled(bool(self.last_layers))

    def _answered(self, task, result: dict, layers: list) -> None:
        self.task = None
        if self.dock is None:  # unloaded while the task ran
            return
        answer = clean_text(result.get("answer", ""))
        if (result.get("model") or {}).get("random_weights"):
            answer += f" {RANDOM_WEIGHTS_NOTE}"
        self.dock.show_running(False)
        if getattr(task, "project_closed", False):
            self._answered_after_close(task, answer)
            return
        self.last_layers = layers
        self.dock.show_answer(answer)
        counts = result.get("counts") or {}
        stored = task.stored
        done = (f"done in {task.seconds:.1f} s: {counts.get('tiles_encoded', '?')} tiles encoded, "
                f"{counts.get('llm_vision_tokens', '?')} vision tokens to the LLM")
        if stored is not None and stored.every_tile_kept:
            done += (f". Every tile was kept ({stored.focus_tiles} of {stored.final_tiles}): the area is small "
                     "enough for the model to see whole, so there is no focus to rank; the heatmap still shows "
                     "where its attention went")
        self.dock.show_stage(done)
        history.append(
            history.HistoryEntry(
                question=task.request.question,
                answer=answer,
                raster=task.request.raster_path,
                job_id=str(result.get("job_id", "")),
                when=datetime.datetime.now().isoformat(timespec="seconds"),
                seconds=round(task.seconds, 2),
                results=stored.gpkg_path if stored else "",
                tiles_layer=stored.tiles_layer if stored else "",
                heatmap=stored.heatmap_path if stored else "",
            )
        )
        self._refresh_history()
        problems = [p for p in (task.store_error, stored.warning if stored else "") if p]
        for problem in problems:
            notify(self.iface, problem, "warning", duration=15)
        notify_after_task_notice(self.iface, f"Answer: {answer}", "success", 10, task.description())
        if layers:
            self.zoom_to_focus()
        if QgsProject.instance().fileName():  # asked before a Save As finished: file it with the project now
            self.results.relocate(write=False)

    def _answered_after_close(self, task, answer: str) -> None:
        """Neither layers nor history go to the project now open; say where the answer was filed."""
        stored = task.stored
        where = (f"It is filed in {stored.gpkg_path} (layer {stored.tiles_layer})" if stored
                 else "It could not be filed")
        self.dock.show_answer(answer)
        self.dock.zoom_button.setEnabled(False)
        self.dock.show_stage(f"answered after its project was closed: not added to this project. {where}.")
        notify_after_task_notice(
            self.iface, f"The answer to \"{task.request.question}\" arrived after its project was closed, so it was "
            f"not added to this project. {where}. Answer: {answer}", "warning", 0, task.description())

    def _failed(self, task, code: str, message: str) -> None:
        self.task = None
        if self.dock is None:
            return
        self.dock.show_running(False)
        if code == "cancelled":
            self.dock.show_stage("cancelled", 0)
            notify_after_task_notice(self.iface, "Question cancelled.", "info", 4, task.description())
            return
        self.dock.show_stage(f"failed [{code}]: {message}", 0)
        if code in BACKEND_GONE:  # the Backend line must not keep showing the model of a dead backend
            when = datetime.datetime.now().strftime("%H:%M:%S")
            self.dock.show_backend(None, f"no answer at {when} ({code}); press Check once it runs again")
        notify_after_task_notice(self.iface, f"[{code}] {message}", "critical", 15, task.description())

    # -- the chosen layer: bands, CRS --------------------------------------------------------
    def _watch_layer(self, layer) -> None:
        """Keep the dock's 'as displayed' line in step with the layer's style, its CRS note with its CRS."""
        if self.watched_layer is not None:
            try:
                self.watched_layer.rendererChanged.disconnect(self._show_displayed_bands)
                self.watched_layer.crsChanged.disconnect(self._show_crs_note)
            except (TypeError, RuntimeError):
                pass
        self.watched_layer = layer if layer is not None and hasattr(layer, "renderer") else None
        if self.watched_layer is not None:
            self.watched_layer.rendererChanged.connect(self._show_displayed_bands)
            self.watched_layer.crsChanged.connect(self._show_crs_note)
        self._show_displayed_bands()

    def _show_crs_note(self) -> None:
        if self.dock is not None:
            self.dock.show_crs_note()

    def _show_displayed_bands(self) -> None:
        from .display_bands import displayed_bands

        if self.dock is not None:
            layer = self.watched_layer
            self.dock.show_displayed_bands(displayed_bands(layer).text if layer is not None else "")

    # -- backend, results, settings -----------------------------------------------------------
    def check_backend(self) -> None:
        from .ask_task import HealthTask

        if self.zmq_problem or self.health_task is not None or self.dock is None:
            return
        task = HealthTask(settings.load_backend())
        task.checked.connect(lambda ok, text: self._checked(task, ok, text))
        self.health_task = task
        self.dock.show_backend(None, "checking...")
        QgsApplication.taskManager().addTask(task)

    def _dock_shown(self, visible: bool) -> None:
        """The first time the dock is seen, say which backend serves it (a background health check)."""
        if visible and not self.backend_checked:
            self.backend_checked = True
            self.check_backend()

    def _checked(self, task, ok: bool, text: str) -> None:
        self.health_task = None
        if self.dock is not None:
            self.dock.show_backend(task.health if ok else None, text)
        notify_after_task_notice(self.iface, "", "info", 0, task.description())

    def export_result(self, entry) -> Optional[list]:
        from qgis.PyQt.QtWidgets import QFileDialog

        from .export_result import export_entry
        from .result_files import ResultFileError

        start = os.path.join(os.path.dirname(entry.results or ""), "answer.gpkg")
        path, _ = QFileDialog.getSaveFileName(
            self.dock, "Export the answer", start, "GeoPackage, raster CRS (*.gpkg);;GeoJSON, RFC 7946 WGS 84 (*.geojson)"
        )
        if not path:
            return None
        try:
            written = export_entry(entry, path)
        except (OSError, ValueError, RuntimeError) as exc:
            level = "warning" if isinstance(exc, ResultFileError) else "critical"
            notify(self.iface, f"Export failed: {exc}", level, duration=15)
            return None
        notify(self.iface, f"Exported to {', '.join(written)}", "success", duration=8)
        return written

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
