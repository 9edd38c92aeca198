"""Turn a result's GeoJSON `features` into styled memory layers, one per pyramid level.

Must run on the main thread (called from `QgsTask.finished()` or a Processing algorithm's
post-processing): it creates layers and touches the project's layer tree.

Each feature is one tile of the trace, in the raster's CRS; non-georeferenced rasters come with
y negative downward (geotransform (0,1,0,0,0,-1)), which is where QGIS draws such rasters, so
the same code places them right. Only encoded or kept tiles are shown: the others were never
looked at. Fields come from the memory-provider URI, which is the same on Qt5 and Qt6.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Optional

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFillSymbol,
    QgsGeometry,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsPalLayerSettings,
    QgsPointXY,
    QgsProject,
    QgsProperty,
    QgsRectangle,
    QgsRendererRange,
    QgsSymbolLayer,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .compat import enum_value as _enum

FIELDS = (
    ("level", "integer"),
    ("row", "integer"),
    ("col", "integer"),
    ("x0", "integer"),
    ("y0", "integer"),
    ("x1", "integer"),
    ("y1", "integer"),
    ("score", "double"),
    ("rank", "integer"),
    ("kept", "boolean"),
    ("encoded", "boolean"),
    ("job_id", "string(64)"),
    ("question", "string(1024)"),
)
FIELD_NAMES = tuple(name for name, _ in FIELDS)
# Light to dark red: low to high attention. Five equal-interval classes per layer.
SCORE_COLORS = ("#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15")


def shown(feature: dict[str, Any]) -> bool:
    props = feature.get("properties") or {}
    return bool(props.get("encoded") or props.get("kept"))


def polygon_rings(geometry: dict[str, Any]) -> list[list[list[QgsPointXY]]]:
    """GeoJSON Polygon/MultiPolygon -> list of polygons (rings of QgsPointXY)."""
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    return [[[QgsPointXY(float(p[0]), float(p[1])) for p in ring] for ring in poly] for poly in polygons]


def to_feature(layer: QgsVectorLayer, feature: dict[str, Any]) -> QgsFeature:
    props = feature.get("properties") or {}
    window = list(props.get("window") or [None] * 4)
    values = {
        "level": props.get("level"),
        "row": props.get("row"),
        "col": props.get("col"),
        "x0": window[0],
        "y0": window[1],
        "x1": window[2],
        "y1": window[3],
        "score": props.get("score"),
        "rank": props.get("rank"),
        "kept": bool(props.get("kept")),
        "encoded": bool(props.get("encoded")),
        "job_id": str(props.get("job_id") or ""),
        "question": str(props.get("question") or ""),
    }
    out = QgsFeature(layer.fields())
    for name in FIELD_NAMES:
        if values[name] is not None:
            out.setAttribute(name, values[name])
    polygons = polygon_rings(feature.get("geometry") or {})
    if len(polygons) == 1:
        out.setGeometry(QgsGeometry.fromPolygonXY(polygons[0]))
    elif polygons:
        out.setGeometry(QgsGeometry.fromMultiPolygonXY(polygons))
    return out


def memory_layer(name: str, crs: QgsCoordinateReferenceSystem) -> QgsVectorLayer:
    fields = "&".join(f"field={n}:{t}" for n, t in FIELDS)
    crs_part = f"crs={crs.authid()}&" if crs.isValid() and crs.authid() else ""
    layer = QgsVectorLayer(f"Polygon?{crs_part}{fields}", name, "memory")
    layer.setCrs(crs)  # also for CRSs without an authority id (custom WKT) and "no CRS"
    return layer


def crs_for(result: dict[str, Any], raster_crs: Optional[QgsCoordinateReferenceSystem]) -> QgsCoordinateReferenceSystem:
    """The raster layer's CRS (what QGIS draws), else the CRS the backend read from the file."""
    if raster_crs is not None and raster_crs.isValid():
        return raster_crs
    wkt = result.get("crs_wkt") or ""
    return QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()


def level_layers(result: dict[str, Any], crs: QgsCoordinateReferenceSystem, prefix: str = "") -> list[QgsVectorLayer]:
    """One styled memory layer per pyramid level that has shown tiles, finest level first."""
    grids = {lv.get("level"): lv.get("grid") for lv in (result.get("trace") or {}).get("levels", [])}
    by_level: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for feature in (result.get("features") or {}).get("features", []):
        if shown(feature):
            by_level[int(feature["properties"]["level"])].append(feature)
    layers = []
    for i, level in enumerate(sorted(by_level, reverse=True)):
        grid = grids.get(level)
        label = f"level {level}" + (f" ({grid[0]}x{grid[1]} tiles)" if grid else "")
        layer = memory_layer(f"{prefix}{label}", crs)
        feats = [to_feature(layer, f) for f in by_level[level]]
        layer.dataProvider().addFeatures(feats)
        layer.updateExtents()
        style_layer(layer, [f.get("properties", {}).get("score") for f in by_level[level]], finest=i == 0)
        layers.append(layer)
    return layers


def style_layer(layer: QgsVectorLayer, scores: Iterable[Optional[float]], finest: bool = True) -> None:
    """Fill graduated by score, kept tiles with a thick dark outline, kept tiles labelled by rank.

    Coarser levels are drawn half transparent and unlabelled, so the finest level (where the
    model finally looked) reads first and the raster stays visible through the rest.
    """
    values = []
    for s in scores:
        try:
            values.append(float(s))
        except (TypeError, ValueError):  # None, or a NULL QVariant read back from a layer
            continue
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-9
    step = (hi - lo) / len(SCORE_COLORS)
    ranges = []
    for i, color in enumerate(SCORE_COLORS):
        a, b = lo + i * step, (hi if i == len(SCORE_COLORS) - 1 else lo + (i + 1) * step)
        ranges.append(QgsRendererRange(a, b, _tile_symbol(color), f"score {a:.3g} - {b:.3g}"))
    renderer = QgsGraduatedSymbolRenderer("score", ranges)
    renderer.setSourceSymbol(_tile_symbol(SCORE_COLORS[-1]))
    layer.setRenderer(renderer)
    layer.setOpacity(1.0 if finest else 0.45)

    label = QgsPalLayerSettings()
    label.isExpression = True
    label.fieldName = 'if("kept" AND "rank" IS NOT NULL, to_string("rank"), \'\')'
    fmt = label.format()
    fmt.setColor(QColor("#000000"))
    buffer = fmt.buffer()
    buffer.setEnabled(True)
    buffer.setColor(QColor("#ffffff"))
    buffer.setSize(0.8)
    fmt.setBuffer(buffer)
    label.setFormat(fmt)
    label.placement = _enum(
        (Qgis, "LabelPlacement.OverPoint"), (QgsPalLayerSettings, "Placement.OverPoint"), (QgsPalLayerSettings, "OverPoint")
    )
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label))
    layer.setLabelsEnabled(finest)


def _tile_symbol(color: str) -> QgsFillSymbol:
    symbol = QgsFillSymbol.createSimple({"color": color, "outline_color": "#202020", "outline_width": "0.2"})
    fill = symbol.symbolLayer(0)
    stroke_width, fill_color, stroke_color = (
        _enum((QgsSymbolLayer, f"Property.{name}"), (QgsSymbolLayer, f"Property.Property{name}"))
        for name in ("StrokeWidth", "FillColor", "StrokeColor")
    )
    fill.setDataDefinedProperty(stroke_width, QgsProperty.fromExpression('if("kept", 0.9, 0.15)'))
    fill.setDataDefinedProperty(stroke_color, QgsProperty.fromExpression("if(\"kept\", '#08306b', '#606060')"))
    # kept tiles nearly opaque, looked-at-but-pruned tiles faint
    fill.setDataDefinedProperty(
        fill_color,
        QgsProperty.fromExpression(f"set_color_part('{color}', 'alpha', if(\"kept\", 170, 30))"),
    )
    return symbol


def add_result_group(
    result: dict[str, Any],
    question: str,
    raster_crs: Optional[QgsCoordinateReferenceSystem] = None,
    project: Optional[QgsProject] = None,
) -> tuple[QgsLayerTreeGroup, list[QgsVectorLayer]]:
    """Add a group named after the question at the top of the layer tree, with the level layers."""
    project = project or QgsProject.instance()
    layers = level_layers(result, crs_for(result, raster_crs))
    title = question if len(question) <= 60 else question[:57] + "..."
    group = project.layerTreeRoot().insertGroup(0, f"Q: {title}")
    group.setCustomProperty("lrs_focus/job_id", (result.get("job_id") or ""))
    group.setExpanded(True)
    for layer in layers:
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return group, layers


def focus_extent(layers: list[QgsVectorLayer]) -> QgsRectangle:
    """Extent of the kept tiles of the finest level that has any (first layer = finest)."""
    for layer in layers:
        extent = QgsRectangle()
        extent.setMinimal()
        for feature in layer.getFeatures():
            if feature["kept"] and feature.hasGeometry():
                extent.combineExtentWith(feature.geometry().boundingBox())
        if not extent.isEmpty():
            return extent
    return layers[0].extent() if layers else QgsRectangle()
