"""Which layers the backend can read, and a sentence saying why when it cannot.

The backend opens the raster itself with GDAL, on the same machine, from a path. So only
layers of QGIS's `gdal` provider whose source is a local file (or a GDAL connection string
around one, e.g. a GeoPackage raster table) can be sent; web services (WMS/WMTS/XYZ, WCS),
database rasters, memory and vector layers are refused with the reason and a way out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from qgis.core import QgsMapLayer, QgsProviderRegistry, QgsRasterLayer

EXPORT_HINT = "Save it as a GeoTIFF first (right-click the layer > Export > Save As...)."


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
    if path.startswith("/vsi") and not path.startswith(("/vsizip/", "/vsitar/", "/vsigzip/")):
        return RasterCheck(reason=f"'{name}' is a remote GDAL source ({path.split('/')[1]}). {EXPORT_HINT}")
    local = path
    for prefix in ("/vsizip/", "/vsitar/", "/vsigzip/"):
        if local.startswith(prefix):
            local = _archive_path(local[len(prefix) - 1 :])
    if not local or not os.path.isfile(local):
        return RasterCheck(reason=f"'{name}' is not a local file ({path or layer.source()!r}). {EXPORT_HINT}")
    # A GDAL connection string (GPKG:file:table, NETCDF:file:var) is opened as is by the backend.
    return RasterCheck(path=layer.source() if parts.get("layerName") else path)


def _archive_path(inner: str) -> str:
    """'/data/a.zip/b.tif' -> '/data/a.zip' (the archive that must exist locally)."""
    for ext in (".zip", ".tar", ".tgz", ".tar.gz", ".gz"):
        at = inner.lower().find(ext)
        if at >= 0:
            return inner[: at + len(ext)]
    return inner
