"""This project's questions and answers, saved in the .qgz (per-project entry).

The history belongs to the project, not to the user: reopening a project shows what was asked
of its rasters, and the layer groups of those questions are saved alongside.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Optional

from qgis.core import QgsProject

SCOPE, KEY = "lrs_focus", "history"
MAX_ENTRIES = 200


@dataclass(frozen=True)
class HistoryEntry:
    question: str
    answer: str
    raster: str
    job_id: str = ""
    when: str = ""  # ISO time, local
    seconds: float = 0.0
    results: str = ""  # the GeoPackage that holds the result's tiles (results_store)
    tiles_layer: str = ""
    heatmap: str = ""  # its heatmap GeoTIFF, "" if none


def load(project: Optional[QgsProject] = None) -> list[HistoryEntry]:
    project = project or QgsProject.instance()
    text, found = project.readEntry(SCOPE, KEY, "[]")
    try:
        rows = json.loads(text) if found else []
    except ValueError:
        return []
    fields = HistoryEntry.__dataclass_fields__
    entries = [HistoryEntry(**{k: v for k, v in row.items() if k in fields}) for row in rows if isinstance(row, dict)]
    return [_relocated(e, project.absolutePath()) for e in entries]


def _relocated(entry: HistoryEntry, home: str) -> HistoryEntry:
    """The project folder was moved or copied with its results: find the GeoPackage beside the project.

    Entries keep the absolute paths they were filed under; QGIS rewrites the layers' paths
    relative to the project, so the map follows a moved folder, and so must Export.
    """
    if not entry.results or not home or os.path.exists(entry.results):
        return entry
    moved = os.path.join(home, os.path.basename(entry.results))
    if not os.path.isfile(moved):
        return entry
    old = os.path.dirname(entry.results)
    heatmap = entry.heatmap
    if heatmap and os.path.dirname(os.path.dirname(heatmap)) == old:  # <gpkg stem>_heatmaps/<file> beside it
        heatmap = os.path.join(home, os.path.relpath(heatmap, old))
    return replace(entry, results=moved, heatmap=heatmap)


def append(entry: HistoryEntry, project: Optional[QgsProject] = None) -> list[HistoryEntry]:
    project = project or QgsProject.instance()
    entries = (load(project) + [entry])[-MAX_ENTRIES:]
    project.writeEntry(SCOPE, KEY, json.dumps([asdict(e) for e in entries], ensure_ascii=False))
    return entries


def repoint(old_gpkg: str, new_gpkg: str, heatmaps: dict, project: Optional[QgsProject] = None) -> int:
    """Entries filed in `old_gpkg` now name `new_gpkg` (and their heatmaps' new paths); returns how many."""
    project = project or QgsProject.instance()
    entries, changed = load(project), 0
    for i, entry in enumerate(entries):
        if entry.results and os.path.abspath(entry.results) == os.path.abspath(old_gpkg):
            entries[i] = replace(entry, results=new_gpkg, heatmap=heatmaps.get(os.path.abspath(entry.heatmap), entry.heatmap)
                                 if entry.heatmap else "")
            changed += 1
    if changed:
        project.writeEntry(SCOPE, KEY, json.dumps([asdict(e) for e in entries], ensure_ascii=False))
    return changed


def clear(project: Optional[QgsProject] = None) -> None:
    (project or QgsProject.instance()).removeEntry(SCOPE, KEY)
