"""The dock: pick a raster, type a question, Ask / Cancel, watch the stage, read the answer.

Widgets only: the dock emits `askRequested` / `cancelRequested` and the plugin (plugin.py)
runs the task and calls back `show_*`. Built in code (no .ui, no compiled resources) with Qt
reached only through qgis.PyQt and fully qualified enums, so it loads on Qt5 and Qt6.
"""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsMapLayerProxyModel, QgsProviderRegistry
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from .history import HistoryEntry
from .params import MODES, AskOptions
from .raster_check import check_layer


class AskDock(QgsDockWidget):
    askRequested = pyqtSignal()  # noqa: N815
    cancelRequested = pyqtSignal()  # noqa: N815
    zoomRequested = pyqtSignal()  # noqa: N815
    settingsRequested = pyqtSignal()  # noqa: N815

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__("LRS Focus", parent)
        self.setObjectName("LrsFocusDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)

        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setObjectName("lrsFocusLayer")
        self.layer_combo.setFilters(_raster_filter())
        # List only rasters QGIS reads with GDAL; web/database providers are left out here
        # and, if chosen some other way, refused by check_layer with the reason.
        others = [p for p in QgsProviderRegistry.instance().providerList() if p != "gdal"]
        self.layer_combo.setExcludedProviders(others)
        form.addRow("Raster", self.layer_combo)
        self.layer_note = QLabel(body)
        self.layer_note.setWordWrap(True)
        self.layer_note.setStyleSheet("color: #b00020;")
        form.addRow("", self.layer_note)

        self.question = QLineEdit(body)
        self.question.setObjectName("lrsFocusQuestion")
        self.question.setPlaceholderText("e.g. How many ships are docked at the northern pier?")
        form.addRow("Question", self.question)

        self.mode = QComboBox(body)
        self.mode.addItems(list(MODES))
        self.alpha = QDoubleSpinBox(body)
        self.alpha.setRange(0.01, 1.0)
        self.alpha.setSingleStep(0.05)
        self.alpha.setDecimals(2)
        self.n_max = QSpinBox(body)
        self.n_max.setRange(0, 10000)
        self.n_max.setSpecialValueText("model default")
        options = QHBoxLayout()
        for label, widget in (("mode", self.mode), ("alpha", self.alpha), ("N_max", self.n_max)):
            options.addWidget(QLabel(label, body))
            options.addWidget(widget, 1)
        form.addRow("Options", options)
        self.set_options(AskOptions())
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.ask_button = QPushButton("Ask", body)
        self.ask_button.setObjectName("lrsFocusAsk")
        self.ask_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.setObjectName("lrsFocusCancel")
        self.cancel_button.setEnabled(False)
        self.zoom_button = QPushButton("Zoom to focus", body)
        self.zoom_button.setEnabled(False)
        self.settings_button = QPushButton("Settings...", body)
        for b in (self.ask_button, self.cancel_button, self.zoom_button, self.settings_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)

        self.progress = QProgressBar(body)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.stage = QLabel("idle", body)
        self.stage.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.stage)

        layout.addWidget(QLabel("Answer", body))
        self.answer = QTextBrowser(body)
        self.answer.setObjectName("lrsFocusAnswer")
        self.answer.setMaximumHeight(110)
        layout.addWidget(self.answer)

        layout.addWidget(QLabel("History of this project", body))
        self.history = QListWidget(body)
        self.history.setWordWrap(True)
        layout.addWidget(self.history, 1)
        self.setWidget(body)

        self.ask_button.clicked.connect(self.askRequested)
        self.question.returnPressed.connect(self.askRequested)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.zoom_button.clicked.connect(self.zoomRequested)
        self.settings_button.clicked.connect(self.settingsRequested)
        self.layer_combo.layerChanged.connect(self._update_layer_note)
        self.history.currentItemChanged.connect(self._show_history_item)
        self._update_layer_note()

    # -- reading the form ---------------------------------------------------------------------
    def options(self) -> AskOptions:
        return AskOptions(mode=self.mode.currentText(), alpha=self.alpha.value(), n_max=self.n_max.value() or None)

    def set_options(self, options: AskOptions) -> None:
        self.mode.setCurrentText(options.mode)
        self.alpha.setValue(options.alpha)
        self.n_max.setValue(options.n_max or 0)

    def _update_layer_note(self, *_):
        check = check_layer(self.layer_combo.currentLayer())
        self.layer_note.setText("" if check.ok else check.reason)
        self.layer_note.setVisible(not check.ok)

    # -- called by the plugin -----------------------------------------------------------------
    def show_running(self, running: bool) -> None:
        self.ask_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.answer.clear()

    def show_stage(self, text: str, percent: Optional[float] = None) -> None:
        self.stage.setText(text)
        if percent is not None:
            self.progress.setValue(int(percent))

    def show_answer(self, text: str) -> None:
        self.answer.setPlainText(text)
        self.progress.setValue(100)
        self.zoom_button.setEnabled(True)

    def show_history(self, entries: list[HistoryEntry]) -> None:
        self.history.clear()
        for entry in reversed(entries):
            item = QListWidgetItem(f"Q: {entry.question}\nA: {entry.answer}")
            item.setData(Qt.ItemDataRole.UserRole, entry.answer)
            item.setToolTip(f"{entry.raster}\n{entry.when}  job {entry.job_id}  {entry.seconds:.1f} s")
            self.history.addItem(item)

    def _show_history_item(self, item, _previous=None) -> None:
        if item is not None:
            self.answer.setPlainText(item.data(Qt.ItemDataRole.UserRole) or "")


def _raster_filter():
    """QgsMapLayerProxyModel.RasterLayer (3.x) / Qgis.LayerFilter.RasterLayer (3.34+, 4.x)."""
    try:
        from qgis.core import Qgis

        return Qgis.LayerFilter.RasterLayer
    except AttributeError:
        return QgsMapLayerProxyModel.Filter.RasterLayer
