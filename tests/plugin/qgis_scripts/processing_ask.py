"""Run the Processing algorithm "Ask raster" with processing.run and read its output.

usage: processing_ask.py ENDPOINT RASTER OUT_GPKG [HEATMAP_TIF BANDS AREA]
"""

import sys

from qgis_env import FakeIface, add_raster, bbox, emit, load_plugin, start_qgis

endpoint, raster, out = sys.argv[1:4]
heatmap, bands, area = (sys.argv[4:7] + ["", "", ""])[:3] if len(sys.argv) > 4 else ("", "", "")
app = start_qgis(processing=True)
import processing  # noqa: E402
from qgis.core import QgsApplication, QgsProcessingFeedback, QgsVectorLayer  # noqa: E402

layer = add_raster(raster)
plugin = load_plugin(FakeIface())  # registers the provider as QGIS does (initGui -> initProcessing)
alg = QgsApplication.processingRegistry().algorithmById("lrsfocus:askraster")
log = []


class Feedback(QgsProcessingFeedback):
    def pushInfo(self, info):  # noqa: N802
        log.append(info)
        super().pushInfo(info)


parameters = {"INPUT": layer, "QUESTION": "Is there a river?", "MODE": 0, "ALPHA": 0.25, "N_MAX": 0,
              "ENDPOINT": endpoint, "OUTPUT": out}
if heatmap:
    parameters.update(HEATMAP=heatmap, BANDS=bands, AREA=area)
results = processing.run("lrsfocus:askraster", parameters, feedback=Feedback())
vl = QgsVectorLayer(results["OUTPUT"], "out", "ogr")
feats = [{"level": f["level"], "kept": bool(f["kept"]), "bbox": bbox(f.geometry()),
          "focus_rank": None if str(f["focus_rank"]) == "NULL" else f["focus_rank"],
          "window": [f[k] for k in ("x0", "y0", "x1", "y1")]} for f in vl.getFeatures()]
ext = layer.extent()
emit({
    "algorithm": alg.displayName() if alg else None,
    "answer": results.get("ANSWER"),
    "job_id": results.get("JOB_ID"),
    "tiles": results.get("TILES"),
    "features": feats,
    "crs": vl.crs().authid(),
    "raster_crs": layer.crs().authid(),
    "raster_extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
    "log": log,
    "heatmap": results.get("HEATMAP"),
    "outputs": sorted(results),
})
plugin.unload()
