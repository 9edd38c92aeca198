"""How a result reads at a glance: ranked focus outlines over an attention heatmap.

- Focus tiles (the kept tiles of the level whose tokens went to the LLM): no fill, a bright
  outline on a dark halo, labelled 1..n (1 = the most attention).
- The heatmap: five classes by quantile of the scored cells. The lower half is dimmed (a
  translucent dark veil), the upper quarter glows yellow -> orange -> red; the legend says which
  end is "more attention".
- Per-level tiles (hidden by default): fill by quantile of that level's scores, kept tiles
  outlined, no labels (ranks of different levels are not comparable).
- The Processing output (all levels in one layer): focus tiles outlined and labelled, the other
  tiles as faint outlines, so colours and numbers never mix levels.
Main thread only (renderers belong to layers).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsRuleBasedRenderer,
    QgsSimpleFillSymbolLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

from .compat import enum_value as _enum

FOCUS_LINE, FOCUS_HALO = "0,229,255,255", "16,16,16,180"  # QGIS "r,g,b,a"
#: Heatmap classes, low to high: (colour, alpha 0-255, legend label). Their upper bounds are the
#: quantiles of results_store.HEAT_QUANTILES, then the maximum.
HEAT_CLASSES = (
    ("#000000", 100, "lower half: least attention (dimmed)"),
    ("#000000", 0, "50-75 % (no tint)"),
    ("#ffd24d", 95, "top 25 %"),
    ("#ff8c1a", 135, "top 10 %"),
    ("#e8170c", 175, "top 3 %: most attention"),
)
#: Per-level classes by score quantile, low to high: (upper quantile, colour, label).
LEVEL_CLASSES = (
    (0.5, "#fee5d9", "lower half (less attention)"),
    (0.75, "#fcae91", "50-75 %"),
    (0.9, "#fb6a4a", "top 25 %"),
    (1.0, "#cb181d", "top 10 % (more attention)"),
)


# -- focus tiles --------------------------------------------------------------------------------
def focus_symbol() -> QgsFillSymbol:
    """Outline only: a dark halo under a bright line, readable on any image and on the heatmap."""
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": FOCUS_HALO, "outline_width": "1.1"})
    symbol.appendSymbolLayer(QgsSimpleFillSymbolLayer.create(
        {"style": "no", "outline_color": FOCUS_LINE, "outline_width": "0.45", "joinstyle": "miter"}))
    return symbol


def style_focus(layer: QgsVectorLayer, field: str = "focus_rank") -> None:
    layer.setRenderer(QgsSingleSymbolRenderer(focus_symbol()))
    set_rank_labels(layer, field)


def set_rank_labels(layer: QgsVectorLayer, field: str = "focus_rank") -> None:
    label = QgsPalLayerSettings()
    label.isExpression = True
    label.fieldName = f'if("{field}" IS NOT NULL, to_string("{field}"), \'\')'
    fmt = label.format()
    font = QFont()
    font.setBold(True)
    fmt.setFont(font)
    fmt.setSize(10)
    fmt.setColor(QColor("#ffffff"))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setColor(QColor("#101010"))
    buffer.setSize(1.2)
    fmt.setBuffer(buffer)
    label.setFormat(fmt)
    label.placement = _enum(
        (Qgis, "LabelPlacement.OverPoint"), (QgsPalLayerSettings, "Placement.OverPoint"), (QgsPalLayerSettings, "OverPoint")
    )
    # rank 1 wins a collision with rank 9
    priority = _enum((QgsPalLayerSettings, "Property.Priority"), (QgsPalLayerSettings, "Priority"))
    label.dataDefinedProperties().setProperty(priority, QgsProperty.fromExpression(f'10 - min("{field}", 10) * 0.9'))
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label))
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
    fill.setDataDefinedProperty(stroke_color, QgsProperty.fromExpression("if(\"kept\", '#08306b', '#606060')"))
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
