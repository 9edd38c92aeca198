"""The bands/stretch the plugin reads off layer renderers, the pixel windows of its areas, and two
asks through the dock that carry them to the backend.

usage: bands_and_area.py ENDPOINT SPEC.json
SPEC: {"multiband": 6-band UInt16 tif, "rgb8": 3-band Byte tif, "palette": palette tif,
       "rotated": rotated tif}
"""

import json
import sys

from qgis_env import FakeIface, add_raster, emit, load_plugin, rect, start_qgis, wait_for

endpoint, spec_file = sys.argv[1:3]
spec = json.load(open(spec_file, encoding="utf-8"))
app = start_qgis()

from qgis.core import (  # noqa: E402
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterShader,
    QgsRectangle,
    QgsSettings,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
iface = FakeIface()
plugin = load_plugin(iface)
from lrs_focus_plugin.display_bands import displayed_bands, parse_bands  # noqa: E402

report = {"renderers": {}, "windows": {}, "asks": {}}


def enhancement(provider, band, lo, hi):
    ce = QgsContrastEnhancement(provider.dataType(band))
    ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
    ce.setMinimumValue(lo)
    ce.setMaximumValue(hi)
    return ce


def shown(layer):
    d = displayed_bands(layer)
    return {"bands": list(d.bands) if d.bands else None,
            "stretch": [list(p) for p in d.stretch] if d.stretch else None, "text": d.text,
            "renderer": layer.renderer().type()}


multi = add_raster(spec["multiband"], "six bands")
provider = multi.dataProvider()
renderer = QgsMultiBandColorRenderer(provider, 3, 2, 1)
for setter, band, lo, hi in ((renderer.setRedContrastEnhancement, 3, 1200, 9000),
                             (renderer.setGreenContrastEnhancement, 2, 1100, 8000),
                             (renderer.setBlueContrastEnhancement, 1, 1000, 7000)):
    setter(enhancement(provider, band, lo, hi))
multi.setRenderer(renderer)
report["renderers"]["multiband 3,2,1"] = shown(multi)

grey = add_raster(spec["multiband"], "grey band 4")
gray_renderer = QgsSingleBandGrayRenderer(grey.dataProvider(), 4)
gray_renderer.setContrastEnhancement(enhancement(grey.dataProvider(), 4, 500, 6000))
grey.setRenderer(gray_renderer)
report["renderers"]["single band grey 4"] = shown(grey)

pseudo = add_raster(spec["multiband"], "pseudocolour band 5")
ramp = QgsColorRampShader(250, 7500)
ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(250, QColor("#000000")),
                           QgsColorRampShader.ColorRampItem(7500, QColor("#ffffff"))])
shader = QgsRasterShader()
shader.setRasterShaderFunction(ramp)
pseudo_renderer = QgsSingleBandPseudoColorRenderer(pseudo.dataProvider(), 5, shader)
pseudo_renderer.setClassificationMin(250)
pseudo_renderer.setClassificationMax(7500)
pseudo.setRenderer(pseudo_renderer)
report["renderers"]["pseudocolour 5"] = shown(pseudo)

report["renderers"]["palette default"] = shown(add_raster(spec["palette"], "palette"))
report["renderers"]["rgb 8-bit default"] = shown(add_raster(spec["rgb8"], "rgb8"))
report["parse"] = {text: list(parse_bands(text, 6)) for text in ("", "4,3,2", "4 3 2", "7", "1,2", "a,b,c")}

# -- areas -> pixel windows ---------------------------------------------------------------------
from lrs_focus_plugin.area import window_for_rectangle  # noqa: E402
from lrs_focus_plugin.result_files import raster_ground  # noqa: E402

web = QgsCoordinateReferenceSystem("EPSG:3857")
rotated = add_raster(spec["rotated"], "rotated")
for name, layer, crs_name, box in spec["areas"]:
    crs = QgsCoordinateReferenceSystem(crs_name)
    ground = raster_ground(layer == "rotated" and spec["rotated"] or spec["multiband"])
    raster_layer = rotated if layer == "rotated" else multi
    window = window_for_rectangle(QgsRectangle(*box), crs, raster_layer.crs(), ground)
    report["windows"][name] = list(window) if window else None

# -- asks through the dock ----------------------------------------------------------------------
dock = plugin.dock


def ask(layer, question, area, prepare=None):
    dock.layer_combo.setLayer(layer)
    dock.question.setText(question)
    dock.area.setCurrentText(area)
    if prepare:
        prepare()
    captured = {}
    dock.ask_button.click()
    task = plugin.task
    if task is None:
        return {"refused": iface.messages[-1] if iface.messages else "?"}
    task.answered.connect(lambda result, layers: captured.update(result=result))
    task.failed.connect(lambda code, message: captured.update(error=[code, message]))
    wait_for(lambda: plugin.task is None, 120)
    result = captured.get("result") or {}
    return {"error": captured.get("error"), "options": result.get("options"),
            "windows": [f["properties"]["window"] for f in (result.get("features") or {}).get("features", [])],
            "stage": dock.stage.text()}


report["asks"]["multiband as displayed"] = ask(multi, "What is in band 3?", "whole raster")
canvas = iface.mapCanvas()
canvas.resize(800, 600)
canvas.setDestinationCrs(web)
canvas.setExtent(QgsRectangle(*spec["visible_3857"]))
report["visible_extent"] = {"extent": rect(canvas.extent()), "crs": canvas.mapSettings().destinationCrs().authid()}
report["asks"]["visible extent"] = ask(multi, "What is visible?", "visible extent")


def draw():
    plugin.area_picker.drawn_rectangle(QgsRectangle(*spec["drawn_3857"]))  # what the map tool emits after a drag


report["asks"]["drawn rectangle"] = ask(multi, "What is in the box?", "drawn rectangle", draw)
report["drawn_area_choice"] = dock.area_choice()

polygons = QgsVectorLayer("Polygon?crs=EPSG:4326", "areas", "memory")
feature = QgsFeature()
feature.setGeometry(QgsGeometry.fromWkt(spec["selected_wkt_4326"]))
polygons.dataProvider().addFeatures([feature])
QgsProject.instance().addMapLayer(polygons)


def select():
    polygons.selectAll()
    iface.active = polygons


report["asks"]["selected features on rotated"] = ask(rotated, "What is in the polygon?", "selected features", select)
report["asks"]["no overlap"] = ask(multi, "Outside?", "drawn rectangle",
                                   lambda: plugin.area_picker.drawn_rectangle(QgsRectangle(0, 0, 10, 10)))
report["asks"]["bad bands"] = ask(multi, "Bands?", "whole raster", lambda: dock.bands.setText("9,1,2"))
dock.bands.setText("")

# a raster without georeferencing is drawn untransformed in the canvas CRS (here EPSG:3857): a
# polygon selected in EPSG:4326 is where the user sees it once reprojected to the canvas's CRS
from lrs_focus_plugin.ask_request import RequestProblem, area_window  # noqa: E402
from lrs_focus_plugin.result_files import raster_ground  # noqa: E402

plain = add_raster(spec["plain"], "plain")
on_plain = QgsVectorLayer("Polygon?crs=EPSG:4326", "on plain", "memory")
feature = QgsFeature()
feature.setGeometry(QgsGeometry.fromWkt(spec["plain_wkt_4326"]))
on_plain.dataProvider().addFeatures([feature])
QgsProject.instance().addMapLayer(on_plain)
on_plain.selectAll()
iface.active = on_plain
try:
    window, _ = area_window("selected features", plain, raster_ground(spec["plain"]), iface, None)
    report["plain_selected"] = list(window)
except RequestProblem as exc:
    report["plain_selected"] = str(exc)
report["plain_canvas_crs"] = canvas.mapSettings().destinationCrs().authid()
emit(report)
plugin.unload()
