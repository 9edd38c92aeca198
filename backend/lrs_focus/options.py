"""What a question may ask for (`AskOptions`) and the callbacks a run reports through.

Stdlib only and imported by both the engine and the per-question code (`answer.py` and the family
modules), so that neither imports the other's module to learn an option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from .errors import BadOptions

MODES = ("paper", "released", "thumbnail", "all-tiles")
PIXELS = ("exact", "gdal")
DTYPES = ("float32", "bfloat16", "float16")
#: focus signals: the released RFM (LLaVA family) or the model's own attention (Qwen-VL families)
FOCUS = ("rfm", "attention", "relative")
ANSWER_INPUTS = ("tiles", "tokens")
MAX_N_MAX = 1024  # tiles per zoom step: bounds the features and the RFM pass whatever is asked
MAX_NEW_TOKENS = 4096

#: progress(stage, level, fraction, message[, overall=]); stage is one of "open", "pyramid", "encode",
#: "focus", "generate", "done"; level is None outside per-level work; fraction in [0, 1] (of the
#: stage); overall in [0, 1] (of the job, monotone; work_meter.py), passed to callbacks that take it.
ProgressFn = Callable[..., None]
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


def taking_overall(progress: ProgressFn | None) -> ProgressFn | None:
    """`progress` if it takes `overall=`; else a wrapper that drops it, so four-argument callbacks
    (stage, level, fraction, message) keep working."""
    import inspect

    if progress is None:
        return None
    try:
        params = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):
        return progress
    if any(p.name == "overall" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return progress

    def four(stage: str, level: Optional[int], fraction: float, message: str, overall: Optional[float] = None) -> None:
        progress(stage, level, fraction, message)

    return four


def stage_checker(progress: ProgressFn | None, should_stop: StopFn | None, rates: Any = None) -> Callable[[str, Optional[int], float, str], None]:
    """progress + cancellation at a stage boundary: raises Cancelled if asked to stop, then reports.

    The returned check is a bound `WorkMeter.check` (its `__self__` is the meter): the run plans its
    work on it so that every message also carries `overall` (work_meter.py)."""
    from .work_meter import WorkMeter

    return WorkMeter(taking_overall(progress), should_stop, rates).check
