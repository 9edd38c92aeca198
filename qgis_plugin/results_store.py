"""Every answer filed in a GeoPackage, so the map's result layers survive closing the project.

Where: the folder of the `results_dir` setting if set, else beside the project file
(`<project>_lrs_focus.gpkg`), else (an unsaved project) the plugin's folder in the QGIS profile.
Each answer adds one tile layer (`tiles_<time>_<job>`) in the raster layer's CRS, one row of
the `lrs_focus_results` table (question, answer, model...) and, when a part of the raster was
asked, the outline of that area (`area_<time>_<job>`). Its score heatmap is a Float32 GeoTIFF in
the folder `<gpkg name>_heatmaps/` next to it (GeoPackage rasters cannot hold a rotated grid):
the whole grid (`heatmap_<key>.tif`, what Export writes) and the same grid split by the level
that scored each cell (`heatmap_<key>_level<k>.tif`: the final level where it looked, each
coarser level only where no finer level did), which is what the map shows.
`store_result` touches no QGIS object, so the task runs it in its worker thread.

`move_results` carries answers filed elsewhere (the profile's GeoPackage of unsaved projects,
another project's) into the project's own GeoPackage when the project is saved, so a copied
project folder holds everything its layers read.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import heatmap, result_files
from .params import StoreTarget

#: Upper quantiles of the heatmap classes, low to high (the class above the last one is "top 3 %").
HEAT_QUANTILES = (0.5, 0.75, 0.9, 0.97)


@dataclass(frozen=True)
class HeatLayer:
    """The heatmap cells one level scored where no finer level did (the map's heatmap layers)."""

    level: int
    path: str
    breaks: tuple[float, ...]  # values at HEAT_QUANTILES of its own cells, then the maximum


@dataclass(frozen=True)
class StoredResult:
    gpkg_path: str
    tiles_layer: str
    heatmap_path: str  # "" when the result has no heatmap (thumbnail mode); the whole grid
    heatmap_level: Optional[int]
    heatmap_breaks: tuple[float, ...]  # values at HEAT_QUANTILES, then the maximum
    levels: tuple[int, ...]  # levels that have tiles, finest first
    stopped_at: Optional[int]
    focus_tiles: int
    warning: str = ""  # e.g. the heatmap could not be decoded; the tiles were still stored
    heat_layers: tuple[HeatLayer, ...] = ()  # finest level first
    final_tiles: int = 0  # tiles of the final level's grid (over the asked area)
    area_layer: str = ""  # outline of the asked area, "" for the whole raster

    @property
    def every_tile_kept(self) -> bool:
        """Nothing was pruned (a small raster or area): ranks and outlines carry no information."""
        return self.focus_tiles > 0 and self.focus_tiles >= self.final_tiles


def results_location(project_file: str, results_dir: str, profile_dir: str) -> str:
    """The GeoPackage that files this project's answers."""
    stem = os.path.splitext(os.path.basename(project_file))[0] if project_file else "unsaved_project"
    name = f"{_safe(stem)}_lrs_focus.gpkg"
    if results_dir:
        return os.path.join(results_dir, name)
    if project_file:
        return os.path.join(os.path.dirname(os.path.abspath(project_file)), name)
    # never the shared temp folder (anyone could plant a link there): the user's own folders only
    return os.path.join(profile_dir or os.path.join(os.path.expanduser("~"), ".local", "share"), "lrs_focus", name)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "result"


def store_result(target: StoreTarget, doc: dict[str, Any], question: str, seconds: float) -> StoredResult:
    """Write the tiles (+ answer row) and the heatmap; raises OSError/ValueError when it cannot."""
    folder = os.path.dirname(target.gpkg_path)
    os.makedirs(folder, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    key = f"{stamp}_{_safe(str(doc.get('job_id') or 'local'))[:8]}"
    layer = f"tiles_{key}"
    warning, heat_path, heat_level, breaks, heat_layers = "", "", None, (), ()
    props = [(f.get("properties") or {}) for f in (doc.get("features") or {}).get("features") or []]
    try:
        grid = heatmap.decode(doc.get("heatmap"))
    except heatmap.HeatmapError as exc:
        grid, warning = None, f"the result's heatmap is unreadable ({exc}); tiles only"
    if grid is not None:
        heat_dir = heatmaps_folder(target.gpkg_path)
        os.makedirs(heat_dir, exist_ok=True)
        heat_path = heatmap.write_geotiff(os.path.join(heat_dir, f"heatmap_{key}.tif"), grid,
                                          target.geotransform, target.crs_wkt)
        heat_level, breaks = grid.level, heat_breaks(grid.values)
        heat_layers = _per_level(grid, props, heat_path, target)
    summary = result_files.result_summary(doc, question, layer, os.path.relpath(heat_path, folder) if heat_path else "",
                                          seconds)
    result_files.write_geopackage(target.gpkg_path, doc.get("features") or {}, target.crs_wkt, summary, layer)
    area = ""
    if target.area_window is not None:
        area = f"area_{key}"
        write_area(target.gpkg_path, area, target.area_window, target.geotransform, target.crs_wkt)
    stopped_at = (doc.get("trace") or {}).get("stopped_at")
    levels = tuple(sorted({int(p["level"]) for p in props if p.get("level") is not None}, reverse=True))
    return StoredResult(
        gpkg_path=target.gpkg_path,
        tiles_layer=layer,
        heatmap_path=heat_path,
        heatmap_level=heat_level,
        heatmap_breaks=breaks,
        levels=levels,
        stopped_at=stopped_at,
        focus_tiles=sum(1 for p in props if p.get("focus_rank") is not None),
        warning=warning,
        heat_layers=heat_layers,
        final_tiles=_grid_tiles(doc.get("trace") or {}, stopped_at),
        area_layer=area,
    )


def _grid_tiles(trace: dict[str, Any], level: Optional[int]) -> int:
    """How many tiles the level's grid has (over the asked window); 0 if the trace does not say."""
    for entry in trace.get("levels") or []:
        if entry.get("level") == level:
            grid = entry.get("grid") or []
            return int(grid[0]) * int(grid[1]) if len(grid) == 2 else 0
    return 0


def split_by_level(grid: heatmap.HeatmapGrid, props: list) -> list[tuple[int, np.ndarray]]:
    """(level, values) finest first: each cell goes to the finest level with an encoded tile over
    its centre (the level whose tokens painted it); NaN elsewhere. Levels without cells are left out."""
    rows, cols = grid.shape
    wx0, wy0, wx1, wy1 = grid.window
    dx, dy = (wx1 - wx0) / cols, (wy1 - wy0) / rows
    free = np.isfinite(grid.values)
    out = []
    for level in sorted({int(p["level"]) for p in props if p.get("level") is not None}, reverse=True):
        mask = np.zeros_like(free)
        for p in props:
            window = p.get("window") or []
            if p.get("level") != level or not p.get("encoded") or len(window) != 4:
                continue
            x0, y0, x1, y1 = (float(v) for v in window)
            c0, c1 = (max(0, min(cols, math.ceil((x - wx0) / dx - 0.5))) for x in (x0, x1))
            r0, r1 = (max(0, min(rows, math.ceil((y - wy0) / dy - 0.5))) for y in (y0, y1))
            mask[r0:r1, c0:c1] = True
        mask &= free
        if mask.any():
            free &= ~mask
            out.append((level, np.where(mask, grid.values, np.nan).astype(np.float32)))
    return out


def _per_level(grid: heatmap.HeatmapGrid, props: list, whole: str, target: StoreTarget) -> tuple[HeatLayer, ...]:
    out = []
    for level, values in split_by_level(grid, props):
        path = os.path.splitext(whole)[0] + f"_level{level}.tif"
        heatmap.write_geotiff(path, heatmap.HeatmapGrid(values, grid.window, level, grid.units),
                              target.geotransform, target.crs_wkt)
        out.append(HeatLayer(level, path, heat_breaks(values)))
    return tuple(out)


def write_area(gpkg_path: str, layer_name: str, window, geotransform, crs_wkt: str) -> None:
    """The asked pixel window as one polygon (layer `layer_name`) in the raster's CRS."""
    from osgeo import ogr

    g0, g1, g2, g3, g4, g5 = (float(v) for v in geotransform)
    x0, y0, x1, y1 = (float(v) for v in window)
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
        ring.AddPoint_2D(g0 + x * g1 + y * g2, g3 + x * g4 + y * g5)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    ds = ogr.Open(str(gpkg_path), 1)
    if ds is None:
        raise OSError(f"GDAL cannot update the GeoPackage {gpkg_path}")
    try:
        srs = result_files._srs(crs_wkt) if crs_wkt else None
        layer = ds.CreateLayer(layer_name, srs, ogr.wkbPolygon, ["OVERWRITE=YES"])
        if layer is None:
            raise OSError(f"GDAL cannot create layer {layer_name} in {gpkg_path}")
        for name in ("x0", "y0", "x1", "y1"):
            layer.CreateField(ogr.FieldDefn(name, ogr.OFTInteger))
        feature = ogr.Feature(layer.GetLayerDefn())
        for name, value in zip(("x0", "y0", "x1", "y1"), window):
            feature.SetField(name, int(value))
        feature.SetGeometry(polygon)
        if layer.CreateFeature(feature) != 0:
            raise OSError("GDAL cannot write the asked area")
        if srs is None:
            result_files._set_undefined_cartesian(ds, layer_name)
    finally:
        ds = None


def heat_breaks(values: np.ndarray) -> tuple[float, ...]:
    """Class bounds of the heatmap legend: the HEAT_QUANTILES of the scored cells, then the maximum."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ()
    return tuple(float(v) for v in np.quantile(finite, HEAT_QUANTILES)) + (float(finite.max()),)


def heatmaps_folder(gpkg_path: str) -> str:
    return os.path.splitext(gpkg_path)[0] + "_heatmaps"


def move_results(source: str, target: str, layers: list[str], heatmaps: list[str],
                 remove: bool = False) -> dict[str, str]:
    """Copy the named GeoPackage layers of `source` (their results rows too) and the heatmap
    GeoTIFFs into `target` and its heatmaps folder; with `remove`, delete them from `source`
    afterwards. Returns {old path: new path} for the heatmaps. Raises OSError when it cannot."""
    from osgeo import ogr

    rows = [r for r in result_files.read_results(source) if r.get("tiles_layer") in layers]
    have = {r.get("tiles_layer") for r in result_files.read_results(target)} if os.path.exists(target) else set()
    src = ogr.Open(str(source), 1 if remove else 0)
    if src is None:
        raise OSError(f"GDAL cannot open {source}")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    dst = ogr.Open(str(target), 1) if os.path.exists(target) else ogr.GetDriverByName("GPKG").CreateDataSource(str(target))
    if dst is None:
        raise OSError(f"GDAL cannot create or update {target}")
    moved_heat: dict[str, str] = {}
    try:
        heat_dir = heatmaps_folder(target)
        for path in heatmaps:
            if path and os.path.isfile(path):
                os.makedirs(heat_dir, exist_ok=True)
                new = os.path.join(heat_dir, os.path.basename(path))
                if os.path.abspath(new) != os.path.abspath(path):
                    shutil.copy2(path, new)
                moved_heat[path] = new
        for name in layers:
            layer = src.GetLayerByName(name)
            if layer is None:
                continue
            if dst.GetLayerByName(name) is None:
                if dst.CopyLayer(layer, name, ["OVERWRITE=YES"]) is None:
                    raise OSError(f"GDAL cannot copy layer {name} into {target}")
                if layer.GetSpatialRef() is None:
                    result_files._set_undefined_cartesian(dst, name)
        folder = os.path.dirname(os.path.abspath(target))
        for row in rows:
            if row.get("tiles_layer") in have:
                continue
            old_heat = os.path.join(os.path.dirname(os.path.abspath(source)), row["heatmap"]) if row.get("heatmap") else ""
            if old_heat:
                row["heatmap"] = os.path.relpath(os.path.join(heat_dir, os.path.basename(old_heat)), folder)
            result_files._append_result_row(dst, row)
        if remove:
            for name in layers:
                for index in range(src.GetLayerCount()):
                    if src.GetLayer(index).GetName() == name:
                        src.DeleteLayer(index)
                        break
            table = src.GetLayerByName(result_files.RESULTS_TABLE)
            if table is not None:
                doomed = [f.GetFID() for f in table if f.GetField("tiles_layer") in layers]
                for fid in doomed:
                    table.DeleteFeature(fid)
    finally:
        src = dst = None
    if remove:
        for old, new in moved_heat.items():
            if os.path.abspath(old) != os.path.abspath(new):
                try:
                    os.remove(old)
                except OSError:
                    pass
    return moved_heat
