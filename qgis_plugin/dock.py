"""The dock: pick a raster and an area, type a question, Ask / Cancel, watch one progress bar, read the answer.

Widgets only: the dock emits signals and the plugin (plugin.py) runs the tasks and calls back
`show_*`. Built in code (no .ui, no compiled resources) with Qt reached only through qgis.PyQt
and fully qualified enums, so it loads on Qt5 and Qt6.
"""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsMapLayerProxyModel, QgsProviderRegistry
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from .area import AREAS
from .crs_notice import crs_notice
from .display_text import clean_text
from .history import HistoryEntry
from .params import MAX_N_MAX, MODES, AskOptions
from .raster_check import check_layer

TIPS = {
    "mode": "paper: coarse-to-fine focus as in the paper (Algorithm 1).\n"
            "released: the public code's variant (one RFM pass per level).\n"
            "thumbnail: the model sees only a small overview (no focus, no heatmap).\n"
            "all-tiles: every tile of the finest level (slow, the baseline).",
    "alpha": "Fraction of the scored vision tokens kept at each level (0.25 = the top quarter).\n"
             "Lower: faster, narrower focus; higher: wider focus, more tokens for the LLM.",
    "n_max": "Stop zooming when the next level would have more than N_max kept tiles.\n"
             "'default' = the model's own: 40 (Vicuna), 80 (Qwen2) or 24 (Qwen2.5-VL, Qwen3-VL) tiles.",
    "bands": "Raster bands the model sees: 1 band (grey) or 3 (red, green, blue), e.g. 4,3,2.\n"
             "Empty = what the layer displays, with the layer's own min/max stretch.",
    "area": "whole raster; the canvas's visible extent; a rectangle you draw (Draw...); or the extent "
            "of the selected features of the active vector layer.",
}


class AskDock(QgsDockWidget):
    askRequested = pyqtSignal()  # noqa: N815
    cancelRequested = pyqtSignal()  # noqa: N815
    zoomRequested = pyqtSignal()  # noqa: N815
    settingsRequested = pyqtSignal()  # noqa: N815
    drawRequested = pyqtSignal()  # noqa: N815
    exportRequested = pyqtSignal(object)  # noqa: N815 (the HistoryEntry to export)
    checkRequested = pyqtSignal()  # noqa: N815
    layerChanged = pyqtSignal(object)  # noqa: N815

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__("LRS Focus", parent)
        self.setObjectName("LrsFocusDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)

        self.dependency_note = QLabel(body)
        self.dependency_note.setObjectName("lrsFocusDependencyNote")
        self.dependency_note.setWordWrap(True)
        self.dependency_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.dependency_note.setStyleSheet(
            "background: #fff4d6; border: 1px solid #e0a800; padding: 6px; color: #3a2a00;")
        self.dependency_note.setVisible(False)
        layout.addWidget(self.dependency_note)

        form = QFormLayout()
        # narrow docks (a 1366 px laptop screen): fields go under their labels instead of clipping
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.layer_combo.setMinimumContentsLength(12)
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
        self.crs_note = QLabel(body)  # a raster without CRS: where its answers are drawn
        self.crs_note.setObjectName("lrsFocusCrsNote")
        self.crs_note.setWordWrap(True)
        self.crs_note.setStyleSheet("color: #555;")
        self.crs_note.setVisible(False)
        form.addRow("", self.crs_note)

        self.question = QLineEdit(body)
        self.question.setObjectName("lrsFocusQuestion")
        self.question.setPlaceholderText("e.g. How many ships are docked at the northern pier?")
        form.addRow("Question", self.question)

        self.area = QComboBox(body)
        self.area.setObjectName("lrsFocusArea")
        self.area.addItems(list(AREAS))
        self.area.setToolTip(TIPS["area"])
        self.draw_button = QPushButton("Draw...", body)
        self.draw_button.setToolTip("Drag a rectangle on the map: the question is then about that part only.")
        area_row = QHBoxLayout()
        area_row.addWidget(self.area, 1)
        area_row.addWidget(self.draw_button)
        form.addRow("Area", area_row)
        self.area_note = QLabel("", body)
        self.area_note.setWordWrap(True)
        self.area_note.setStyleSheet("color: #555;")
        self.area_note.setVisible(False)
        form.addRow("", self.area_note)

        self.bands = QLineEdit(body)
        self.bands.setObjectName("lrsFocusBands")
        self.bands.setToolTip(TIPS["bands"])
        bands_label = QLabel("Bands", body)
        bands_label.setToolTip(TIPS["bands"])
        form.addRow(bands_label, self.bands)
        self.bands_note = QLabel("", body)
        self.bands_note.setWordWrap(True)
        self.bands_note.setStyleSheet("color: #555;")
        form.addRow("", self.bands_note)

        self.mode = QComboBox(body)
        self.mode.addItems(list(MODES))
        self.alpha = QDoubleSpinBox(body)
        self.alpha.setRange(0.01, 1.0)
        self.alpha.setSingleStep(0.05)
        self.alpha.setDecimals(2)
        self.n_max = QSpinBox(body)
        self.n_max.setRange(0, MAX_N_MAX)
        self.n_max.setSpecialValueText("default")
        options = QGridLayout()
        for (key, label, widget), (row, col) in zip(
                (("mode", "mode", self.mode), ("alpha", "alpha", self.alpha), ("n_max", "N_max", self.n_max)),
                ((0, 0), (1, 0), (1, 2))):
            tag = QLabel(label, body)
            for w in (tag, widget):
                w.setToolTip(TIPS[key])
            options.addWidget(tag, row, col)
            options.addWidget(widget, row, col + 1, 1, 3 if key == "mode" else 1)
        options.setColumnStretch(1, 1)
        options.setColumnStretch(3, 1)
        form.addRow("Options", options)
        self.set_options(AskOptions())

        self.backend = QLabel("not checked yet", body)
        self.backend.setObjectName("lrsFocusBackend")
        self.backend.setWordWrap(True)
        self.backend.setTextFormat(Qt.TextFormat.RichText)
        self.backend.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.check_button = QPushButton("Check", body)
        self.check_button.setToolTip("Ask the backend which model it serves, on which device")
        backend_row = QHBoxLayout()
        backend_row.addWidget(self.check_button)
        backend_row.addStretch(1)
        form.addRow("Backend", backend_row)
        form.addRow(self.backend)  # its own full-width row: the sentence wraps, never clipped
        layout.addLayout(form)

        buttons = QGridLayout()
        self.ask_button = QPushButton("Ask", body)
        self.ask_button.setObjectName("lrsFocusAsk")
        self.ask_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.setObjectName("lrsFocusCancel")
        self.cancel_button.setEnabled(False)
        self.zoom_button = QPushButton("Zoom to focus", body)
        self.zoom_button.setEnabled(False)
        self.export_button = QPushButton("Export...", body)
        self.export_button.setToolTip("Save the selected answer (tiles, answer and heatmap) as GeoPackage or GeoJSON")
        self.export_button.setEnabled(False)
        self.settings_button = QPushButton("Settings...", body)
        for i, b in enumerate((self.ask_button, self.cancel_button, self.zoom_button, self.export_button,
                               self.settings_button)):
            buttons.addWidget(b, i // 2, i % 2)
        layout.addLayout(buttons)

        self.progress = QProgressBar(body)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.stage = QLabel("idle", body)
        self.stage.setWordWrap(True)
        self.cancelling = False  # Cancel pressed: progress messages no longer replace the stage line
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
        self.history.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.history.setResizeMode(QListWidget.ResizeMode.Adjust)
        layout.addWidget(self.history, 1)
        # A laptop screen (1366 x 768) is too short for every wrapped line: the dock scrolls
        # vertically instead of squeezing labels, and never needs a horizontal scroll bar.
        scroll = QScrollArea(self)
        scroll.setObjectName("lrsFocusScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        self.setWidget(scroll)
        self._entries: list[HistoryEntry] = []

        self.ask_button.clicked.connect(self.askRequested)
        self.question.returnPressed.connect(self.askRequested)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.zoom_button.clicked.connect(self.zoomRequested)
        self.settings_button.clicked.connect(self.settingsRequested)
        self.draw_button.clicked.connect(self.drawRequested)
        self.check_button.clicked.connect(self.checkRequested)
        self.export_button.clicked.connect(self._export_clicked)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.history.currentItemChanged.connect(self._show_history_item)
        self._layer_changed()

    # -- reading the form ---------------------------------------------------------------------
    def options(self) -> AskOptions:
        return AskOptions(mode=self.mode.currentText(), alpha=self.alpha.value(), n_max=self.n_max.value() or None)

    def set_options(self, options: AskOptions) -> None:
        self.mode.setCurrentText(options.mode)
        self.alpha.setValue(options.alpha)
        self.n_max.setValue(options.n_max or 0)

    def area_choice(self) -> str:
        return self.area.currentText()

    def _layer_changed(self, *_):
        layer = self.layer_combo.currentLayer()
        check = check_layer(layer)
        self.layer_note.setText("" if check.ok else check.reason)
        self.layer_note.setVisible(not check.ok)
        self.show_crs_note()
        self.layerChanged.emit(layer)

    def show_crs_note(self) -> None:
        """Say so when the chosen raster has no CRS (again when the user sets one on the layer)."""
        layer = self.layer_combo.currentLayer()
        check = check_layer(layer)
        notice = crs_notice(check.path, layer.crs().isValid()) if check.ok else ""
        self.crs_note.setText(notice)
        self.crs_note.setVisible(bool(notice))

    # -- called by the plugin -----------------------------------------------------------------
    def show_displayed_bands(self, text: str) -> None:
        """What the layer displays, which the model sees unless the Bands box overrides it."""
        self.bands.setPlaceholderText("as displayed")
        self.bands_note.setText(f"As displayed: {text}" if text else "")
        self.bands_note.setVisible(bool(text))

    def show_area(self, text: str) -> None:
        self.area_note.setText(text)
        self.area_note.setVisible(bool(text))

    def show_backend(self, health: Optional[dict[str, Any]], problem: str = "") -> None:
        if not health:
            self.backend.setText(f"<span style='color:#b00020'>{_html(problem or 'no answer')}</span>")
            return
        text = (f"<b>{_html(str(health.get('model', '?')))}</b> on {_html(str(health.get('device', '?')))} "
                f"({_html(str(health.get('dtype', '?')))}), lrs-focus {_html(str(health.get('version', '?')))}")
        if health.get("random_weights"):
            text += ("<br><span style='color:#ffffff; background:#b00020; font-weight:bold'>&nbsp;RANDOM WEIGHTS"
                     "&nbsp;</span> <span style='color:#b00020'>a test model: its answers are noise</span>")
        self.backend.setText(text)

    def show_missing_dependency(self, text: str) -> None:
        self.dependency_note.setText(text)
        self.dependency_note.setVisible(True)
        for widget in (self.ask_button, self.check_button):
            widget.setEnabled(False)
            widget.setToolTip("pyzmq is missing: see the note at the top of the dock")
        self.backend.setText("<span style='color:#b00020'>unreachable without pyzmq</span>")

    def show_running(self, running: bool) -> None:
        self.ask_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.cancelling = False
        if running:
            self.progress.setValue(0)
            self.answer.clear()

    def show_stage(self, text: str, percent: Optional[float] = None) -> None:
        self.stage.setText(text)
        if percent is not None:
            self.progress.setValue(round(percent))  # int() showed overall 0.29 as 28 %

    def show_progress(self, text: str, percent: float) -> None:
        """A progress message of the running task: ignored once Cancel was pressed, so the line keeps
        saying "cancelling" until the backend has stopped (messages already on their way overwrote it)."""
        if not self.cancelling:
            self.show_stage(text, percent)

    def show_cancelling(self) -> None:
        self.cancelling = True
        self.cancel_button.setEnabled(False)
        self.stage.setText(f"cancelling at {self.progress.value()} %: waiting for the backend to stop...")

    def show_answer(self, text: str) -> None:
        self.answer.setPlainText(clean_text(text))
        self.progress.setValue(100)
        self.zoom_button.setEnabled(True)

    def show_history(self, entries: list[HistoryEntry]) -> None:
        self._entries = list(reversed(entries))
        self.history.clear()
        for entry in self._entries:
            answer = clean_text(entry.answer)
            item = QListWidgetItem(f"Q: {clean_text(entry.question)}\nA: {answer}")
            item.setData(Qt.ItemDataRole.UserRole, answer)
            item.setToolTip(f"{entry.raster}\n{entry.when}  job {entry.job_id}  {entry.seconds:.1f} s"
                            + (f"\nfiled in {entry.results}" if entry.results else ""))
            self.history.addItem(item)
        if self._entries:
            self.history.setCurrentRow(0)
        self.export_button.setEnabled(any(e.results for e in self._entries))

    def selected_entry(self) -> Optional[HistoryEntry]:
        row = self.history.currentRow()
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def _show_history_item(self, item, _previous=None) -> None:
        if item is not None:
            self.answer.setPlainText(item.data(Qt.ItemDataRole.UserRole) or "")

    def _export_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.exportRequested.emit(entry)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _raster_filter():
    """QgsMapLayerProxyModel.RasterLayer (3.x) / Qgis.LayerFilter.RasterLayer (3.34+, 4.x)."""
    try:
        from qgis.core import Qgis

        return Qgis.LayerFilter.RasterLayer
    except AttributeError:
        return QgsMapLayerProxyModel.Filter.RasterLayer
