"""Answers follow their project: moved into its own GeoPackage when it is saved (first save, Save
As elsewhere), and found again, legends and all, when it is read. Main thread only."""

from __future__ import annotations

from typing import Callable

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer

from .log import log, notify


class ProjectResults:
    def __init__(self, iface, answers_moved: Callable[[], None]):
        self.iface = iface
        self._answers_moved = answers_moved  # the history names the new files: show it again
        self.relocating = False

    def saved(self) -> None:
        """QgsProject.projectSaved: move the answers into the project's own GeoPackage.

        Deferred: a .qgz is zipped after projectSaved, so writing again from inside the signal
        would be overwritten by the first write's archive."""
        if not self.relocating:
            QTimer.singleShot(0, lambda: self.relocate(write=True))

    def relocate(self, write: bool) -> int:
        """Move answers filed elsewhere beside the saved project (and write it again if `write`)."""
        from .ask_request import results_gpkg
        from .result_layers import relocate_results
        from .results_store import results_location

        project = QgsProject.instance()
        if not project.fileName():
            return 0
        unsaved = results_location("", "", QgsApplication.qgisSettingsDirPath())
        try:
            moved, problems = relocate_results(project, results_gpkg(project), unsaved)
        except OSError as exc:
            moved, problems = 0, [str(exc)]
        for problem in problems:
            notify(self.iface, f"The answers could not be moved beside the project: {problem}", "warning", 15)
        if moved:
            log(f"{moved} answer layer(s) moved into {results_gpkg(project)}")
            self._answers_moved()
            if write:
                self.relocating = True
                try:
                    project.write()  # the file now names the project's own GeoPackage
                finally:
                    self.relocating = False
        return moved


def restore_last_result() -> list:
    """A reopened project: its heatmaps' legends set again (custom legends are not stored in the
    project); returns the newest answer's layers, where "Zoom to focus" goes."""
    from qgis.core import QgsRasterLayer

    from .result_layers import latest_result_layers, result_layer_nodes
    from .result_style import set_heat_legend

    root = QgsProject.instance().layerTreeRoot()
    for node in result_layer_nodes(root):
        if isinstance(node.layer(), QgsRasterLayer):
            set_heat_legend(node.layer())
    return latest_result_layers(root)
