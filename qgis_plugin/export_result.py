"""Export one filed answer: its tiles, question and answer, and its heatmap, to files of the user's choice.

Reads the answer back from the project's GeoPackage (results_store), so it also works for
answers of earlier sessions, and writes with the same code as `lrs-focus ask --out`:
.gpkg in the raster's CRS, or .geojson as RFC 7946 (WGS 84). The heatmap GeoTIFF is copied
next to the export as `<name>_heatmap.tif`. No QGIS objects: plain files in, files out; `entry` is
a history.HistoryEntry (or anything with its results, tiles_layer, heatmap, question, answer, job_id).
"""

from __future__ import annotations

import os
import shutil

from . import result_files


def export_entry(entry, path: str) -> list[str]:
    """Write `path` (and `<stem>_heatmap.tif` when the answer has a heatmap); returns the files written."""
    if not entry.results or not os.path.exists(entry.results):
        raise result_files.ResultFileError(f"the answer's GeoPackage {entry.results or '(none)'} is gone")
    collection, crs_wkt = result_files.read_tiles(entry.results, entry.tiles_layer)
    rows = [r for r in result_files.read_results(entry.results) if r.get("tiles_layer") == entry.tiles_layer]
    summary = dict(rows[-1]) if rows else {"question": entry.question, "answer": entry.answer, "job_id": entry.job_id}
    heatmap = _heatmap_file(entry, summary)
    copy = os.path.splitext(path)[0] + "_heatmap.tif" if heatmap else ""
    summary["heatmap"] = os.path.basename(copy)
    written = [result_files.write_tiles(path, collection, crs_wkt, summary)]  # refuses first, copies after
    if heatmap:
        shutil.copyfile(heatmap, copy)
        written.append(copy)
    return written


def _heatmap_file(entry, summary: dict) -> str:
    for candidate in (entry.heatmap, os.path.join(os.path.dirname(entry.results), summary.get("heatmap") or "")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return ""
