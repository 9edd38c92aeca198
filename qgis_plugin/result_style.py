"""How a result reads at a glance: ranked focus outlines over an attention heatmap.

- Focus tiles (the kept tiles of the level whose tokens went to the LLM): no fill, a cyan
  outline on a dark halo. The rank (1 = the most attention) is a small label in the tile's
  upper-left corner, never over its middle. Ranks 1..TOP_RANKS are always labelled; the others
  appear once a tile is at least LABEL_ALL_PX pixels wide on screen (a scale-dependent rule), so
  a 54-tile answer at its default zoom shows the five best tiles and zooming in shows the rest.
  Tile outlines are no label obstacles (QGIS would otherwise drop the label of a tile whose
  neighbour's outline crosses it); labels only give way to each other, rank 1 first.
- The heatmap: classes by quantile of the scored cells of one level. Only the upper quarter is
  tinted (RdPu: pink -> magenta -> purple, hues that land-cover, NDVI and terrain palettes rarely
  use, and far from the cyan outlines); the rest stays untinted, so the image shows through.
- Per-level tiles (hidden by default): filled by quantile of that level's scores, same hues.
- The Processing output (all levels in one layer): focus tiles outlined and ranked as above,
  the other tiles as faint grey outlines, so colours and numbers never mix levels.
- Every tile kept (a small raster or area): nothing was pruned, so ranks say nothing; the tiles
  get a thin neutral outline and no labels.
Main thread only (renderers belong to layers).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGraduatedSymbolRenderer,
    QgsMapLayerLegend,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRasterSymbolLegendNode,
    QgsRendererRange,
    QgsRuleBasedLabeling,
    QgsRuleBasedRenderer,
    QgsSimpleFillSymbolLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QColor, QFont

from .compat import enum_value as _enum

FOCUS_LINE, FOCUS_HALO = "0,229,255,255", "16,16,16,200"  # QGIS "r,g,b,a"
#: Ranks labelled at every scale; the others once a tile is LABEL_ALL_PX wide on screen.
TOP_RANKS = 5
LABEL_ALL_PX = 64
SCREEN_DPI = 96.0
#: Heatmap classes, low to high: (colour, alpha 0-255, legend label). Their upper bounds are the
#: quantiles of results_store.HEAT_QUANTILES, then the maximum.
HEAT_CLASSES = (
    ("#ffffff", 0, "lower half (no tint)"),
    ("#ffffff", 0, "upper half (no tint)"),
    ("#fa9fb5", 110, "top 25 % of attention"),
    ("#dd3497", 150, "top 10 %"),
    ("#7a0177", 190, "top 3 %: where the model looked hardest"),
)
#: Per-level classes by score quantile, low to high: (upper quantile, colour, label).
LEVEL_CLASSES = (
    (0.5, "#feebe2", "lower half (less attention)"),
    (0.75, "#fbb4b9", "50-75 %"),
    (0.9, "#f768a1", "top 25 %"),
    (1.0, "#ae017e", "top 10 % (more attention)"),
)


# -- focus tiles --------------------------------------------------------------------------------
def focus_symbol() -> QgsFillSymbol:
    """Outline only: a dark halo under a bright line, readable on any image and on the heatmap."""
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": FOCUS_HALO, "outline_width": "1.0"})
    symbol.appendSymbolLayer(QgsSimpleFillSymbolLayer.create(
        {"style": "no", "outline_color": FOCUS_LINE, "outline_width": "0.4", "joinstyle": "miter"}))
    return symbol


def plain_symbol() -> QgsFillSymbol:
    """Every tile kept: a thin neutral outline (where the model looked), no emphasis."""
    return QgsFillSymbol.createSimple({"style": "no", "outline_color": "230,230,230,200", "outline_width": "0.3"})


def area_symbol() -> QgsFillSymbol:
    """The asked area: a dashed light line on a dark halo, no fill."""
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "16,16,16,170", "outline_width": "0.9"})
    symbol.appendSymbolLayer(QgsSimpleFillSymbolLayer.create(
        {"style": "no", "outline_color": "255,255,255,255", "outline_width": "0.45", "outline_style": "dash"}))
    return symbol


def style_area(layer: QgsVectorLayer) -> None:
    layer.setRenderer(QgsSingleSymbolRenderer(area_symbol()))
    layer.setLabelsEnabled(False)


def style_focus(layer: QgsVectorLayer, field: str = "focus_rank", every_tile_kept: bool = False) -> None:
    if every_tile_kept:
        layer.setRenderer(QgsSingleSymbolRenderer(plain_symbol()))
        layer.setLabelsEnabled(False)
        return
    layer.setRenderer(QgsSingleSymbolRenderer(focus_symbol()))
    set_rank_labels(layer, field)


def tile_width_m(layer: QgsVectorLayer, field: str = "focus_rank") -> float:
    """Ground width of one ranked tile in metres (map units converted; unknown units count as metres)."""
    request_width = 0.0
    for feature in layer.getFeatures():
        if feature.hasGeometry() and str(feature[field]) not in ("NULL", "None"):
            box = feature.geometry().boundingBox()
            request_width = min(box.width(), box.height())
            break
    units = layer.crs().mapUnits() if layer.crs().isValid() else None
    factor = 1.0
    if units is not None:
        try:
            factor = QgsUnitTypes.fromUnitToUnitFactor(units, _enum(
                (Qgis, "DistanceUnit.Meters"), (QgsUnitTypes, "DistanceUnit.DistanceMeters"),
                (QgsUnitTypes, "DistanceMeters"))) or 1.0
        except (TypeError, AttributeError):
            factor = 1.0
    return request_width * factor


def label_all_scale(tile_m: float, px: float = LABEL_ALL_PX, dpi: float = SCREEN_DPI) -> float:
    """The scale denominator at which a tile `tile_m` metres wide is `px` pixels wide on screen."""
    return tile_m / (px * 0.0254 / dpi) if tile_m > 0 else 0.0


def rank_label_settings(field: str = "focus_rank") -> QgsPalLayerSettings:
    label = QgsPalLayerSettings()
    label.isExpression = True
    label.fieldName = f'if("{field}" IS NOT NULL, to_string("{field}"), \'\')'
    fmt = label.format()
    font = QFont()
    font.setBold(True)
    fmt.setFont(font)
    fmt.setSize(8)
    fmt.setColor(QColor("#ffffff"))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setColor(QColor("#101010"))
    buffer.setSize(0.7)
    fmt.setBuffer(buffer)
    label.setFormat(fmt)
    # the tile's upper-left corner, inside it: the middle of the tile stays visible
    props = label.dataDefinedProperties()
    for name, expression in (("PositionX", "x_min($geometry)"), ("PositionY", "y_max($geometry)"),
                             ("Hali", "'Left'"), ("Vali", "'Top'")):
        key = _enum((QgsPalLayerSettings, f"Property.{name}"), (QgsPalLayerSettings, name))
        props.setProperty(key, QgsProperty.fromExpression(expression))
    # rank 1 wins a collision with rank 9
    priority = _enum((QgsPalLayerSettings, "Property.Priority"), (QgsPalLayerSettings, "Priority"))
    props.setProperty(priority, QgsProperty.fromExpression(f'10 - min("{field}", 10) * 0.9'))
    obstacles = label.obstacleSettings()
    obstacles.setIsObstacle(False)  # outlines never push a rank off the map
    label.setObstacleSettings(obstacles)
    return label


def set_rank_labels(layer: QgsVectorLayer, field: str = "focus_rank") -> None:
    """Ranks 1..TOP_RANKS always; the rest once the tiles are big enough on screen to hold them."""
    root = QgsRuleBasedLabeling.Rule(None)
    top = QgsRuleBasedLabeling.Rule(rank_label_settings(field), 0, 0, f'"{field}" <= {TOP_RANKS}',
                                    f"ranks 1-{TOP_RANKS}: at every scale")
    root.appendChild(top)
    scale = label_all_scale(tile_width_m(layer, field))
    rest = QgsRuleBasedLabeling.Rule(rank_label_settings(field), 0, scale, f'"{field}" > {TOP_RANKS}',
                                     f"ranks above {TOP_RANKS}: once a tile is {LABEL_ALL_PX} px wide")
    root.appendChild(rest)
    layer.setLabeling(QgsRuleBasedLabeling(root))
    layer.setLabelsEnabled(True)


# -- per-level tiles ----------------------------------------------------------------------------
def quantile_bounds(values: Iterable[Optional[float]], quantiles: Sequence[float]) -> list[float]:
    """Upper bounds at the given quantiles (nearest rank) of the non-null values; [] if there are none."""
    clean = []
    for v in values:
        try:
            clean.append(float(v))
        except (TypeError, ValueError):  # None, or a NULL QVariant read back from a layer
            continue
    clean.sort()
    if not clean:
        return []
    return [clean[min(len(clean) - 1, max(0, int(round(q * (len(clean) - 1)))))] for q in quantiles]


def style_level(layer: QgsVectorLayer, scores: Iterable[Optional[float]], level: int) -> None:
    bounds = quantile_bounds(scores, [q for q, _, _ in LEVEL_CLASSES])
    ranges, low = [], (min(bounds) if bounds else 0.0)
    for (q, color, text), high in zip(LEVEL_CLASSES, bounds or [1.0] * len(LEVEL_CLASSES)):
        if ranges and high <= low:
            continue  # ties: an empty class would only confuse the legend
        ranges.append(QgsRendererRange(low, high, _level_symbol(color), f"{text} at level {level}" if q == 1.0 else text))
        low = high
    renderer = QgsGraduatedSymbolRenderer("score", ranges)
    renderer.setSourceSymbol(_level_symbol(LEVEL_CLASSES[-1][1]))
    layer.setRenderer(renderer)
    layer.setLabelsEnabled(False)


def _level_symbol(color: str) -> QgsFillSymbol:
    symbol = QgsFillSymbol.createSimple({"color": color, "outline_color": "#404040", "outline_width": "0.15"})
    fill = symbol.symbolLayer(0)
    stroke_width, fill_color, stroke_color = (
        _enum((QgsSymbolLayer, f"Property.{name}"), (QgsSymbolLayer, f"Property.Property{name}"))
        for name in ("StrokeWidth", "FillColor", "StrokeColor")
    )
    fill.setDataDefinedProperty(stroke_width, QgsProperty.fromExpression('if("kept", 0.7, 0.15)'))
    fill.setDataDefinedProperty(stroke_color, QgsProperty.fromExpression("if(\"kept\", '#00a0b4', '#606060')"))
    fill.setDataDefinedProperty(fill_color, QgsProperty.fromExpression(
        f"set_color_part('{color}', 'alpha', if(\"kept\", 150, 60))"))
    return symbol


# -- heatmap ------------------------------------------------------------------------------------
def style_heatmap(layer: QgsRasterLayer, breaks: Sequence[float]) -> None:
    """Discrete quantile classes; `breaks` = class upper bounds (results_store.heat_breaks)."""
    items, last = [], None
    for (color, alpha, text), value in zip(HEAT_CLASSES, breaks):
        if last is not None and value <= last:
            items[-1] = QgsColorRampShader.ColorRampItem(value, _rgba(color, alpha), text)  # tie: keep the higher class
            continue
        items.append(QgsColorRampShader.ColorRampItem(value, _rgba(color, alpha), text))
        last = value
    # the untinted classes read as one line in the legend
    if len(items) > 2 and items[0].color.alpha() == 0 and items[1].color.alpha() == 0:
        items = [QgsColorRampShader.ColorRampItem(items[1].value, items[1].color, "below the top 25 % (no tint)")] + items[2:]
    if not items:
        return
    ramp = QgsColorRampShader(items[0].value, items[-1].value, None, QgsColorRampShader.Type.Discrete)
    ramp.setColorRampItemList(items)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(items[0].value)
    renderer.setClassificationMax(items[-1].value)
    layer.setRenderer(renderer)
    layer.setOpacity(1.0)  # the classes carry their own transparency
    set_heat_legend(layer)


class HeatLegend(QgsMapLayerLegend):
    """The heatmap's classes in words, without QGIS's "Band 1: ... (Gray)" header line.

    Not stored in the project: the plugin sets it again on the answers' heatmaps when a project
    is read (project_results.restore_last_result)."""

    def __init__(self, layer: QgsRasterLayer):
        super().__init__()
        self._layer = layer

    def createLayerTreeModelLegendNodes(self, node_layer):  # noqa: N802 (QGIS API)
        renderer = self._layer.renderer()
        items = renderer.legendSymbologyItems() if renderer is not None else []
        nodes = [QgsRasterSymbolLegendNode(node_layer, color, text) for text, color in items]
        for node in nodes:
            sip.transferto(node, None)  # the layer tree model owns and deletes them
        return nodes


#: layer id -> its HeatLegend: the layer holds only a C++ pointer, Python must keep the object.
_LEGENDS: dict = {}


def set_heat_legend(layer: QgsRasterLayer) -> None:
    legend = HeatLegend(layer)
    _LEGENDS[layer.id()] = legend
    layer.setLegend(legend)


def _rgba(color: str, alpha: int) -> QColor:
    out = QColor(color)
    out.setAlpha(alpha)
    return out


# -- Processing output --------------------------------------------------------------------------
def style_all_levels(layer: QgsVectorLayer) -> None:
    """All levels in one layer: focus tiles outlined and ranked, the other tiles faint outlines."""
    root = QgsRuleBasedRenderer.Rule(None)
    focus = QgsRuleBasedRenderer.Rule(focus_symbol(), 0, 0, '"focus_rank" IS NOT NULL',
                                      "focus tiles: kept at the final level, 1 = most attention")
    others = QgsFillSymbol.createSimple({"style": "no", "outline_color": "#9a9a9a", "outline_width": "0.15"})
    rest = QgsRuleBasedRenderer.Rule(others, 0, 0, "", "tiles looked at on the way (coarser levels, pruned)", "", True)
    root.appendChild(rest)
    root.appendChild(focus)
    layer.setRenderer(QgsRuleBasedRenderer(root))
    set_rank_labels(layer, "focus_rank")
