"""The one public entry point of the method: a raster path and a question -> answer and trace.

`Engine` loads a model once and answers many questions; the CLI (`ask`), the ZeroMQ service,
the benchmark runners and the training check all go through `Engine.ask`, so they share one code
path. Service code and tests may substitute any object with the same `ask`/`describe` methods.

Result of `Engine.ask` (the `ask --json` document of DESIGN section 9; more keys may be added):

    {"answer": str,
     "trace": {"levels": [{"level": i, "scale": s, "grid": [n_rows, n_cols], "reached": bool,
                "tiles": [{"row": r, "col": c, "window": [x0, y0, x1, y1],
                           "encoded": bool, "score": float, "kept": bool, "rank": int|None}, ...]},
               ...],                                      # coarse -> fine, base level = 0; every tile
                                                          # of each reached level, none of the others
               "thumbnail": {"size": [h, w]}, "stopped_at": level, "mode": str},
     "counts": {"tiles_encoded": int, "vit_tokens": int, "llm_vision_tokens": int,
                "prefill_tflops": float},
     "features": GeoJSON FeatureCollection (one feature per encoded tile, raster CRS),
     "crs_wkt": str,                                      # "" when the raster has no CRS
     "timings": {stage: seconds, ..., "total": seconds},
     "model": {"name": str, "random_weights": bool, "device": str, "dtype": str},
     "options": {the AskOptions actually used}}
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

from .errors import BadOptions
from .options import (  # noqa: F401  (re-exported: callers import the options from the engine)
    ANSWER_INPUTS,
    DTYPES,
    FOCUS,
    MAX_N_MAX,
    MAX_NEW_TOKENS,
    MODES,
    PIXELS,
    AskOptions,
    ProgressFn,
    StopFn,
    stage_checker,
)

log = logging.getLogger(__name__)
DEFAULT_MODEL = "ll-13/llava-largeimg-Qwen2-7B"

class AskEngine(Protocol):
    """What the service and the runners need from an engine (the real one or a test fake)."""

    def ask(
        self,
        raster: str,
        question: str,
        options: AskOptions | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        job_id: str = "",
    ) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]:
        """{"model": name, "device": str, "dtype": str, "random_weights": bool}"""
        ...


class Engine:
    """A loaded model that answers questions about rasters (`ask`), one at a time.

    `model`: "tiny" (random weights, offline; also "tiny-llama"), a local directory in the released
    LLaVA layout, or a hub id (downloaded once). `device`: "cuda", "cuda:1", "cpu" (default: CUDA
    when available). `dtype`: "float32" | "bfloat16" | "float16" or a torch dtype (default bf16 on
    CUDA, float32 on CPU). `cache_mb`: tile features kept between questions (0 = none; features.py).
    `answer_server`: a `remote_answer.AnswerServer`: the Qwen-VL answer stage runs there.
    Heavy imports happen here, not at module import, so the service and the CLI stay light until
    an engine is really built.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None, seed: int = 0,
                 cache_mb: float | None = None, answer_server: Any = None):
        from .features import DEFAULT_CACHE_MB, FeatureCache
        from .model.loading import load_model, parse_dtype
        from .question_run import is_vl

        mb = DEFAULT_CACHE_MB if cache_mb is None else float(cache_mb)
        if not (math.isfinite(mb) and mb >= 0):  # checked before a 7B model is loaded
            raise BadOptions(f"cache_mb must be a finite number of MB >= 0 (0 = no cache), not {cache_mb}")
        t0 = time.perf_counter()
        self.model, self.tokenizer, self.info = load_model(model, device=device, dtype=parse_dtype(dtype), seed=seed)
        self.name = model
        self.cache = FeatureCache(int(mb * 2**20), device=self.info["device"]) if mb > 0 else None
        self.answer_server = answer_server  # remote_answer.AnswerServer: answers on an OpenAI-compatible server
        if answer_server is not None and not is_vl(self.model):
            raise BadOptions(f"--answer-endpoint: {model} is a LLaVA + RFM checkpoint, whose answer reads the kept "
                             "pooled CLIP tokens, which no inference server takes; answer servers serve the "
                             "Qwen2.5-VL / Qwen3-VL families (docs/scale.md)")
        #: a readers.pool.ReaderPool (`serve`): every raster of a question is opened and read in a
        #: confined reader process; None (`ask`): GDAL in this process, on the user's own files
        self.readers: Any = None
        self.load_seconds = time.perf_counter() - t0
        from .work_meter import calibrate

        self.work_rates = calibrate(self.model)  # the work meter's rates (progress `overall`), timed once
        log.info("model %s loaded in %.1f s on %s (%s)%s", model, self.load_seconds, self.info["device"],
                 self.info["dtype"], ", RANDOM WEIGHTS" if self.info["random_weights"] else "")

    def describe(self) -> dict[str, Any]:
        out = {
            "model": self.name,
            "device": self.info["device"],
            "dtype": self.info["dtype"],
            "random_weights": self.info["random_weights"],
            "family": self.model.config.family,
            "n_max": self.model.config.n_max,
            **({"answer_server": self.answer_server.describe()} if self.answer_server is not None else {}),
        }
        if self.readers is not None:
            out["confinement"] = self.readers.describe()
        return out

    def ask(
        self,
        raster: str,
        question: str,
        options: AskOptions | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        job_id: str = "",
    ) -> dict[str, Any]:
        from .answer import answer_question

        options = (options or AskOptions()).validate()
        return answer_question(self, raster, question, options, progress, should_stop, job_id)

