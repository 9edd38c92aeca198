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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol

from .errors import BadOptions, Cancelled

log = logging.getLogger(__name__)
DEFAULT_MODEL = "ll-13/llava-largeimg-Qwen2-7B"

MODES = ("paper", "released", "thumbnail", "all-tiles")
PIXELS = ("exact", "gdal")
DTYPES = ("float32", "bfloat16", "float16")
#: focus signals: the released RFM (LLaVA family) or the model's own attention (Qwen-VL families)
FOCUS = ("rfm", "attention", "relative")
ANSWER_INPUTS = ("tiles", "tokens")
MAX_N_MAX = 1024  # tiles per zoom step: bounds the features and the RFM pass whatever is asked
MAX_NEW_TOKENS = 4096

#: progress(stage, level, fraction, message); stage is one of "open", "pyramid", "encode",
#: "focus", "generate", "done"; level is None outside per-level work; fraction in [0, 1].
ProgressFn = Callable[[str, Optional[int], float, str], None]
#: should_stop() is polled at every stage boundary; True makes `ask` raise errors.Cancelled.
StopFn = Callable[[], bool]


@dataclass
class AskOptions:
    mode: str = "paper"
    alpha: float = 0.25
    n_max: Optional[int] = None  # None: the model's default (40 Vicuna, 80 Qwen2)
    bands: Optional[list[int]] = None  # 1-based GDAL band numbers, 1 or 3 of them
    max_levels: Optional[int] = None  # cap on tiled levels used (None: all)
    max_new_tokens: int = 64
    score_reduce: str = "sum"  # how a tile's score is made from its tokens' attention: sum|max
    window: Optional[list[float]] = None  # [x0, y0, x1, y1] pixel window of the raster to ask about
    stretch: Optional[list[list[float]]] = None  # [[low, high]] per band -> 0..255 (None: 2-98 %)
    max_length: Optional[int] = None  # override the model's sequence limit (vision tokens drop first)
    pixels: Optional[str] = None  # "exact" (released preprocessing) | "gdal" (overviews, fast); None = default
    focus: Optional[str] = None  # rfm | attention | relative; None = the family's own (rfm / attention)
    focus_layer: Optional[int] = None  # Qwen-VL: layer of the attention focus (None = the model's preset)
    focus_heads: Optional[list[int]] = None  # Qwen-VL: heads averaged (None = all)
    answer_input: str = "tiles"  # Qwen-VL: the kept tiles whole, or only their kept tokens ("tokens")
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "AskOptions":
        if self.mode not in MODES:
            raise BadOptions(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not (0.0 < float(self.alpha) <= 1.0):
            raise BadOptions(f"alpha must be in (0, 1], not {self.alpha!r}")
        if self.n_max is not None and not (1 <= int(self.n_max) <= MAX_N_MAX):
            raise BadOptions(f"n_max must be a number of tiles in 1..{MAX_N_MAX}, not {self.n_max!r}")
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise BadOptions(f"bands must list 1 or 3 band numbers, not {self.bands!r}")
        if self.max_levels is not None and int(self.max_levels) < 1:
            raise BadOptions(f"max_levels must be >= 1, not {self.max_levels!r}")
        if not (1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS):
            raise BadOptions(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, not {self.max_new_tokens!r}")
        if self.score_reduce not in ("sum", "max"):
            raise BadOptions(f"score_reduce must be sum or max, not {self.score_reduce!r}")
        if self.window is not None:
            if len(self.window) != 4:
                raise BadOptions(f"window must be [x0, y0, x1, y1], not {self.window!r}")
            x0, y0, x1, y1 = (float(v) for v in self.window)
            if not (x1 > x0 and y1 > y0 and x0 >= 0 and y0 >= 0):
                raise BadOptions(f"window must have x1 > x0 >= 0 and y1 > y0 >= 0, not {self.window!r}")
        if self.stretch is not None:
            pairs = [list(p) for p in self.stretch]
            if len(pairs) not in (1, 3) or any(len(p) != 2 or not float(p[1]) > float(p[0]) for p in pairs):
                raise BadOptions(f"stretch must be 1 or 3 [low, high] pairs with high > low, not {self.stretch!r}")
        if self.max_length is not None and int(self.max_length) < 1:
            raise BadOptions(f"max_length must be a positive number of tokens, not {self.max_length!r}")
        if self.pixels is not None and self.pixels not in PIXELS:
            raise BadOptions(f"pixels must be one of {', '.join(PIXELS)}, not {self.pixels!r}")
        if self.focus is not None and self.focus not in FOCUS:
            raise BadOptions(f"focus must be one of {', '.join(FOCUS)}, not {self.focus!r}")
        if self.focus_layer is not None and (isinstance(self.focus_layer, bool) or int(self.focus_layer) < 0
                                             or int(self.focus_layer) != self.focus_layer):
            raise BadOptions(f"focus_layer must be a layer number >= 0, not {self.focus_layer!r}")
        if self.focus_heads is not None:
            heads = list(self.focus_heads)
            if not heads or any(isinstance(h, bool) or int(h) != h or int(h) < 0 for h in heads):
                raise BadOptions(f"focus_heads must list head numbers >= 0, not {self.focus_heads!r}")
        if self.answer_input not in ANSWER_INPUTS:
            raise BadOptions(f"answer_input must be one of {', '.join(ANSWER_INPUTS)}, not {self.answer_input!r}")
        if self.pixels == "gdal" and self.mode == "released":
            raise BadOptions("released mode always uses the released pixels (pixels=exact)")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AskOptions":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "extra"}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BadOptions(f"unknown option(s): {', '.join(unknown)}")
        return cls(**known).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    Heavy imports happen here, not at module import, so the service and the CLI stay light until
    an engine is really built.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None, seed: int = 0,
                 cache_mb: float | None = None):
        from .features import DEFAULT_CACHE_MB, FeatureCache
        from .model.loading import load_model, parse_dtype

        mb = DEFAULT_CACHE_MB if cache_mb is None else float(cache_mb)
        if not (math.isfinite(mb) and mb >= 0):  # checked before a 7B model is loaded
            raise BadOptions(f"cache_mb must be a finite number of MB >= 0 (0 = no cache), not {cache_mb}")
        t0 = time.perf_counter()
        self.model, self.tokenizer, self.info = load_model(model, device=device, dtype=parse_dtype(dtype), seed=seed)
        self.name = model
        self.cache = FeatureCache(int(mb * 2**20), device=self.info["device"]) if mb > 0 else None
        self.load_seconds = time.perf_counter() - t0
        log.info("model %s loaded in %.1f s on %s (%s)%s", model, self.load_seconds, self.info["device"],
                 self.info["dtype"], ", RANDOM WEIGHTS" if self.info["random_weights"] else "")

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "device": self.info["device"],
            "dtype": self.info["dtype"],
            "random_weights": self.info["random_weights"],
            "family": self.model.config.family,
            "n_max": self.model.config.n_max,
        }

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


def stage_checker(progress: ProgressFn | None, should_stop: StopFn | None) -> Callable[[str, Optional[int], float, str], None]:
    """progress + cancellation at a stage boundary: reports, then raises Cancelled if asked to stop."""

    def check(stage: str, level: Optional[int], fraction: float, message: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled before {stage}" + (f" (level {level})" if level is not None else ""))
        if progress is not None:
            progress(stage, level, float(fraction), message)

    return check
