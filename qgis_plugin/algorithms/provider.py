"""The "LRS Focus" Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icon.svg")


class LrsFocusProvider(QgsProcessingProvider):
    def id(self) -> str:  # noqa: A003 (QGIS API)
        return "lrsfocus"

    def name(self) -> str:
        return "LRS Focus"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:  # noqa: N802
        from .ask_raster import AskRasterAlgorithm

        self.addAlgorithm(AskRasterAlgorithm())
