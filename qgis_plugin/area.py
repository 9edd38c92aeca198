"""Ask about part of a raster: a map area -> the raster's pixel window (the `window` option).

The area (the visible extent, a drawn rectangle, the selected features) comes in some CRS, is
densified and reprojected to the raster layer's CRS, and every vertex goes through the inverse
of the raster's full geotransform (rotation included); the window is the pixel bounding box of
those vertices, widened to whole pixels and clipped to the raster. The answer's trace stays in
full-raster pixel coordinates, so nothing else changes downstream.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
)

Window = tuple[int, int, int, int]
AREAS = ("whole raster", "visible extent", "drawn rectangle", "selected features")


def inverse_geotransform(gt: Sequence[float]) -> tuple[float, ...]:
    """Map -> pixel affine transform (what gdal.InvGeoTransform gives), for any non-degenerate gt."""
    g0, g1, g2, g3, g4, g5 = (float(v) for v in gt)
    det = g1 * g5 - g2 * g4
    if det == 0:
        raise ValueError("the raster's geotransform cannot be inverted")
    i1, i2, i4, i5 = g5 / det, -g2 / det, -g4 / det, g1 / det
    return (-g0 * i1 - g3 * i2, i1, i2, -g0 * i4 - g3 * i5, i4, i5)


def pixel_window(points: Iterable[tuple[float, float]], gt: Sequence[float], width: int, height: int) -> Optional[Window]:
    """Pixel bounding box of map points, whole pixels, clipped to the raster; None if it misses it."""
    inv = inverse_geotransform(gt)
    xs, ys = [], []
    for x, y in points:
        xs.append(inv[0] + x * inv[1] + y * inv[2])
        ys.append(inv[3] + x * inv[4] + y * inv[5])
    if not xs:
        return None
    # a hair of tolerance, so an extent drawn exactly on pixel edges does not grow by a pixel
    x0 = max(0, math.floor(min(xs) + 1e-6))
    y0 = max(0, math.floor(min(ys) + 1e-6))
    x1 = min(int(width), math.ceil(max(xs) - 1e-6))
    y1 = min(int(height), math.ceil(max(ys) - 1e-6))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def area_points(geometry: QgsGeometry, source_crs: QgsCoordinateReferenceSystem,
                raster_crs: QgsCoordinateReferenceSystem, project: Optional[QgsProject] = None,
                segments: int = 32) -> list[tuple[float, float]]:
    """The area's vertices in the raster layer's CRS (edges densified, so curved reprojections hold)."""
    geometry = QgsGeometry(geometry)
    if geometry.isEmpty():
        return []
    box = geometry.boundingBox()
    step = max(box.width(), box.height()) / segments
    if step > 0:
        geometry = geometry.densifyByDistance(step)
    if source_crs.isValid() and raster_crs.isValid() and source_crs != raster_crs:
        transform = QgsCoordinateTransform(source_crs, raster_crs, project or QgsProject.instance())
        geometry.transform(transform)  # raises QgsCsException when the area cannot be reprojected
    return [(v.x(), v.y()) for v in geometry.vertices()]


def window_for_rectangle(rect: QgsRectangle, rect_crs: QgsCoordinateReferenceSystem, raster_crs, ground) -> Optional[Window]:
    points = area_points(QgsGeometry.fromRect(rect), rect_crs, raster_crs)
    return pixel_window(points, ground.geotransform, ground.width, ground.height)


def window_for_features(geometries: Iterable[QgsGeometry], crs: QgsCoordinateReferenceSystem, raster_crs, ground) -> Optional[Window]:
    points: list[tuple[float, float]] = []
    for geometry in geometries:
        points += area_points(geometry, crs, raster_crs)
    return pixel_window(points, ground.geotransform, ground.width, ground.height)


def _length(metres: float) -> str:
    return f"{metres / 1000:.3g} km" if metres >= 1000 else f"{metres:.3g} m"


def describe_size(rect: QgsRectangle, rect_crs: QgsCoordinateReferenceSystem, layer) -> str:
    """'3.68 x 4.52 km (368 x 452 pixels of 'name')': the drawn rectangle in ground units.

    Projected raster CRS: width and height in that CRS, converted from its units to metres.
    Geographic: ellipsoidal lengths of the rectangle's top and left edges. No CRS: pixels only.
    """
    from qgis.core import Qgis, QgsDistanceArea, QgsUnitTypes

    from .compat import enum_value
    from .result_files import raster_ground

    size = f"{rect.width():.6g} x {rect.height():.6g} map units"
    pixels = ""
    crs = layer.crs() if layer is not None else QgsCoordinateReferenceSystem()
    try:
        if crs.isValid() and not crs.isGeographic():
            box = rect
            if rect_crs.isValid() and rect_crs != crs:
                box = QgsCoordinateTransform(rect_crs, crs, QgsProject.instance()).transformBoundingBox(rect)
            metres = enum_value((Qgis, "DistanceUnit.Meters"), (QgsUnitTypes, "DistanceUnit.DistanceMeters"),
                                (QgsUnitTypes, "DistanceMeters"))
            factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), metres)
            w, h = box.width() * factor, box.height() * factor
            size = f"{_length(w)} x {_length(h)}"
        elif crs.isValid() and rect_crs.isValid():
            measure = QgsDistanceArea()
            measure.setSourceCrs(rect_crs, QgsProject.instance().transformContext())
            measure.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
            top_left = QgsPointXY(rect.xMinimum(), rect.yMaximum())
            w = measure.measureLine(top_left, QgsPointXY(rect.xMaximum(), rect.yMaximum()))
            h = measure.measureLine(top_left, QgsPointXY(rect.xMinimum(), rect.yMinimum()))
            size = f"{_length(w)} x {_length(h)} (on the ellipsoid)"
        if layer is not None and layer.source():
            ground = raster_ground(layer.source())
            window = window_for_rectangle(rect, rect_crs, crs, ground)
            if window is None:
                pixels = ", off the raster"
            else:
                x0, y0, x1, y1 = window
                pixels = f" = {x1 - x0} x {y1 - y0} pixels of '{layer.name()}'"
    except Exception:  # noqa: BLE001 - a description must never stop the drawing (QgsCsException, GDAL)
        pass
    return size + pixels
