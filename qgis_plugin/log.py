"""The plugin's own tab in the Log Messages panel, and the message bar."""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog

TAG = "LRS Focus"

LEVELS = {
    "info": Qgis.MessageLevel.Info,
    "warning": Qgis.MessageLevel.Warning,
    "critical": Qgis.MessageLevel.Critical,
    "success": Qgis.MessageLevel.Success,
}


def log(message: str, level: str = "info") -> None:
    QgsMessageLog.logMessage(message, TAG, LEVELS[level])


def notify(iface, message: str, level: str = "info", duration: int = 8) -> None:
    """Message bar (when there is an interface) and log tab, so nothing is only transient."""
    log(message, level)
    if iface is not None:
        iface.messageBar().pushMessage(TAG, message, level=LEVELS[level], duration=duration)
