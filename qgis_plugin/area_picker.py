"""The drawn rectangle: the map tool that draws it, the dashed band that keeps it on the map, and
the dock's line giving its size. Main thread only; QGIS classes are imported when first drawn.

The rectangle is kept in the canvas CRS it was drawn in (`ask_request.DrawnArea`); the next
question about "drawn rectangle" turns it into the raster's pixel window (area.py).
"""

from __future__ import annotations

from typing import Callable, Optional

from qgis.PyQt.QtCore import Qt


class AreaPicker:
    def __init__(self, iface, dock: Callable[[], Optional[object]]):
        self.iface = iface
        self._dock = dock  # the plugin's dock, or None once unloaded
        self.drawn = None  # ask_request.DrawnArea
        self.tool = None  # QgsMapToolExtent, made on the first Draw...
        self.previous_tool = None
        self.band = None  # the drawn rectangle on the canvas (QgsRubberBand)

    def draw(self) -> None:
        """Map tool: drag a rectangle; the next question is about that part of the raster."""
        from qgis.gui import QgsMapToolExtent

        canvas = self.iface.mapCanvas()
        if self.tool is None:
            self.tool = QgsMapToolExtent(canvas)
            self.tool.extentChanged.connect(self.drawn_rectangle)
        if canvas.mapTool() is not self.tool:
            self.previous_tool = canvas.mapTool()
        canvas.setMapTool(self.tool)
        self._dock().show_area("drag a rectangle on the map...")

    def drawn_rectangle(self, rectangle) -> None:
        """The map tool's extentChanged: keep the rectangle, show it, say its size."""
        from .area import describe_size
        from .ask_request import DrawnArea

        canvas = self.iface.mapCanvas()
        if rectangle.isEmpty():
            return
        crs = canvas.mapSettings().destinationCrs()
        self.drawn = DrawnArea(rectangle, crs)
        self._show_band(rectangle)
        dock = self._dock()
        if dock is not None:
            dock.area.setCurrentText("drawn rectangle")
            dock.show_area("drawn: " + describe_size(rectangle, crs, dock.layer_combo.currentLayer()))
        if self.previous_tool is not None:
            canvas.setMapTool(self.previous_tool)

    def _show_band(self, rectangle) -> None:
        """The drawn rectangle stays on the map (dashed) while it is the area to ask about."""
        from qgis.core import Qgis, QgsGeometry, QgsWkbTypes
        from qgis.gui import QgsRubberBand
        from qgis.PyQt.QtGui import QColor

        from .compat import enum_value

        if self.band is None:
            polygon = enum_value((Qgis, "GeometryType.Polygon"), (QgsWkbTypes, "GeometryType.PolygonGeometry"),
                                 (QgsWkbTypes, "PolygonGeometry"))
            self.band = QgsRubberBand(self.iface.mapCanvas(), polygon)
            self.band.setColor(QColor(255, 255, 255, 255))
            self.band.setFillColor(QColor(255, 255, 255, 0))
            self.band.setSecondaryStrokeColor(QColor(16, 16, 16, 170))
            self.band.setWidth(2)
            self.band.setLineStyle(Qt.PenStyle.DashLine)
        self.band.setToGeometry(QgsGeometry.fromRect(rectangle), None)
        self.band.show()

    def choice_changed(self, choice: str) -> None:
        """The band shows only while "drawn rectangle" is the dock's area."""
        if self.band is not None:
            self.band.setVisible(choice == "drawn rectangle")

    def forget(self) -> None:
        """The project was closed: its rectangle means nothing in the next one."""
        self.drawn = None
        self._clear_band()

    def unload(self) -> None:
        if self.tool is not None:
            canvas = self.iface.mapCanvas()
            if canvas.mapTool() is self.tool:
                canvas.unsetMapTool(self.tool)
            self.tool = None
        self._clear_band()

    def _clear_band(self) -> None:
        if self.band is not None:
            try:
                self.band.reset()
                self.iface.mapCanvas().scene().removeItem(self.band)
            except RuntimeError:
                pass
            self.band = None
