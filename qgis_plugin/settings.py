"""The plugin's global settings, stored with QgsSettings under `lrs_focus/`.

One place reads and writes them, so the dock, the settings dialog and the Processing
algorithm all see the same endpoint, start command and default options.
"""

from __future__ import annotations

from qgis.core import QgsSettings

from .params import DEFAULT_ENDPOINT, MODES, AskOptions, BackendSettings, Timeouts

PREFIX = "lrs_focus/"


def _get(settings: QgsSettings, key: str, default, kind):
    value = settings.value(PREFIX + key, default)
    try:
        return kind(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def load_backend() -> BackendSettings:
    s = QgsSettings()
    defaults = Timeouts()
    return BackendSettings(
        endpoint=_get(s, "endpoint", DEFAULT_ENDPOINT, str).strip() or DEFAULT_ENDPOINT,
        start_command=_get(s, "start_command", "", str).strip(),
        timeouts=Timeouts(
            health=_get(s, "health_timeout_s", defaults.health, float),
            start=_get(s, "start_timeout_s", defaults.start, float),
        ),
    )


def save_backend(backend: BackendSettings) -> None:
    s = QgsSettings()
    s.setValue(PREFIX + "endpoint", backend.endpoint)
    s.setValue(PREFIX + "start_command", backend.start_command)
    s.setValue(PREFIX + "health_timeout_s", float(backend.timeouts.health))
    s.setValue(PREFIX + "start_timeout_s", float(backend.timeouts.start))


def load_options() -> AskOptions:
    s = QgsSettings()
    mode = _get(s, "mode", "paper", str)
    return AskOptions(
        mode=mode if mode in MODES else "paper",
        alpha=_get(s, "alpha", 0.25, float),
        n_max=_get(s, "n_max", 0, int) or None,
    )


def save_options(options: AskOptions) -> None:
    s = QgsSettings()
    s.setValue(PREFIX + "mode", options.mode)
    s.setValue(PREFIX + "alpha", float(options.alpha))
    s.setValue(PREFIX + "n_max", int(options.n_max or 0))


def load_results_dir() -> str:
    """The folder of the results GeoPackage; "" = beside the project file."""
    return _get(QgsSettings(), "results_dir", "", str).strip()


def save_results_dir(folder: str) -> None:
    QgsSettings().setValue(PREFIX + "results_dir", folder.strip())
