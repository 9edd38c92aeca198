"""A stored result -> a layer group that reads at a glance; GeoJSON tiles -> features (Processing).

Main thread only (called from `QgsTask.finished()` or a Processing post-processor): it creates
layers and touches the project's layer tree. The group, at the top of the tree, expanded:

    Q: <question>
      focus: n tiles ranked (level k)     kept tiles of the final level, labelled 1..n
      attention heatmap (level k)          quantile classes; lower half dimmed
      all levels (hidden)                  one layer per level, collapsed and unchecked

Earlier results stay in the tree, unchecked and collapsed, so their labels never mix with the
new ones. The layers read the project's GeoPackage / GeoTIFF (results_store), so they come back
when the project is reopened. Non-georeferenced rasters: tiles have srs_id -1 and the heatmap no
CRS, and QGIS draws both untransformed, on the raster (x, -y).
"""

from __future__ import annotations

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
from .results_store import StoredResult

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
    if stored.focus_tiles:
        tiles = f"{stored.focus_tiles} tile" + ("" if stored.focus_tiles == 1 else "s")
        focus = _tiles_layer(stored, f"focus (level {final}): {tiles}, 1 = most attention",
                             '"focus_rank" IS NOT NULL', raster_crs)
        result_style.style_focus(focus)
        layers.append(focus)
        _add(project, group, focus, visible=True)
    if stored.heatmap_path:
        heat = QgsRasterLayer(stored.heatmap_path, f"attention heatmap (level {stored.heatmap_level})", "gdal")
        if heat.isValid():
            if raster_crs is not None and raster_crs.isValid():
                heat.setCrs(raster_crs)
            result_style.style_heatmap(heat, stored.heatmap_breaks)
            layers.append(heat)
            _add(project, group, heat, visible=True, expanded=True)  # its legend: which end is "more attention"
    if stored.levels:
        sub = group.addGroup("all levels (finest first)")
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
    if raster_crs is not None and raster_crs.isValid():
        layer.setCrs(raster_crs)  # what QGIS draws the raster in, even if the user overrode its CRS
    return layer


def _add(project: QgsProject, group: QgsLayerTreeGroup, layer, visible: bool, expanded: bool = False) -> None:
    project.addMapLayer(layer, False)
    node = group.addLayer(layer)
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
