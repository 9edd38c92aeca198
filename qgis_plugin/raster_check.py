"""Which layers the backend can read, and a sentence saying why when it cannot.

The backend opens the raster itself with GDAL, on the same machine, from a path, and
`lrs-focus serve` opens plain local files of a few formats only (its access policy,
`lrs_focus.access.DEFAULT_DRIVERS`): no archive members (/vsizip/...), no GDAL connection
strings (GPKG:file:table), no GeoPackage, NetCDF, ERDAS... So only layers of QGIS's `gdal`
provider whose source is such a file are sent; web services (WMS/WMTS/XYZ, WCS), database
rasters, memory and vector layers, files in archives and other formats are refused here with
the reason and a way out, instead of a puzzling error from the backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from qgis.core import QgsMapLayer, QgsProviderRegistry, QgsRasterLayer

EXPORT_HINT = "Save it as a GeoTIFF first (right-click the layer > Export > Save As...)."
#: GDAL drivers `lrs-focus serve` opens (a copy of lrs_focus.access.DEFAULT_DRIVERS, checked by a test).
SERVED_DRIVERS = frozenset({"GTiff", "COG", "JP2OpenJPEG", "JPEG", "PNG", "GIF", "BMP", "WEBP", "VRT"})
ARCHIVE_PREFIXES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")


@dataclass(frozen=True)
class RasterCheck:
    """`path` is what the backend opens; `reason` says why the layer cannot be asked."""

    path: Optional[str] = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.path is not None


def check_layer(layer: Optional[QgsMapLayer]) -> RasterCheck:
    if layer is None:
        return RasterCheck(reason="No layer selected: add a raster file to the project first.")
    name = layer.name()
    if not isinstance(layer, QgsRasterLayer):
        return RasterCheck(reason=f"'{name}' is not a raster layer; only raster files can be asked.")
    provider = layer.providerType()
    if provider != "gdal":
        return RasterCheck(
            reason=f"'{name}' comes from the '{provider}' provider (a web, database or generated "
            f"source), but the backend reads raster files only. {EXPORT_HINT}"
        )
    if not layer.isValid():
        return RasterCheck(reason=f"'{name}' is not a valid layer (its source could not be opened).")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or ""
    prefix = parts.get("vsiPrefix") or next((p for p in ARCHIVE_PREFIXES if path.startswith(p)), "")
    if prefix in ARCHIVE_PREFIXES:
        return RasterCheck(reason=f"'{name}' is read from inside an archive ({prefix.strip('/')[3:]}), but the "
                                  f"backend reads plain raster files only. Extract it, or {_lower(EXPORT_HINT)}")
    if prefix or path.startswith("/vsi"):
        kind = (prefix or path).split("/")[1]
        return RasterCheck(reason=f"'{name}' is a remote GDAL source ({kind}). {EXPORT_HINT}")
    if parts.get("layerName"):
        return RasterCheck(reason=f"'{name}' is a table of a {layer.source().split(':')[0]} container, but the "
                                  f"backend reads plain raster files only. {EXPORT_HINT}")
    if not path or not os.path.isfile(path):
        return RasterCheck(reason=f"'{name}' is not a local file ({path or layer.source()!r}). {EXPORT_HINT}")
    driver = _driver(path)
    if driver not in SERVED_DRIVERS:
        return RasterCheck(reason=f"'{name}' is a {driver or 'format'} file, which the backend does not read "
                                  f"(it reads GeoTIFF, JPEG 2000, JPEG, PNG, GIF, BMP, WebP and VRT). {EXPORT_HINT}")
    return RasterCheck(path=path)


def _driver(path: str) -> str:
    """GDAL's short name for the file's format ("" if GDAL does not recognise it)."""
    from osgeo import gdal

    try:
        driver = gdal.IdentifyDriver(path)
    except RuntimeError:  # GDAL with exceptions on
        return ""
    return driver.ShortName if driver is not None else ""


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]
