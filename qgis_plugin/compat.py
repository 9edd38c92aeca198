"""Differences between QGIS 3.22 (Qt5) and QGIS 4 (Qt6) that plain `qgis.PyQt` does not hide."""

from __future__ import annotations


def enum_value(*candidates):
    """The first existing enum of `candidates`, pairs (owner, "Dotted.Path"), newest first.

    QGIS moved many enums between 3.22 and 4.x (QgsWkbTypes.Polygon -> Qgis.WkbType.Polygon,
    QgsSymbolLayer.PropertyStrokeWidth -> QgsSymbolLayer.Property.StrokeWidth...).
    """
    for owner, path in candidates:
        value = owner
        try:
            for part in path.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        return value
    raise AttributeError(f"none of {[p for _, p in candidates]} exists")


def qaction_class():
    """QAction lives in QtGui on Qt6 and in QtWidgets on Qt5."""
    try:
        from qgis.PyQt.QtGui import QAction
    except ImportError:
        from qgis.PyQt.QtWidgets import QAction
    return QAction
