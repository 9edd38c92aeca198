"""DEVELOPMENT STAND-IN, used only while `lrs_focus.engine.Engine` does not exist yet.

Runs the real `lrs_focus.service.Server` with an engine that skips the model: the trace has the
real pyramid geometry of the raster (RasterSource + PyramidGeometry + geo.trace_to_features),
scores are a deterministic function of the tile. The tests switch to `lrs-focus serve --model
tiny` as soon as the real Engine exists (see conftest.backend_command).

    python standin_backend.py --endpoint tcp://127.0.0.1:PORT [--stage-seconds 0.3]
"""

from __future__ import annotations

import argparse
import math
import signal
import threading
import time

from lrs_focus import geo
from lrs_focus.errors import Cancelled
from lrs_focus.pyramid import PyramidGeometry
from lrs_focus.raster import RasterSource
from lrs_focus.service import Server


class StandInEngine:
    def __init__(self, stage_seconds: float):
        self.stage_seconds = stage_seconds

    def describe(self):
        return {"model": "stand-in", "device": "cpu", "dtype": "float32", "random_weights": True}

    def ask(self, raster, question, options=None, progress=None, should_stop=None, job_id=""):
        def stage(name, level, fraction):
            if should_stop and should_stop():
                raise Cancelled("cancelled at a stage boundary")
            if progress:
                progress(name, level, fraction, "")
            time.sleep(self.stage_seconds)

        stage("open", None, 0.05)
        src = RasterSource.open(raster)
        geom = PyramidGeometry(src.height, src.width)
        levels, wanted = [], None
        for lv in geom.levels:
            stage("focus", lv.index, 0.1 + 0.8 * (lv.index + 1) / len(geom.levels))
            tiles = []
            for r in range(lv.grid[0]):
                for c in range(lv.grid[1]):
                    window = list(geom.tile_window(lv, r, c))
                    enc = wanted is None or any(
                        w[0] < window[2] and window[0] < w[2] and w[1] < window[3] and window[1] < w[3] for w in wanted
                    )
                    score = (math.sin(r * 1.7 + c * 0.9 + lv.index) + 1.0) / 2.0 if enc else None
                    tiles.append({"row": r, "col": c, "window": window, "encoded": enc, "score": score, "kept": False, "rank": None})
            encoded = sorted((t for t in tiles if t["encoded"]), key=lambda t: -t["score"])
            for rank, t in enumerate(encoded[: max(1, len(encoded) // 4)], start=1):
                t["kept"], t["rank"] = True, rank
            wanted = [t["window"] for t in tiles if t["kept"]]
            levels.append({"level": lv.index, "scale": lv.scale, "grid": list(lv.grid), "tiles": tiles})
        stage("generate", None, 0.95)
        trace = {"levels": levels, "thumbnail": {"size": list(geom.thumbnail_size)}, "stopped_at": len(levels) - 1, "mode": "paper"}
        return {
            "answer": "stand-in answer",
            "trace": trace,
            "counts": {"tiles_encoded": sum(t["encoded"] for lv in levels for t in lv["tiles"]), "vit_tokens": 0,
                       "llm_vision_tokens": 0, "prefill_tflops": 0.0},
            "features": geo.trace_to_features(trace, src.geotransform, src.crs_wkt, job_id, question),
            "crs_wkt": src.crs_wkt,
            "timings": {"total": 0.0},
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stage-seconds", type=float, default=0.3)
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = Server(StandInEngine(args.stage_seconds), args.endpoint).start()
    while not stop.is_set() and not server.stopped:
        stop.wait(0.2)
    server.stop()


if __name__ == "__main__":
    main()
