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


def drop_task_notices(iface, description: str) -> int:
    """Remove QGIS's own "Task complete" / "Task failed" notices of the plugin's task `description`
    (QGIS < 3.26 posts one for every task of 5 s or more, and it comes back after the plugin's own
    message expires); the plugin says what happened itself. Returns how many went."""
    if iface is None or not description:
        return 0
    bar = iface.messageBar()
    dropped = 0
    for item in list(bar.items()) if hasattr(bar, "items") else []:
        try:
            if item.text() == description and item.title() != TAG:
                bar.popWidget(item)
                dropped += 1
        except RuntimeError:  # already deleted
            continue
    return dropped


#: QGIS < 3.26 has no silent tasks and pushes "Task complete" / "Task failed" to the message bar
#: when a task of 5 s or more ends (after the task's own signals): the plugin removes that notice
#: and posts its own message in its place.
AFTER_TASK_NOTICE_MS = 400


def notify_after_task_notice(iface, message: str, level: str, duration: int, description: str = "") -> None:
    """Once QGIS's own notice of task `description` is up: drop it, then post `message` (if any)."""
    from qgis.PyQt.QtCore import QTimer

    def post():
        drop_task_notices(iface, description)
        if message:
            notify(iface, message, level, duration)

    QTimer.singleShot(AFTER_TASK_NOTICE_MS, post)
