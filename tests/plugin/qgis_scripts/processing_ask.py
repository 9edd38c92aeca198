"""Run the Processing algorithm "Ask raster" with processing.run and read its output.

usage: processing_ask.py ENDPOINT RASTER OUT_GPKG
"""

import sys

from qgis_env import FakeIface, add_raster, bbox, emit, load_plugin, start_qgis

endpoint, raster, out = sys.argv[1:4]
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


results = processing.run(
    "lrsfocus:askraster",
    {"INPUT": layer, "QUESTION": "Is there a river?", "MODE": 0, "ALPHA": 0.25, "N_MAX": 0,
     "ENDPOINT": endpoint, "OUTPUT": out},
    feedback=Feedback(),
)
vl = QgsVectorLayer(results["OUTPUT"], "out", "ogr")
feats = [{"level": f["level"], "kept": bool(f["kept"]), "bbox": bbox(f.geometry())} for f in vl.getFeatures()]
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
})
plugin.unload()
