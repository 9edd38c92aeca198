"""One monotone fraction for the whole job, from the backend's (stage, level, fraction[, overall]) events.

A backend that sends `overall` (the job's share done, measured from its work: pixels to decode,
tiles to encode, tokens to prefill and generate) drives the bar as it is: overall 0.4 shows 40 %, the
figure `lrs-focus ask` prints as `job 40%` (connect, queue, open and pyramid, which come before the
first `overall`, take the bar's first 6 %; it waits there until `overall` passes them).
The fixed stage spans below are the fallback for an older backend without `overall`.

The backend reports each stage's own fraction (0..1 within "encode level 2", then 0 again in
"focus level 2"...), so showing it as is makes the bar jump back and forth. Stages get fixed
spans of one 0..100 bar. The number of pyramid levels is not known in advance (it depends on
the raster and the model), so each level takes half of what is left of the levels' span:
always moving forward, never past the generation stage. A value never goes back.
"""

from __future__ import annotations

from typing import Optional

#: (start, end) of each stage on the overall bar, in %, in the order the backend runs them.
SPANS = {
    "connect": (0.0, 1.0),
    "start": (0.0, 1.0),
    "queued": (1.0, 2.0),
    "open": (2.0, 4.0),
    "pyramid": (4.0, 6.0),
    "thumbnail": (6.0, 10.0),  # "encode" with no level
    "levels": (10.0, 85.0),  # "encode"/"focus" of level 0, 1, 2, ...
    "generate": (85.0, 99.0),
    "done": (100.0, 100.0),
}
ENCODE_SHARE = 0.8  # of a level's slot: encoding its tiles; the rest: scoring them


def level_slot(level: int) -> tuple[float, float]:
    start, end = SPANS["levels"]
    width = end - start
    lo = start + width * (1.0 - 0.5 ** level)
    return lo, lo + width * 0.5 ** (level + 1)


def position(stage: str, level: Optional[int], fraction: float) -> Optional[float]:
    """Where (stage, level, fraction) sits on the overall bar, or None for an unknown stage."""
    f = min(max(float(fraction), 0.0), 1.0)
    if stage in ("encode", "focus") and level is not None and level >= 0:
        lo, hi = level_slot(int(level))
        split = lo + (hi - lo) * ENCODE_SHARE
        return lo + (split - lo) * f if stage == "encode" else split + (hi - split) * f
    key = "thumbnail" if stage == "encode" else stage
    if key not in SPANS:
        return None
    lo, hi = SPANS[key]
    return lo + (hi - lo) * f


class OverallProgress:
    """Feed it every event; `percent` only grows."""

    def __init__(self) -> None:
        self.percent = 0.0

    def update(self, stage: str, level: Optional[int], fraction: float, overall: Optional[float] = None) -> float:
        if stage == "done":
            where: Optional[float] = 100.0
        elif overall is not None:
            where = 100.0 * min(max(float(overall), 0.0), 1.0)
        else:
            where = position(stage, level, fraction)
        if where is not None:
            self.percent = max(self.percent, where)
        return self.percent


#: what a stage does, for a message that came without text
STAGE_WORDS = {"connect": "contacting the backend", "queued": "queued", "open": "opening the raster",
               "pyramid": "planning the pyramid", "encode": "encoding tiles", "focus": "scoring tiles",
               "generate": "writing the answer", "done": "done"}


def stage_text(stage: str, level: Optional[int], message: str) -> str:
    """The stage line under the bar: the backend's message, which already names the stage and level
    ("encoded 16/34 tiles of level 2"; a prefix "encode (level 2):" repeated it), else the stage in words."""
    if message:
        return message
    words = STAGE_WORDS.get(stage, stage)
    return f"{words} (level {level})" if level is not None else words
