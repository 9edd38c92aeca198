"""One line for the dock when the raster layer has no CRS (no QGIS import: tested without it).

QGIS draws a raster without CRS untransformed, in its map units (a geotransform without CRS) or
in pixels with y negative downward (no georeferencing at all), whatever the project CRS; the
answer's layers are drawn the same way (result_layers.follow_raster_crs), so they sit exactly on
the raster, but neither can be placed on a georeferenced map. The user should know that before
asking, rather than wonder why a basemap does not line up.
"""

from __future__ import annotations

from typing import Optional


def crs_notice(path: Optional[str], layer_has_crs: bool) -> str:
    """The notice for the raster layer read from `path`; "" when it has a CRS (or no readable file).

    It names no layer: it sits under the dock's Raster box, and a name would go stale on renaming."""
    if layer_has_crs or not path:
        return ""
    from .result_files import raster_ground

    try:
        georeferenced = raster_ground(path).georeferenced
    except (OSError, RuntimeError):  # RuntimeError: GDAL with exceptions on
        return ""
    if not georeferenced:
        return ("This raster has no georeferencing: answers are drawn in its pixel units (y negative "
                "downward), over the raster, not on a georeferenced map.")
    return "This raster has no CRS: answers are drawn in its own map units, over the raster, not on a georeferenced map."
