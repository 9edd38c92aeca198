"""One question = one QgsTask that owns its own ZeroMQ socket.

`run()` executes in a worker thread: it creates the socket there (sockets are not thread-safe),
checks the backend's health, sends the question, streams progress and polls `isCanceled()`;
it never touches layers or widgets and never raises (the error is kept for `finished()`).
`finished()` runs on the main thread and is the only place that adds layers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Optional

from qgis.core import QgsCoordinateReferenceSystem, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .backend_process import BackendLauncher
from .params import AskRequest, BackendSettings, StoreTarget
from .progress import OverallProgress, stage_text


def task_flags():
    """CanCancel, and Silent where QGIS has it (3.26+): no "Task complete" notice of QGIS's own
    over the plugin's message (older QGIS: the plugin pushes its message after that notice)."""
    flags = QgsTask.Flag.CanCancel
    silent = getattr(QgsTask.Flag, "Silent", None)
    return flags | silent if silent is not None else flags


class AskTask(QgsTask):
    #: stage, human text; emitted from the worker thread, delivered on the main thread
    stageChanged = pyqtSignal(str, str)  # noqa: N815 (Qt naming)
    #: the backend's health reply (model, device, random_weights...), once it answered
    backendReady = pyqtSignal(dict)  # noqa: N815
    #: result document (with job_id) and the layers that were added
    answered = pyqtSignal(dict, list)
    #: error code and message ("cancelled" when the user cancelled)
    failed = pyqtSignal(str, str)

    def __init__(
        self,
        request: AskRequest,
        backend: BackendSettings,
        raster_crs: QgsCoordinateReferenceSystem,
        launcher: Optional[BackendLauncher] = None,
        store: Optional[StoreTarget] = None,
        add_layers: bool = True,
    ):
        super().__init__(f"LRS Focus: {request.question[:60]}", task_flags())
        self.request = request
        self.backend = backend
        self.raster_crs = QgsCoordinateReferenceSystem(raster_crs)  # a copy owned by the task
        self.launcher = launcher if backend.start_command else None
        self.store = store
        self.add_layers = add_layers
        self.project_closed = False  # set on the main thread when the project is closed meanwhile
        self.result: Optional[dict[str, Any]] = None
        self.stored = None  # results_store.StoredResult once filed
        self.store_error = ""
        self.error: tuple[str, str] = ("", "")
        self.layers: list = []
        self.seconds = 0.0
        self._overall = OverallProgress()

    # -- worker thread ------------------------------------------------------------------------
    def run(self) -> bool:
        from .client import BackendError, Client  # zmq is imported on first use only
        from .remote import ask

        started = time.monotonic()
        try:
            with Client(self.backend.endpoint, self.backend.timeouts) as client:
                self.stageChanged.emit("connect", f"contacting the backend at {self.backend.endpoint}")
                health = self._healthy_backend(client)
                self.backendReady.emit(dict(health))
                self.stageChanged.emit(
                    "connect", f"backend ready: model {health.get('model', '?')} on {health.get('device', '?')}"
                )
                self.result = ask(client, self.request, self._on_progress, self.isCanceled)
            self._file_result(time.monotonic() - started)
            return True
        except BackendError as exc:
            self.error = (exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - run() must never raise into QGIS
            self.error = ("internal", f"{type(exc).__name__}: {exc}")
        finally:
            self.seconds = time.monotonic() - started
        return False

    def _healthy_backend(self, client) -> dict[str, Any]:
        """Health reply; starts the configured local backend when nothing answers."""
        from .client import BackendError
        from .protocol import TIMEOUT

        try:
            return client.wait_healthy(self.backend.timeouts.health, self.isCanceled)
        except BackendError as exc:
            if exc.code != TIMEOUT or self.launcher is None:
                raise
        self.stageChanged.emit("start", f"nothing answers; starting: {self.backend.start_command}")
        try:
            self.launcher.start(self.backend.start_command)
        except (OSError, ValueError) as exc:
            raise BackendError("backend_start_failed", f"cannot start the backend command: {exc}") from None
        return client.wait_healthy(self.backend.timeouts.start, self.isCanceled, self._launch_failed)

    def _launch_failed(self) -> Optional[str]:
        code = self.launcher.exit_code() if self.launcher else None
        if code is None:
            return None
        return f"the backend command exited with code {code}; its log ({self.launcher.log_path}) ends with:\n{self.launcher.log_tail()}"

    def _on_progress(self, stage: str, level: Optional[int], fraction: float, message: str,
                     overall: Optional[float] = None) -> None:
        if self.isCanceled():  # messages on their way after Cancel move neither QGIS's bar nor the dock's
            return
        self.setProgress(self._overall.update(stage, level, fraction, overall))
        self.stageChanged.emit(stage, stage_text(stage, level, message))

    def _file_result(self, seconds: float) -> None:
        """Worker thread: the tiles and heatmap into the project's GeoPackage (no QGIS objects)."""
        if self.store is None or self.result is None:
            return
        from .results_store import store_result

        targets = [self.store]
        if self.store.fallback_path and self.store.fallback_path != self.store.gpkg_path:
            targets.append(replace(self.store, gpkg_path=self.store.fallback_path))
        problems = []
        for target in targets:
            self.stageChanged.emit("store", f"filing the result in {target.gpkg_path}")
            try:
                self.stored = store_result(target, self.result, self.request.question, seconds)
                break
            except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: GDAL with exceptions on
                problems.append(f"{target.gpkg_path}: {exc}")
        if problems:
            where = f"; filed in {self.stored.gpkg_path} instead" if self.stored else ""
            self.store_error = f"the answer could not be filed in {'; '.join(problems)}{where}"

    # -- main thread --------------------------------------------------------------------------
    def finished(self, ok: bool) -> None:
        if ok and self.result is not None:
            if self.add_layers and self.stored is not None:
                from .result_layers import add_result_group

                job_id = str(self.result.get("job_id", ""))
                _, self.layers = add_result_group(self.stored, self.request.question, job_id, self.raster_crs)
            self.answered.emit(self.result, self.layers)
            return
        code, message = self.error
        if self.isCanceled() or code == "cancelled":
            code, message = "cancelled", message if code == "cancelled" else "cancelled"
        self.failed.emit(code or "internal", message or "the task stopped without a result")


class HealthTask(QgsTask):
    """Checks the backend from a worker thread (the settings dialog's Test button)."""

    checked = pyqtSignal(bool, str)

    def __init__(self, backend: BackendSettings, budget: Optional[float] = None):
        super().__init__("LRS Focus: backend health", task_flags())
        self.backend = backend
        self.budget = backend.timeouts.health if budget is None else budget
        self.text = ""
        self.health: dict[str, Any] = {}

    def run(self) -> bool:
        from .client import BackendError, Client

        try:
            with Client(self.backend.endpoint, self.backend.timeouts) as client:
                h = client.wait_healthy(self.budget, self.isCanceled)
            self.health = dict(h)
            self.text = (
                f"lrs-focus {h.get('version')} at {self.backend.endpoint}: model {h.get('model')} on "
                f"{h.get('device')} ({h.get('dtype')}), queue {h.get('queue_length')}/{h.get('queue_size')}"
            )
            if h.get("random_weights"):
                self.text += ". RANDOM WEIGHTS: a test model, its answers are noise"
            return True
        except BackendError as exc:
            self.text = str(exc)
        except Exception as exc:  # noqa: BLE001
            self.text = f"{type(exc).__name__}: {exc}"
        return False

    def finished(self, ok: bool) -> None:
        self.checked.emit(ok, self.text)
