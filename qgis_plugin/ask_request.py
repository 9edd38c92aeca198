"""The dock's state -> one AskRequest (+ where to file its result), or the sentence saying why not.

Main thread (reads layers, the canvas and the project). Everything the task needs is copied into
plain dataclasses here: the raster's path, the bands and stretch the layer displays (or the
user's override), the pixel window of the chosen area, and the project's results GeoPackage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from qgis.core import QgsApplication, QgsCsException, QgsProject, QgsVectorLayer

from . import settings
from .area import window_for_features, window_for_rectangle
from .display_bands import choose, displayed_bands, parse_bands
from .params import AskRequest, StoreTarget
from .raster_check import check_layer
from .result_files import raster_ground
from .results_store import results_location


class RequestProblem(Exception):
    """Why the question cannot be sent (shown to the user as is)."""


@dataclass(frozen=True)
class DrawnArea:
    rectangle: object  # QgsRectangle
    crs: object  # QgsCoordinateReferenceSystem of the canvas when it was drawn


def build_request(dock, iface, drawn: Optional[DrawnArea] = None) -> tuple[AskRequest, StoreTarget, str]:
    """(request, store target, a line describing bands and area) for the dock's current state."""
    layer = dock.layer_combo.currentLayer()
    check = check_layer(layer)
    if not check.ok:
        raise RequestProblem(check.reason)
    question = dock.question.text().strip()
    if not question:
        raise RequestProblem("Type a question first.")
    try:
        ground = raster_ground(check.path)
    except (OSError, RuntimeError) as exc:
        raise RequestProblem(f"GDAL cannot open '{layer.name()}' here: {exc}") from None

    override, reason = parse_bands(dock.bands.text(), layer.bandCount())
    if reason:
        raise RequestProblem(reason)
    shown = displayed_bands(layer)
    bands, stretch = choose(shown, override)
    window, area_text = area_window(dock.area_choice(), layer, ground, iface, drawn)
    options = replace(dock.options(), bands=bands, stretch=stretch, window=window)

    crs = layer.crs()
    fallback = results_location("", "", QgsApplication.qgisSettingsDirPath())
    target = StoreTarget(results_gpkg(), ground.geotransform, crs.toWkt() if crs.isValid() else "", fallback, window)
    bands_text = f"bands {','.join(map(str, bands))}" if bands else "the backend's default bands"
    return AskRequest(check.path, question, options, layer.name()), target, f"{bands_text}; {area_text}"


def results_gpkg(project: Optional[QgsProject] = None) -> str:
    project = project or QgsProject.instance()
    return results_location(project.fileName(), settings.load_results_dir(), QgsApplication.qgisSettingsDirPath())


def area_window(choice: str, layer, ground, iface, drawn: Optional[DrawnArea]):
    """(pixel window or None for the whole raster, a description) of the dock's area choice."""
    if choice == "whole raster":
        return None, "the whole raster"
    raster_crs = layer.crs()
    if not raster_crs.isValid():
        # QGIS draws a raster without CRS untransformed, so its coordinates are the canvas's:
        # an area in another CRS (selected features) goes where the user sees it
        raster_crs = iface.mapCanvas().mapSettings().destinationCrs()
    try:
        if choice == "visible extent":
            canvas = iface.mapCanvas()
            window = window_for_rectangle(canvas.extent(), canvas.mapSettings().destinationCrs(), raster_crs, ground)
        elif choice == "drawn rectangle":
            if drawn is None:
                raise RequestProblem("Draw a rectangle on the map first (Draw... next to Area).")
            window = window_for_rectangle(drawn.rectangle, drawn.crs, raster_crs, ground)
        elif choice == "selected features":
            vector = iface.activeLayer()
            if not isinstance(vector, QgsVectorLayer) or vector.selectedFeatureCount() == 0:
                raise RequestProblem("Select features of a vector layer (and make it the active layer) first.")
            geometries = [f.geometry() for f in vector.getSelectedFeatures() if f.hasGeometry()]
            window = window_for_features(geometries, vector.crs(), raster_crs, ground)
        else:
            raise RequestProblem(f"unknown area {choice!r}")
    except QgsCsException as exc:
        raise RequestProblem(f"The {choice} cannot be reprojected to the raster's CRS: {exc}") from None
    if window is None:
        raise RequestProblem(f"The {choice} does not overlap '{layer.name()}'.")
    x0, y0, x1, y1 = window
    return window, f"{choice}: pixels {x0}..{x1} x {y0}..{y1} ({x1 - x0} x {y1 - y0})"
