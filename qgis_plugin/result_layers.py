"""A stored result -> a layer group that reads at a glance; GeoJSON tiles -> features (Processing).

Main thread only (called from `QgsTask.finished()` or a Processing post-processor): it creates
layers and touches the project's layer tree. The group, at the top of the tree, expanded:

    Q: <question>
      focus (level k): n tiles, 1 = most attention    kept tiles of the final level, ranks in their corner
      asked area                                      only when part of the raster was asked
      attention, level k (final)                      the final level's token scores, top quarter tinted
      attention of coarser levels (hidden)            one heatmap per coarser level, where no finer one looked
      tiles of every level (hidden)                   one layer per level, collapsed and unchecked

Earlier results stay in the tree, unchecked and collapsed, so their labels never mix with the
new ones. The layers read the project's GeoPackage / GeoTIFF (results_store), so they come back
when the project is reopened. Every result layer takes the raster layer's CRS, also when it has
none (a raster without CRS or georeferencing): tiles (srs_id -1) and heatmap are then drawn
untransformed, like the raster, in its map units or pixels (x, -y).
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from . import result_files, result_style
from .results_store import HeatLayer, StoredResult

GROUP_KEY = "lrs_focus/job_id"
MEMORY_TYPES = {"Integer": "integer", "Real": "double", "Boolean": "boolean", "String": "string(255)"}
FIELD_NAMES = tuple(name for name, _ in result_files.TILE_FIELDS)


# -- the group ----------------------------------------------------------------------------------
def add_result_group(stored: StoredResult, question: str, job_id: str,
                     raster_crs: Optional[QgsCoordinateReferenceSystem] = None,
                     project: Optional[QgsProject] = None) -> tuple[QgsLayerTreeGroup, list]:
    """Add the result's group at the top of the layer tree; returns it and its layers (focus first)."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    hide_previous_results(root)
    title = question if len(question) <= 60 else question[:57] + "..."
    group = root.insertGroup(0, f"Q: {title}")
    group.setCustomProperty(GROUP_KEY, job_id)
    layers: list = []

    final = stored.stopped_at
    if stored.area_layer:
        area = QgsVectorLayer(f"{stored.gpkg_path}|layername={stored.area_layer}", "asked area", "ogr")
        follow_raster_crs(area, raster_crs)
        result_style.style_area(area)
        layers.append(area)
        _add(project, group, area, visible=True)
    if stored.focus_tiles:
        tiles = f"{stored.focus_tiles} tile" + ("" if stored.focus_tiles == 1 else "s")
        if stored.every_tile_kept:
            name = f"every tile kept ({stored.focus_tiles} of {stored.final_tiles}): nothing to rank"
        else:
            name = f"focus (level {final}): {tiles}, 1 = most attention"
        focus = _tiles_layer(stored, name, '"focus_rank" IS NOT NULL', raster_crs)
        result_style.style_focus(focus, every_tile_kept=stored.every_tile_kept)
        layers.insert(0, focus)
        _add(project, group, focus, visible=True, index=0)
    heat_layers = list(stored.heat_layers)
    if not heat_layers and stored.heatmap_path:  # a result filed before heatmaps were split by level
        heat_layers = [HeatLayer(stored.heatmap_level or 0, stored.heatmap_path, stored.heatmap_breaks)]
    coarser = None
    for i, part in enumerate(heat_layers):
        if i == 0:
            name = f"attention, level {part.level}" + (" (final)" if part.level == final else "")
            target, visible = group, True
        else:
            if coarser is None:
                coarser = group.addGroup("attention of coarser levels (where no finer level looked)")
            name = f"attention, level {part.level}"
            target, visible = coarser, False
        heat = QgsRasterLayer(part.path, name, "gdal")
        if not heat.isValid():
            continue
        follow_raster_crs(heat, raster_crs)
        result_style.style_heatmap(heat, part.breaks)
        layers.append(heat)
        _add(project, target, heat, visible=visible, expanded=visible)  # its legend: which end is "more attention"
    if coarser is not None:
        coarser.setItemVisibilityChecked(False)
        coarser.setExpanded(False)
    if stored.levels:
        sub = group.addGroup("tiles of every level (finest first)")
        for level in stored.levels:
            layer = _tiles_layer(stored, f"level {level}", f'"level" = {int(level)}', raster_crs)
            result_style.style_level(layer, [f["score"] for f in layer.getFeatures()], level)
            layers.append(layer)
            _add(project, sub, layer, visible=False)
        sub.setItemVisibilityChecked(False)
        sub.setExpanded(False)
    group.setItemVisibilityChecked(True)
    # Toggled, not just set: the Layers panel expands a group on the expandedChanged signal, and
    # a group inserted already "expanded" is often drawn collapsed there.
    group.setExpanded(False)
    group.setExpanded(True)
    return group, layers


def _tiles_layer(stored: StoredResult, name: str, subset: str, raster_crs) -> QgsVectorLayer:
    # The subset goes in the URI: setSubsetString() would reopen the GeoPackage after a read-only
    # (no-lock) connection was pooled, and that connection then fails once QGIS switches the file
    # to WAL ("unable to open database file" while rendering).
    layer = QgsVectorLayer(f"{stored.gpkg_path}|layername={stored.tiles_layer}|subset={subset}", name, "ogr")
    follow_raster_crs(layer, raster_crs)
    return layer


def follow_raster_crs(layer, raster_crs: Optional[QgsCoordinateReferenceSystem]) -> None:
    """Give a result layer the raster layer's CRS: what QGIS draws the raster in, even if the user
    overrode it, and also when it has none. A raster without CRS is drawn untransformed; its tiles
    (srs_id -1) read as QGIS's valid "Undefined Cartesian SRS", which the canvas would try to
    transform to the project CRS ("No transform available ..." in red). With no CRS either, both
    are drawn as they are, the tiles exactly over the raster."""
    if raster_crs is not None:
        layer.setCrs(QgsCoordinateReferenceSystem(raster_crs))


def _add(project: QgsProject, group: QgsLayerTreeGroup, layer, visible: bool, expanded: bool = False,
         index: int = -1) -> None:
    project.addMapLayer(layer, False)
    node = group.insertLayer(index, layer) if index >= 0 else group.addLayer(layer)
    node.setItemVisibilityChecked(visible)
    node.setExpanded(expanded)


def hide_previous_results(root) -> int:
    """Uncheck and collapse the groups of earlier answers; returns how many."""
    count = 0
    for group in root.children():
        if isinstance(group, QgsLayerTreeGroup) and group.customProperty(GROUP_KEY) is not None:
            group.setItemVisibilityChecked(False)
            group.setExpanded(False)
            count += 1
    return count


def latest_result_layers(root) -> list:
    """The layers of the newest answer's group (results go on top), focus first; [] if none.

    A reopened project has no Python state left: this is how "Zoom to focus" finds its layers."""
    for group in root.children():
        if isinstance(group, QgsLayerTreeGroup) and group.customProperty(GROUP_KEY) is not None:
            return [n.layer() for n in group.children() if isinstance(n, QgsLayerTreeLayer) and n.layer() is not None]
    return []


def focus_extent(layers: list) -> QgsRectangle:
    """Extent of the first vector layer with features (the focus tiles come first)."""
    for layer in layers:
        if isinstance(layer, QgsVectorLayer) and layer.featureCount() > 0:
            return layer.extent()
    return layers[0].extent() if layers else QgsRectangle()


# -- GeoJSON features -> QGIS features (the Processing sink) ----------------------------------
def template_layer(crs: QgsCoordinateReferenceSystem) -> QgsVectorLayer:
    """A memory layer with the tile fields of result_files (the URI spelling is the same on Qt5 and Qt6)."""
    fields = "&".join(f"field={n}:{MEMORY_TYPES[t]}" for n, t in result_files.TILE_FIELDS)
    crs_part = f"crs={crs.authid()}&" if crs.isValid() and crs.authid() else ""
    layer = QgsVectorLayer(f"Polygon?{crs_part}{fields}", "tiles", "memory")
    layer.setCrs(crs)  # also CRSs without an authority id and "no CRS"
    return layer


def crs_for(result: dict[str, Any], raster_crs: Optional[QgsCoordinateReferenceSystem]) -> QgsCoordinateReferenceSystem:
    """The raster layer's CRS (what QGIS draws), else the CRS the backend read from the file."""
    if raster_crs is not None and raster_crs.isValid():
        return raster_crs
    wkt = result.get("crs_wkt") or ""
    return QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()


def to_feature(fields, feature: dict[str, Any]) -> QgsFeature:
    props = feature.get("properties") or {}
    window = list(props.get("window") or [None] * 4)
    values = dict(props, x0=window[0], y0=window[1], x1=window[2], y1=window[3])
    out = QgsFeature(fields)
    for name, kind in result_files.TILE_FIELDS:
        value = values.get(name)
        if value is not None:
            out.setAttribute(name, bool(value) if kind == "Boolean" else value)
    rings = _polygon_rings(feature.get("geometry") or {})
    if len(rings) == 1:
        out.setGeometry(QgsGeometry.fromPolygonXY(rings[0]))
    elif rings:
        out.setGeometry(QgsGeometry.fromMultiPolygonXY(rings))
    return out


def _polygon_rings(geometry: dict[str, Any]) -> list:
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    return [[[QgsPointXY(float(p[0]), float(p[1])) for p in ring] for ring in poly] for poly in polygons]


# -- answers follow the project ------------------------------------------------------------------
def result_layer_nodes(root) -> list:
    """Every layer node inside the answers' groups."""
    return [node for group in root.children()
            if isinstance(group, QgsLayerTreeGroup) and group.customProperty(GROUP_KEY) is not None
            for node in group.findLayers() if node.layer() is not None]


def relocate_results(project: QgsProject, target: str, unsaved: str) -> tuple[int, list[str]]:
    """Answers whose files are not in `target` (the project's results GeoPackage) are copied there
    (moved when they come from `unsaved`, the profile's GeoPackage of unsaved projects) and their
    layers pointed at the copies, styles kept. Returns (layers moved, problems)."""
    from qgis.core import QgsMapLayerStyle

    from . import history
    from .results_store import heatmaps_folder, move_results

    target_abs = os.path.abspath(target)
    plan: dict[str, dict] = {}  # source gpkg -> {"layers": set, "heatmaps": set, "nodes": [(layer, kind, rest)]}
    for node in result_layer_nodes(project.layerTreeRoot()):
        layer = node.layer()
        source = layer.source()
        if isinstance(layer, QgsVectorLayer):
            path, _, rest = source.partition("|")
            name = dict(p.split("=", 1) for p in rest.split("|") if "=" in p).get("layername", "")
            if not path or os.path.abspath(path) == target_abs or not name:
                continue
            entry = plan.setdefault(os.path.abspath(path), {"layers": set(), "heatmaps": set(), "nodes": []})
            entry["layers"].add(name)
            entry["nodes"].append((layer, "vector", rest))
        elif isinstance(layer, QgsRasterLayer):
            folder = os.path.dirname(os.path.abspath(source))
            if not folder.endswith("_heatmaps") or folder == heatmaps_folder(target_abs):
                continue
            gpkg = folder[: -len("_heatmaps")] + ".gpkg"
            entry = plan.setdefault(gpkg, {"layers": set(), "heatmaps": set(), "nodes": []})
            entry["heatmaps"].add(os.path.abspath(source))
            entry["nodes"].append((layer, "raster", ""))
    moved, problems = 0, []
    for source, entry in plan.items():
        # the whole grids of these answers (Export's files) go along with the per-level ones
        heatmaps = set(entry["heatmaps"])
        for path in list(heatmaps):
            stem = re.sub(r"_level\d+\.tif$", ".tif", path)
            if stem != path and os.path.isfile(stem):
                heatmaps.add(stem)
        try:
            new_heat = move_results(source, target, sorted(entry["layers"]), sorted(heatmaps),
                                    remove=os.path.abspath(source) == os.path.abspath(unsaved))
        except OSError as exc:
            problems.append(str(exc))
            continue
        for layer, kind, rest in entry["nodes"]:
            style = QgsMapLayerStyle()
            style.readFromLayer(layer)
            crs = layer.crs()
            if kind == "vector":
                layer.setDataSource(f"{target}|{rest}", layer.name(), "ogr")
            else:
                layer.setDataSource(new_heat.get(os.path.abspath(layer.source()), layer.source()), layer.name(), "gdal")
            layer.setCrs(crs)
            style.writeToLayer(layer)
            layer.triggerRepaint()
            moved += 1
        history.repoint(source, target, new_heat, project)
    return moved, problems
