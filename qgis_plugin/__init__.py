"""LRS Focus: ask a large raster a question from QGIS and see where the model looked.

QGIS imports this package at start-up, so it stays tiny: the plugin class (and with it
pyzmq and every QGIS module) is imported only when QGIS calls `classFactory`.
"""


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    from .plugin import LrsFocusPlugin

    return LrsFocusPlugin(iface)
