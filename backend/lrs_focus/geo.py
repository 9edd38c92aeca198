"""Pixel windows -> polygons in the raster's CRS, and the focus trace -> GeoJSON features.

The full 6-term geotransform is applied (rotation/shear included), so tiles of a rotated raster
land where GDAL and QGIS put its pixels. Rasters without georeferencing use (0, 1, 0, 0, 0, -1)
(see `raster.RasterSource.geotransform`): QGIS draws them with y negative downward.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from shapely.geometry import Polygon, mapping
from shapely.geometry.polygon import orient

UNGEOREFERENCED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def pixel_to_map(geotransform: Sequence[float], x: float, y: float) -> tuple[float, float]:
    """GDAL's affine pixel/line -> map transform (same as gdal.ApplyGeoTransform)."""
    g0, g1, g2, g3, g4, g5 = geotransform
    return (g0 + x * g1 + y * g2, g3 + x * g4 + y * g5)


def window_polygon(window: Iterable[float], geotransform: Sequence[float]) -> Polygon:
    """Polygon of a pixel window (x0, y0, x1, y1) in map coordinates, counter-clockwise (RFC 7946)."""
    x0, y0, x1, y1 = (float(v) for v in window)
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return orient(Polygon([pixel_to_map(geotransform, x, y) for x, y in corners]), sign=1.0)


def crs_authority(crs_wkt: str) -> str:
    """'EPSG:32618'-style name of a WKT CRS, or '' (GDAL's osr does the lookup)."""
    if not crs_wkt:
        return ""
    from osgeo import osr

    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(crs_wkt)
        srs.AutoIdentifyEPSG()
    except RuntimeError:
        return ""
    name, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{name}:{code}" if name and code else ""


def tile_feature(tile: dict[str, Any], level: int, geotransform: Sequence[float], job_id: str = "",
                 focus_rank: Optional[int] = None) -> dict[str, Any]:
    """One GeoJSON Feature for a traced tile: DESIGN 5's attributes, less the question (the result
    document carries it once), plus `focus_rank` (1..n among the kept tiles of the final level)."""
    window = [int(v) if float(v).is_integer() else float(v) for v in tile["window"]]
    score = tile.get("score")
    return {
        "type": "Feature",
        "geometry": mapping(window_polygon(window, geotransform)),
        "properties": {
            "level": int(level),
            "row": int(tile["row"]),
            "col": int(tile["col"]),
            "window": window,
            "score": None if score is None else float(score),
            "rank": tile.get("rank"),
            "focus_rank": focus_rank,
            "kept": bool(tile.get("kept", False)),
            "encoded": bool(tile.get("encoded", False)),
            "job_id": job_id,
        },
    }


def focus_ranks(trace: dict[str, Any]) -> dict[tuple[int, int], int]:
    """(row, col) -> 1..n for the kept tiles of `trace.stopped_at`, the tiles the LLM finally saw.

    The trace's own `rank` orders every scored tile of a level, so at the final level the kept
    tiles' ranks need not run 1..n, and coarser levels repeat the same numbers; a map labelled
    with those reads wrong. Order: higher score first, then the trace's rank, then row/col.
    """
    final = trace.get("stopped_at")
    for level in trace.get("levels", []):
        if level.get("level") == final:
            kept = [t for t in level.get("tiles", []) if t.get("kept")]
            kept.sort(key=lambda t: (-float(t.get("score") or 0.0), t.get("rank") or 0, t["row"], t["col"]))
            return {(int(t["row"]), int(t["col"])): i + 1 for i, t in enumerate(kept)}
    return {}


def trace_to_features(trace: dict[str, Any], geotransform: Sequence[float], crs_wkt: str,
                      job_id: str = "") -> dict[str, Any]:
    """GeoJSON FeatureCollection of the focused tiles: one Polygon per tile the model encoded
    (kept tiles are a subset), at every level, in the raster CRS. The trace itself also lists the
    tiles that were never looked at; as map features they would only bury the focus.

    Coordinates are in the raster's CRS (not WGS 84): the collection carries `crs_wkt` and, when
    the CRS has an authority code, the legacy `crs` member. Files for other tools are written by
    `result_files` (RFC 7946 GeoJSON, GeoPackage). The question is not repeated on every feature:
    the result document holds it once.
    """
    gt = tuple(geotransform) if geotransform else UNGEOREFERENCED
    ranks = focus_ranks(trace)
    final = trace.get("stopped_at")
    features = []
    for level in trace.get("levels", []):
        index = level.get("level", 0)
        for tile in level.get("tiles", []):
            if tile.get("encoded") or tile.get("kept"):
                rank = ranks.get((int(tile["row"]), int(tile["col"]))) if index == final else None
                features.append(tile_feature(tile, index, gt, job_id, rank))
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features, "crs_wkt": crs_wkt or ""}
    authority = crs_authority(crs_wkt)
    if authority:
        collection["crs"] = {"type": "name", "properties": {"name": authority}}
    return collection
