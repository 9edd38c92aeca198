"""Open a raster and the files `lrs-focus ask --out/--heatmap` wrote for it, as a user would,
and report where QGIS puts them, in the raster layer's CRS (the common CRS of the comparison).

usage: files_land.py SPEC.json
SPEC: [{"name", "raster", "geojson" (or null), "gpkg", "heatmap" (or null),
        "probes": [[x, y], ...] (points in the raster's CRS where the heatmap is read)}, ...]
Each case gets a fresh project; layers are added in the order raster, gpkg, geojson, heatmap,
with QGIS's default handling of layers (no CRS assigned by hand).
"""

import json
import sys

from qgis_env import emit, rect, start_qgis

app = start_qgis()
from qgis.core import (  # noqa: E402
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRaster,
    QgsRasterLayer,
    QgsVectorLayer,
)

project = QgsProject.instance()
report = []
for case in json.load(open(sys.argv[1], encoding="utf-8")):
    project.clear()
    raster = QgsRasterLayer(case["raster"], "raster", "gdal")
    project.addMapLayer(raster)
    out = {"name": case["name"], "raster_valid": raster.isValid(), "raster_crs_valid": raster.crs().isValid(),
           "raster_crs": raster.crs().authid(), "raster_extent": rect(raster.extent())}

    def to_raster(layer):
        """Transform from the layer's CRS to the raster's, as the map canvas does (none if either is unset)."""
        transform = QgsCoordinateTransform(layer.crs(), raster.crs(), project)
        return transform, transform.isShortCircuited()

    for kind, uri in (("gpkg", case["gpkg"] and f"{case['gpkg']}|layername=focus_tiles"), ("geojson", case["geojson"])):
        if not uri:
            continue
        layer = QgsVectorLayer(uri, kind, "ogr")
        project.addMapLayer(layer)
        transform, identity = to_raster(layer)
        feats = {}
        for f in layer.getFeatures():
            geometry = QgsGeometry(f.geometry())
            if not identity:
                geometry.transform(transform)  # the outline, not its bounding box (which would grow)
            box = geometry.boundingBox()
            feats[f"{f['level']},{f['row']},{f['col']}"] = {"bbox": rect(box), "window": [f[k] for k in ("x0", "y0", "x1", "y1")],
                                                             "focus_rank": None if str(f["focus_rank"]) == "NULL" else f["focus_rank"]}
        out[kind] = {"valid": layer.isValid(), "crs": layer.crs().authid(), "crs_valid": layer.crs().isValid(),
                     "crs_description": layer.crs().description(), "identity": identity, "features": feats}
    if case["heatmap"]:
        heat = QgsRasterLayer(case["heatmap"], "heatmap", "gdal")
        project.addMapLayer(heat)
        transform, identity = to_raster(heat)
        back = QgsCoordinateTransform(raster.crs(), heat.crs(), project)
        values = []
        for x, y in case["probes"]:
            point = QgsPointXY(x, y) if identity else back.transform(QgsPointXY(x, y))
            result = heat.dataProvider().identify(point, QgsRaster.IdentifyFormatValue).results()
            values.append(result.get(1))
        out["heatmap"] = {"valid": heat.isValid(), "crs_valid": heat.crs().isValid(), "identity": identity,
                          "extent": rect(heat.extent() if identity else transform.transformBoundingBox(heat.extent())),
                          "size": [heat.width(), heat.height()], "probe_values": values}
    out["project_crs_valid"] = project.crs().isValid()
    report.append(out)
emit({"cases": report})
