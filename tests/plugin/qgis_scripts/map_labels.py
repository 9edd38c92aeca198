"""Which rank labels QGIS actually draws, counted from the renderer's labelingResults().

usage: map_labels.py ENDPOINT RASTER OUT_GPKG

1. Ask from the dock (whole raster); render the answer's group at the default zoom ("Zoom to
   focus", a 1000 x 760 px map: a 1366 x 768 laptop with the dock open) and zoomed in until the
   tiles are 80 px wide; report every placed label with its tile.
2. Run Processing "Ask raster" and render its output (all levels in one layer, styled as the
   post-processor styles it) at the same two zooms.
"""

import sys

from qgis_env import FakeIface, add_raster, ask_in_dock, emit, load_plugin, rect, start_qgis, wait_for

endpoint, raster, out = sys.argv[1:4]
app = start_qgis(processing=True)
import processing  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
SIZE = (1000, 760)


def render(layers, extent):
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layer.crs())
    settings.setOutputSize(QSize(*SIZE))
    settings.setOutputDpi(96)
    settings.setExtent(extent)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    results = job.takeLabelingResults()
    labels = [p for p in results.allLabels() if not getattr(p, "isUnplaced", False)]
    return settings, [{"text": p.labelText, "feature": p.featureId, "rect": rect(p.labelRect)} for p in labels]


def tiles(vector):
    return {f.id(): {"rank": f["focus_rank"] if str(f["focus_rank"]) != "NULL" else None,
                     "bbox": rect(f.geometry().boundingBox()), "level": f["level"]}
            for f in vector.getFeatures()}


def zooms(vector, layers):
    ranked = sorted((t for t in tiles(vector).values() if t["rank"] is not None), key=lambda t: t["rank"])
    x0, y0, x1, y1 = ranked[0]["bbox"]
    focus = QgsRectangle()
    for t in ranked:
        focus.combineExtentWith(QgsRectangle(*t["bbox"]))
    default = focus.buffered(max(focus.width(), focus.height()) * 0.15)  # what "Zoom to focus" shows
    width = (x1 - x0) * SIZE[0] / 80.0  # tiles 80 px wide
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    near = QgsRectangle(cx - width / 2, cy - width / 2 * SIZE[1] / SIZE[0], cx + width / 2, cy + width / 2 * SIZE[1] / SIZE[0])
    out = {}
    for name, extent in (("default", default), ("near", near)):
        settings, labels = render(layers, extent)
        out[name] = {"labels": labels, "extent": rect(settings.visibleExtent()), "scale": settings.scale(),
                     "px_per_unit": SIZE[0] / settings.visibleExtent().width()}
    return out


report = {}
task = ask_in_dock(plugin, layer, "Where are the largest agricultural fields?")
wait_for(lambda: plugin.task is None, 180)
group_layers = plugin.last_layers
focus = group_layers[0]
shown = [lyr for lyr in group_layers if QgsProject.instance().layerTreeRoot().findLayer(lyr.id()).isVisible()]
report["dock"] = {"tiles": tiles(focus), "layer": focus.name(), "zooms": zooms(focus, shown + [layer]),
                  "labels_enabled": focus.labelsEnabled()}

from lrs_focus_plugin.result_style import style_all_levels  # noqa: E402

results = processing.run("lrsfocus:askraster", {"INPUT": layer, "QUESTION": "Is there a river?", "MODE": 0,
                                                "ALPHA": 0.25, "N_MAX": 0, "ENDPOINT": endpoint, "OUTPUT": out})
tiles_layer = QgsVectorLayer(results["OUTPUT"], "processing", "ogr")
style_all_levels(tiles_layer)  # what the output's post-processor does when QGIS loads it
report["processing"] = {"tiles": tiles(tiles_layer), "zooms": zooms(tiles_layer, [tiles_layer, layer]),
                        "heatmap": results.get("HEATMAP")}
emit(report)
plugin.unload()
