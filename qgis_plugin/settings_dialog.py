"""Settings dialog: backend endpoint, optional start command, timeouts, default options."""

from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from . import settings
from .params import MAX_N_MAX, MODES, AskOptions, BackendSettings, Timeouts


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("LRS Focus settings")
        self.setObjectName("LrsFocusSettings")
        backend, options = settings.load_backend(), settings.load_options()
        form = QFormLayout()
        self.endpoint = QLineEdit(backend.endpoint, self)
        form.addRow("Backend endpoint", self.endpoint)
        self.start_command = QLineEdit(backend.start_command, self)
        self.start_command.setPlaceholderText("/path/to/.venv/bin/lrs-focus serve --endpoint tcp://127.0.0.1:5555")
        self.start_command.setToolTip(
            "Optional. Started (as an argument list, never through a shell) when nothing answers "
            "at the endpoint; stopped when QGIS closes."
        )
        form.addRow("Start command", self.start_command)
        self.health_timeout = _seconds(self, backend.timeouts.health, 1, 120)
        form.addRow("Health timeout (s)", self.health_timeout)
        self.start_timeout = _seconds(self, backend.timeouts.start, 5, 3600)
        form.addRow("Start timeout (s)", self.start_timeout)
        self.mode = QComboBox(self)
        self.mode.addItems(list(MODES))
        self.mode.setCurrentText(options.mode)
        form.addRow("Default mode", self.mode)
        self.alpha = QDoubleSpinBox(self)
        self.alpha.setRange(0.01, 1.0)
        self.alpha.setSingleStep(0.05)
        self.alpha.setValue(options.alpha)
        form.addRow("Default alpha", self.alpha)
        self.n_max = QSpinBox(self)
        self.n_max.setRange(0, MAX_N_MAX)
        self.n_max.setSpecialValueText("model default")
        self.n_max.setValue(options.n_max or 0)
        form.addRow("Default N_max", self.n_max)
        self.results_dir = QLineEdit(settings.load_results_dir(), self)
        self.results_dir.setPlaceholderText("beside the project file")
        self.results_dir.setToolTip(
            "Folder of the GeoPackage that keeps every answer's tiles and heatmap, so they come back "
            "when the project is reopened. Empty: beside the project file (unsaved projects: the QGIS profile)."
        )
        browse = QPushButton("...", self)
        browse.clicked.connect(self._browse_results_dir)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.results_dir, 1)
        folder_row.addWidget(browse)
        form.addRow("Results folder", folder_row)

        for edit in (self.endpoint, self.start_command, self.results_dir):  # placeholders shown whole
            text = edit.placeholderText() or edit.text()
            edit.setMinimumWidth(min(640, edit.fontMetrics().horizontalAdvance(text) + 24))

        self.test_button = QPushButton("Test connection", self)
        self.test_result = QLabel("", self)
        self.test_result.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, parent=self
        )
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.test_button)
        layout.addWidget(self.test_result)
        layout.addWidget(buttons)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.test_button.clicked.connect(self._test)
        self._task = None

    def backend(self) -> BackendSettings:
        return BackendSettings(
            endpoint=self.endpoint.text().strip(),
            start_command=self.start_command.text().strip(),
            timeouts=Timeouts(health=self.health_timeout.value(), start=self.start_timeout.value()),
        )

    def options(self) -> AskOptions:
        return AskOptions(mode=self.mode.currentText(), alpha=self.alpha.value(), n_max=self.n_max.value() or None)

    def accept(self) -> None:
        settings.save_backend(self.backend())
        settings.save_options(self.options())
        settings.save_results_dir(self.results_dir.text())
        super().accept()

    def _browse_results_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of the results GeoPackage", self.results_dir.text())
        if folder:
            self.results_dir.setText(folder)

    def _test(self) -> None:
        from .ask_task import HealthTask

        self.test_result.setText("checking...")
        self._task = HealthTask(self.backend())
        self._task.checked.connect(lambda ok, text: self.test_result.setText(("OK: " if ok else "Failed: ") + text))
        QgsApplication.taskManager().addTask(self._task)


def _seconds(parent, value: float, low: float, high: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox(parent)
    box.setRange(low, high)
    box.setDecimals(1)
    box.setValue(value)
    return box
