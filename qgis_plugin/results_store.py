"""Every answer filed in a GeoPackage, so the map's result layers survive closing the project.

Where: the folder of the `results_dir` setting if set, else beside the project file
(`<project>_lrs_focus.gpkg`), else (an unsaved project) the plugin's folder in the QGIS profile.
Each answer adds one tile layer (`tiles_<time>_<job>`) in the raster layer's CRS and one row of
the `lrs_focus_results` table (question, answer, model...); its score heatmap is a Float32
GeoTIFF in the folder `<gpkg name>_heatmaps/` next to it (GeoPackage rasters cannot hold a
rotated grid). `store_result` touches no QGIS object, so the task runs it in its worker thread.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import heatmap, result_files
from .params import StoreTarget

#: Upper quantiles of the heatmap classes, low to high (the class above the last one is "top 3 %").
HEAT_QUANTILES = (0.5, 0.75, 0.9, 0.97)


@dataclass(frozen=True)
class StoredResult:
    gpkg_path: str
    tiles_layer: str
    heatmap_path: str  # "" when the result has no heatmap (thumbnail mode)
    heatmap_level: Optional[int]
    heatmap_breaks: tuple[float, ...]  # values at HEAT_QUANTILES, then the maximum
    levels: tuple[int, ...]  # levels that have tiles, finest first
    stopped_at: Optional[int]
    focus_tiles: int
    warning: str = ""  # e.g. the heatmap could not be decoded; the tiles were still stored


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
    warning, heat_path, heat_level, breaks = "", "", None, ()
    try:
        grid = heatmap.decode(doc.get("heatmap"))
    except heatmap.HeatmapError as exc:
        grid, warning = None, f"the result's heatmap is unreadable ({exc}); tiles only"
    if grid is not None:
        heat_dir = os.path.splitext(target.gpkg_path)[0] + "_heatmaps"
        os.makedirs(heat_dir, exist_ok=True)
        heat_path = heatmap.write_geotiff(os.path.join(heat_dir, f"heatmap_{key}.tif"), grid,
                                          target.geotransform, target.crs_wkt)
        heat_level, breaks = grid.level, heat_breaks(grid.values)
    summary = result_files.result_summary(doc, question, layer, os.path.relpath(heat_path, folder) if heat_path else "",
                                          seconds)
    result_files.write_geopackage(target.gpkg_path, doc.get("features") or {}, target.crs_wkt, summary, layer)
    props = [(f.get("properties") or {}) for f in (doc.get("features") or {}).get("features") or []]
    levels = tuple(sorted({int(p["level"]) for p in props if p.get("level") is not None}, reverse=True))
    return StoredResult(
        gpkg_path=target.gpkg_path,
        tiles_layer=layer,
        heatmap_path=heat_path,
        heatmap_level=heat_level,
        heatmap_breaks=breaks,
        levels=levels,
        stopped_at=(doc.get("trace") or {}).get("stopped_at"),
        focus_tiles=sum(1 for p in props if p.get("focus_rank") is not None),
        warning=warning,
    )


def heat_breaks(values: np.ndarray) -> tuple[float, ...]:
    """Class bounds of the heatmap legend: the HEAT_QUANTILES of the scored cells, then the maximum."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ()
    return tuple(float(v) for v in np.quantile(finite, HEAT_QUANTILES)) + (float(finite.max()),)
