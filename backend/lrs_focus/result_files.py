"""A result as files that GIS tools place on the raster: RFC 7946 GeoJSON, or a GeoPackage with its answer.

One module for both sides, like heatmap.py: the CLI (`ask --out`) imports `lrs_focus.result_files`,
and the QGIS plugin ships the same file (qgis_plugin/result_files.py is a symlink) to store every
answer in the project's GeoPackage. Standard library + GDAL's `osgeo` only, and GDAL's global
exception mode is left alone (QGIS shares it): return values are checked here.

- GeoJSON follows RFC 7946: WGS 84 longitude/latitude (reprojected with osr in traditional GIS
  axis order, tile edges densified first so they stay true after reprojection), no `crs` member,
  written by GDAL's GeoJSON driver with RFC7946=YES (right-hand winding, antimeridian cut, bbox).
  A raster without a CRS has no way to WGS 84, so GeoJSON is refused with a pointer to .gpkg.
- A GeoPackage layer is in the raster's CRS, also one without an EPSG code (GDAL stores its WKT).
  For a raster without a CRS the layer gets srs_id -1, "Undefined Cartesian SRS": QGIS then draws
  it untransformed, on top of the raster (pixel x, -pixel y), whatever the project's CRS; srs_id 0,
  GDAL's default, is an undefined *geographic* CRS that QGIS would reproject off the raster.
- Both keep the pixel window (x0, y0, x1, y1) of every tile as attributes, and the question and
  answer: a foreign member `lrs_focus` in GeoJSON, a row of the `lrs_focus_results` table in GPKG.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

GEOJSON_SUFFIXES = (".geojson", ".json")
GPKG_SUFFIXES = (".gpkg",)
RESULTS_TABLE = "lrs_focus_results"
UNGEOREFERENCED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
#: Tile edges are split into this many segments before reprojection to WGS 84.
EDGE_SEGMENTS = 8

#: (name, OGR type name) of the tile attributes, in file order.
TILE_FIELDS = (
    ("level", "Integer"), ("row", "Integer"), ("col", "Integer"),
    ("x0", "Real"), ("y0", "Real"), ("x1", "Real"), ("y1", "Real"),
    ("score", "Real"), ("rank", "Integer"), ("focus_rank", "Integer"),
    ("kept", "Boolean"), ("encoded", "Boolean"), ("job_id", "String"),
)
#: Columns of the results table (one row per answer), all text but the numbers.
RESULT_FIELDS = (
    ("job_id", "String"), ("question", "String"), ("answer", "String"), ("raster", "String"),
    ("tiles_layer", "String"), ("heatmap", "String"), ("mode", "String"), ("stopped_at", "Integer"),
    ("focus_tiles", "Integer"), ("model", "String"), ("device", "String"), ("random_weights", "Boolean"),
    ("llm_vision_tokens", "Integer"), ("seconds", "Real"), ("created", "String"),
)


class ResultFileError(ValueError):
    """The result cannot be written in the asked format (the message says what to do instead)."""


@dataclass(frozen=True)
class RasterGround:
    """Where a raster's pixels are: its geotransform (QGIS's y-down-negative one when it has none) and CRS."""

    geotransform: tuple[float, ...]
    crs_wkt: str  # "" without a CRS (or without a geotransform: then a CRS means nothing)
    georeferenced: bool
    width: int = 0  # pixels, as GDAL reads the file (QGIS warps rotated rasters to other sizes)
    height: int = 0


def raster_ground(path: str) -> RasterGround:
    """The geotransform and CRS GDAL (and so QGIS) uses for `path`; raises OSError if it does not open."""
    from osgeo import gdal

    ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY)
    if ds is None:
        raise OSError(f"GDAL cannot open {path} as a raster")
    gt = ds.GetGeoTransform(can_return_null=True)
    srs = ds.GetSpatialRef()
    wkt = srs.ExportToWkt() if (srs is not None and gt is not None) else ""
    ground = RasterGround(tuple(gt) if gt is not None else UNGEOREFERENCED, wkt, gt is not None,
                          ds.RasterXSize, ds.RasterYSize)
    ds = None
    return ground


def result_summary(doc: dict[str, Any], question: str = "", tiles_layer: str = "", heatmap: str = "",
                   seconds: Optional[float] = None) -> dict[str, Any]:
    """The row of the results table (and the GeoJSON `lrs_focus` member) for one result document."""
    trace = doc.get("trace") or {}
    model = doc.get("model") or {}
    features = (doc.get("features") or {}).get("features") or []
    timings = doc.get("timings") or {}
    return {
        "job_id": str(doc.get("job_id") or ""),
        "question": str(doc.get("question") or question),
        "answer": str(doc.get("answer") or ""),
        "raster": str((doc.get("raster") or {}).get("path") or ""),
        "tiles_layer": tiles_layer,
        "heatmap": heatmap,
        "mode": str(trace.get("mode") or (doc.get("options") or {}).get("mode") or ""),
        "stopped_at": trace.get("stopped_at"),
        "focus_tiles": sum(1 for f in features if (f.get("properties") or {}).get("focus_rank") is not None),
        "model": str(model.get("name") or ""),
        "device": str(model.get("device") or ""),
        "random_weights": bool(model.get("random_weights")),
        "llm_vision_tokens": (doc.get("counts") or {}).get("llm_vision_tokens"),
        "seconds": float(seconds if seconds is not None else timings.get("total") or 0.0),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def kind_of(path: str) -> str:
    """'geojson' or 'gpkg' from the file name; ResultFileError for anything else."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix in GEOJSON_SUFFIXES:
        return "geojson"
    if suffix in GPKG_SUFFIXES:
        return "gpkg"
    raise ResultFileError(f"{path}: write .geojson (RFC 7946, WGS 84) or .gpkg (the raster's CRS), not {suffix or 'no suffix'!r}")


def check_writable(path: str) -> None:
    """Refuse a file that cannot be created, before the question runs (ResultFileError)."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        raise ResultFileError(f"cannot write {path}: it is a folder")
    if not os.path.isdir(folder):
        raise ResultFileError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(full) and not os.access(full, os.W_OK)):
        raise ResultFileError(f"cannot write {path}: permission denied")


def no_wgs84_message(path: str) -> str:
    stem = os.path.splitext(str(path))[0]
    return (f"{path}: the raster has no CRS, so its tiles have no WGS 84 position and RFC 7946 GeoJSON "
            f"cannot hold them; write {stem}.gpkg instead (pixel coordinates, x right and y negative "
            "downward, which is where QGIS draws a raster without georeferencing)")


def write_result(path: str, doc: dict[str, Any], crs_wkt: Optional[str] = None, question: str = "") -> str:
    """Write the result's tiles (and answer) to `path` (.geojson or .gpkg, replacing it); returns the path."""
    wkt = doc.get("crs_wkt", "") if crs_wkt is None else crs_wkt
    return write_tiles(path, doc.get("features") or {"features": []}, wkt, result_summary(doc, question))


def write_tiles(path: str, collection: dict[str, Any], crs_wkt: str, summary: dict[str, Any]) -> str:
    """Tiles + summary row to a new .geojson or .gpkg file (an existing one is replaced)."""
    if kind_of(path) == "geojson":
        return write_geojson(path, collection, crs_wkt, summary)
    if os.path.exists(path):
        os.remove(path)
    return write_geopackage(path, collection, crs_wkt, dict(summary, tiles_layer="focus_tiles"), "focus_tiles")


# -- GeoJSON (RFC 7946) -------------------------------------------------------------------------
def write_geojson(path: str, collection: dict[str, Any], crs_wkt: str, summary: dict[str, Any]) -> str:
    from osgeo import ogr

    if not crs_wkt:
        raise ResultFileError(no_wgs84_message(path))
    source, wgs84 = _srs(crs_wkt), _srs("EPSG:4326")
    transform = _transform(source, wgs84)
    if os.path.exists(path):
        os.remove(path)
    ds = ogr.GetDriverByName("GeoJSON").CreateDataSource(str(path))
    if ds is None:
        raise OSError(f"GDAL cannot create {path}")
    layer = ds.CreateLayer("focus_tiles", wgs84, ogr.wkbPolygon, ["RFC7946=YES", "WRITE_NAME=NO"])
    _add_fields(layer, TILE_FIELDS)
    for feature in collection.get("features") or []:
        geometry = _geometry(feature)
        if geometry is None:
            continue
        _densify(geometry)
        if geometry.Transform(transform) != 0:
            raise ResultFileError(f"{path}: a tile cannot be reprojected to WGS 84")
        _add_feature(layer, feature, geometry)
    ds = None
    # RFC 7946 allows foreign members: the question and answer travel with the tiles.
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    document["lrs_focus"] = summary
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False)
    return str(path)


# -- GeoPackage ---------------------------------------------------------------------------------
def write_geopackage(path: str, collection: dict[str, Any], crs_wkt: str, summary: dict[str, Any],
                     layer_name: str = "focus_tiles") -> str:
    """Add (or replace) the tile layer `layer_name` in `path` (created if missing), and a results row."""
    from osgeo import ogr

    exists = os.path.exists(path)
    ds = ogr.Open(str(path), 1) if exists else ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    if ds is None:
        raise OSError(f"GDAL cannot {'update' if exists else 'create'} the GeoPackage {path}")
    try:
        srs = _srs(crs_wkt) if crs_wkt else None
        layer = ds.CreateLayer(layer_name, srs, ogr.wkbPolygon,
                               ["OVERWRITE=YES", f"DESCRIPTION={summary.get('question', '')[:500]}"])
        if layer is None:
            raise OSError(f"GDAL cannot create layer {layer_name} in {path}")
        _add_fields(layer, TILE_FIELDS)
        layer.StartTransaction()
        for feature in collection.get("features") or []:
            geometry = _geometry(feature)
            if geometry is not None:
                _add_feature(layer, feature, geometry)
        layer.CommitTransaction()
        if srs is None:
            _set_undefined_cartesian(ds, layer_name)
        _append_result_row(ds, summary)
    finally:
        ds = None
    return str(path)


def _set_undefined_cartesian(ds, table: str) -> None:
    """GDAL < 3.9 has no layer option for srs_id -1, so the GeoPackage's own metadata is updated."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", table):  # OGR's ExecuteSQL takes no bound parameters
        raise ResultFileError(f"layer name {table!r}: letters, digits, _ and - only")
    for meta in ("gpkg_geometry_columns", "gpkg_contents"):
        ds.ExecuteSQL(f"UPDATE {meta} SET srs_id = -1 WHERE table_name = '{table}'")  # nosec B608: checked name


def _append_result_row(ds, summary: dict[str, Any]) -> None:
    from osgeo import ogr

    table = ds.GetLayerByName(RESULTS_TABLE)
    if table is None:
        table = ds.CreateLayer(RESULTS_TABLE, None, ogr.wkbNone,
                               ["DESCRIPTION=LRS Focus: one row per answer; tiles_layer names its tile layer"])
        _add_fields(table, RESULT_FIELDS)
    row = ogr.Feature(table.GetLayerDefn())
    for name, _ in RESULT_FIELDS:
        value = summary.get(name)
        if value is not None and row.GetFieldIndex(name) >= 0:
            row.SetField(name, int(value) if isinstance(value, bool) else value)
    if table.CreateFeature(row) != 0:
        raise OSError("GDAL cannot add the result row")


def read_results(path: str) -> list[dict[str, Any]]:
    """The rows of the results table of a GeoPackage (oldest first); [] when it has none."""
    from osgeo import ogr

    ds = ogr.Open(str(path), 0)
    if ds is None:
        return []
    table = ds.GetLayerByName(RESULTS_TABLE)
    rows = []
    if table is not None:
        for feature in table:
            rows.append({name: feature.GetField(name) for name, _ in RESULT_FIELDS
                         if feature.GetFieldIndex(name) >= 0})
    ds = None
    return rows


def read_tiles(path: str, layer_name: str) -> tuple[dict[str, Any], str]:
    """A stored tile layer back as (GeoJSON FeatureCollection in its CRS, CRS WKT or "")."""
    from osgeo import ogr

    ds = ogr.Open(str(path), 0)
    layer = ds.GetLayerByName(layer_name) if ds is not None else None
    if layer is None:
        raise ResultFileError(f"{path} has no layer {layer_name!r}")
    srs = layer.GetSpatialRef()
    wkt = srs.ExportToWkt() if srs is not None and not srs.IsLocal() else ""
    features = []
    for feature in layer:
        props = {name: feature.GetField(name) for name, _ in TILE_FIELDS}
        props["window"] = [props.pop(k) for k in ("x0", "y0", "x1", "y1")]
        for name in ("kept", "encoded"):
            props[name] = bool(props[name])
        geometry = feature.GetGeometryRef()
        features.append({"type": "Feature", "properties": props,
                         "geometry": json.loads(geometry.ExportToJson()) if geometry is not None else None})
    ds = None
    return {"type": "FeatureCollection", "features": features}, wkt


# -- shared helpers -----------------------------------------------------------------------------
def _srs(definition: str):
    from osgeo import osr

    srs = osr.SpatialReference()
    if srs.SetFromUserInput(definition) != 0:
        raise ResultFileError("GDAL cannot read the raster's CRS definition")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x = easting / longitude, always
    return srs


def _transform(source, target):
    from osgeo import osr

    transform = osr.CoordinateTransformation(source, target)
    if transform is None:
        raise ResultFileError("no coordinate operation from the raster's CRS to WGS 84")
    return transform


def _geometry(feature: dict[str, Any]):
    from osgeo import ogr

    geometry = feature.get("geometry")
    if not geometry:
        return None
    return ogr.CreateGeometryFromJson(json.dumps(geometry))


def _densify(geometry) -> None:
    """Split every edge into at least EDGE_SEGMENTS parts, so reprojected tiles keep their true
    (curved) outline in WGS 84."""
    ring = geometry.GetGeometryRef(0)
    points = ring.GetPoints() if ring is not None else []
    edges = [((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 for (x0, y0, *_), (x1, y1, *_) in zip(points, points[1:])]
    edges = [e for e in edges if e > 0]
    if edges:
        geometry.Segmentize(min(edges) / EDGE_SEGMENTS * (1 - 1e-9))


def _add_fields(layer, fields) -> None:
    from osgeo import ogr

    for name, kind in fields:
        if kind == "Boolean":
            definition = ogr.FieldDefn(name, ogr.OFTInteger)
            definition.SetSubType(ogr.OFSTBoolean)
        else:
            definition = ogr.FieldDefn(name, getattr(ogr, f"OFT{kind}"))
        if layer.CreateField(definition) != 0:
            raise OSError(f"GDAL cannot add the field {name}")


def _add_feature(layer, feature: dict[str, Any], geometry) -> None:
    from osgeo import ogr

    props = feature.get("properties") or {}
    window = list(props.get("window") or [None] * 4)
    values = dict(props, x0=window[0], y0=window[1], x1=window[2], y1=window[3])
    out = ogr.Feature(layer.GetLayerDefn())
    for name, kind in TILE_FIELDS:
        value = values.get(name)
        if value is None:
            out.SetFieldNull(name)  # written as null (GeoJSON would otherwise drop the key)
            continue
        out.SetField(name, int(bool(value)) if kind == "Boolean" else value)
    out.SetGeometry(geometry)
    if layer.CreateFeature(out) != 0:
        raise OSError("GDAL cannot write a tile feature")
