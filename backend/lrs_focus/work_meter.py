"""The job's share done (`overall`, 0..1, monotone) from measured work, and messages that keep coming.

Stage fractions say how far one stage is, not the job: a cold question on a 20000 x 15000 raster
spent 8.5 of 11 s in the exact-pixel base pass that "encoding the thumbnail" triggers. Once the
pyramid is known the meter plans the work in units the run measures as it goes (source pixels the
base pass decodes, tiles the vision tower encodes, token-layers of each RFM pass, the answer's
prefill and decoding steps) and prices them with rates: pixels per second measured on the pass
itself, tiles per second measured from the encoder once it ran, and per-layer token costs timed
once per engine on the model (`calibrate`). `overall` = elapsed / (elapsed + the priced work left),
never going back; the plan is corrected as the run learns how many tiles a level really needs.

Messages: every stage edge, and at most `HEARTBEAT_S` apart during long stages (between strip reads
of the base pass, between tile batches, before every transformer block of a pass).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import Cancelled

HEARTBEAT_S = 1.0  # the issue asks for a message at least every 2 s


@dataclass
class Rates:
    """Seconds per unit of work; `calibrate` times them on the engine's model and device."""

    pixel: float = 2e-8  # one source pixel decoded, stretched and gathered (exact base pass)
    tile: float = 0.01  # one tile through the vision tower, its read included
    token_layer: float = 2e-6  # one token through one decoder layer (prefill, RFM passes)
    step_layer: float = 2e-4  # one decoding step through one decoder layer


def calibrate(model: Any) -> Rates:
    """Time one tile and a short prefill on the model (milliseconds with the tiny model; a fraction of
    a second for 7B on a GPU). Models without the LLaVA parts keep the default rates."""
    import numpy as np
    import torch

    rates = Rates()
    try:
        from .stage_clock import clock_of

        clock = clock_of(model)
        b = int(model.config.tile_size)
        with torch.inference_mode():
            model.encode_tiles(np.zeros((1, b, b, 3), dtype=np.uint8))  # warm-up
            t0 = clock.now()
            model.encode_tiles(np.zeros((2, b, b, 3), dtype=np.uint8))
            rates.tile = (clock.now() - t0) / 2
            layers = len(model.llm.model.layers)
            embeds = torch.zeros(1, 256, model.config.hidden_size, dtype=model.dtype, device=model.device)
            model.llm.model(inputs_embeds=embeds[:, :16])  # warm-up
            t0 = clock.now()
            model.llm.model(inputs_embeds=embeds)
            rates.token_layer = (clock.now() - t0) / (256 * layers)
            t0 = clock.now()
            model.llm.model(inputs_embeds=embeds[:, :1])
            rates.step_layer = (clock.now() - t0) / layers
    except (AttributeError, TypeError, RuntimeError):
        pass
    return rates


class WorkMeter:
    """Wraps a job's progress callback: stage edges and heartbeats carry `overall`."""

    def __init__(self, progress: Optional[Callable[..., None]], should_stop: Optional[Callable[[], bool]],
                 rates: Rates | None = None, clock: Callable[[], float] = time.monotonic):
        self.progress, self.should_stop = progress, should_stop
        self.rates = rates or Rates()
        self.clock = clock
        self.t0 = clock()
        self.overall = 0.0
        self.last = (None, None, 0.0, "")  # the last stage message (stage, level, fraction, message)
        self.last_sent = self.t0
        self.planned = False
        self.left = {"pixels": 0.0, "tiles": 0.0, "llm": 0.0}  # seconds of work not started
        self.levels: list[dict[str, float]] = []  # per level still to come: {"tiles", "score"} seconds
        self.stage_work = 0.0  # seconds the current lump of work (a pass, a batch) was priced at
        self.stage_start = self.t0
        self.pixel_source: Any = None  # the exact pyramid being read (its `source_pixels` grows)
        self.pixels_total = 0
        self.pixel_t0: float | None = None

    # -- the plan --------------------------------------------------------------------------------
    def plan(self, geo: Any, mode: str, n_max: int, alpha: float, text_tokens: int, thumb_tokens: int,
             layers: tuple[int, int], max_new_tokens: int, max_length: int, pixels: int = 0,
             max_levels: int | None = None) -> None:
        """Price the run once the pyramid is known. `layers`: (RFM layers, LLM layers)."""
        r = self.rates
        rfm_layers, llm_layers = layers
        t = geo.cfg.tokens_per_tile
        levels = geo.levels[: max_levels or len(geo.levels)]
        counts = [lv.grid[0] * lv.grid[1] for lv in levels]
        if mode == "thumbnail":
            tiles = []
        elif mode == "all-tiles":
            fits = [c for c in counts if c <= 4 * n_max] or counts[:1]
            tiles = [fits[-1]]
        else:
            tiles = [counts[0]]
            for c in counts[1:]:  # a zoom keeps about alpha of the tokens: ~ twice the tiles, capped
                nxt = min(c, max(1, math.ceil(tiles[-1] * 8 * alpha)))
                if nxt > n_max:
                    break
                tiles.append(nxt)
                if mode == "released":
                    break
        fixed = text_tokens + thumb_tokens + 1
        self.levels = [{"tiles": n * r.tile,
                        "score": (fixed + n * t * (t + 1)) * rfm_layers * r.token_layer if mode != "all-tiles" else 0.0}
                       for n in tiles]
        kept = tiles[-1] * t * (t + 1) * (alpha if mode in ("paper", "released") else 1.0) if tiles else 0
        prefill = min(max_length, fixed + kept)
        self.left["tiles"] = r.tile  # the thumbnail
        self.left["llm"] = prefill * llm_layers * r.token_layer + max_new_tokens * llm_layers * r.step_layer
        self.pixels_total = int(pixels)
        self.left["pixels"] = pixels * r.pixel
        self.planned = True

    def level_tiles(self, index: int, n: int) -> None:
        """The run knows how many tiles the next level needs: re-price it (later levels scale with it)."""
        if index < len(self.levels):
            old = self.levels[index]["tiles"] / max(self.rates.tile, 1e-12)
            scale = n / old if old else 1.0
            for lv in self.levels[index:]:
                lv["tiles"] *= scale
                lv["score"] *= scale

    # -- measured work ---------------------------------------------------------------------------
    def _remaining(self, now: float) -> float:
        left = self.left["tiles"] + self.left["llm"] + sum(v for lv in self.levels for v in lv.values())
        if self.pixel_source is not None and self.pixels_total:
            done = int(getattr(self.pixel_source, "source_pixels", 0))
            if self.pixel_t0 is not None and done > 0 and now > self.pixel_t0:
                self.rates.pixel = (now - self.pixel_t0) / done  # measured on the pass itself
            left += max(0, self.pixels_total - done) * self.rates.pixel
        else:
            left += self.left["pixels"]
        return left + max(0.0, self.stage_work - (now - self.stage_start))

    def _share(self, now: float) -> float:
        if not self.planned:
            return self.overall
        elapsed = now - self.t0
        left = self._remaining(now)
        share = elapsed / (elapsed + left) if elapsed + left > 0 else 1.0
        self.overall = max(self.overall, min(share, 0.99))
        return self.overall

    def start(self, work: str, index: int | None = None) -> None:
        """A lump of planned work begins: 'thumbnail', 'tiles' or 'score' of level `index`, 'llm'."""
        now = self.clock()
        if work == "thumbnail":
            seconds, self.left["tiles"] = self.left["tiles"], 0.0
        elif work == "llm":  # levels the run did not reach are no longer work to do
            seconds, self.left["llm"], self.levels = self.left["llm"], 0.0, []
        elif index is not None and self.levels:
            lv = self.levels[min(index, len(self.levels) - 1)]
            seconds, lv[work] = lv[work], 0.0
        else:
            seconds = 0.0
        self.stage_work, self.stage_start = seconds, now

    def reading(self, pyramid: Any) -> None:
        """The exact base pass starts on `pyramid` (its `source_pixels` counts what was read)."""
        self.pixel_source, self.pixel_t0 = pyramid, self.clock()
        self.left["pixels"] = 0.0

    # -- messages ----------------------------------------------------------------------------------
    def _send(self, stage: str, level: Optional[int], fraction: float, message: str, now: float) -> None:
        self.last, self.last_sent = (stage, level, fraction, message), now
        if self.progress is not None:
            self.progress(stage, level, float(fraction), message, overall=self._share(now) if stage != "done" else 1.0)

    def check(self, stage: str, level: Optional[int], fraction: float, message: str) -> None:
        """The `stage_checker` of a metered run: cancel, then a message with `overall`."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"cancelled before {stage}" + (f" (level {level})" if level is not None else ""))
        if stage == "done":
            self.overall = 1.0
        self._send(stage, level, fraction, message, self.clock())

    def beat(self) -> None:
        """Between strip reads, tile batches and transformer blocks: cancel, and a message when the last
        one is `HEARTBEAT_S` old (the stage's own message again, with the new `overall`)."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled during " + (self.last[0] or "the run"))
        now = self.clock()
        if now - self.last_sent >= HEARTBEAT_S and self.last[0] is not None:
            self._send(*self.last, now)


def meter_of(check: Any) -> WorkMeter | None:
    """The meter behind a run's `check` (`options.stage_checker` returns its bound `check`), if any."""
    meter = getattr(check, "__self__", None)
    return meter if isinstance(meter, WorkMeter) else None


def base_pass_pixels(pyramid: Any) -> int:
    """Source pixels the exact pyramid's base pass will decode (0 when done or not an exact pyramid):
    its strips over the sample rows of the base level, the thumbnail and the gathered coarse grids."""
    if getattr(pyramid, "_thumbnail", True) is not None or not hasattr(pyramid, "_plan_base_pass"):
        return 0
    try:
        import numpy as np

        from .exact_pixels import STRIP_BYTES, _needed, _runs

        base = pyramid.geometry.levels[0]
        th, tw = pyramid.geometry.thumbnail_size
        rh, rw = base.resized
        i_base, i_thumb = pyramid._index((rh, rw), (0, rh, 0, rw)), pyramid._index((th, tw), (0, th, 0, tw))
        rows = np.union1d(_needed(i_base[0]), _needed(i_thumb[0]))
        cols = np.union1d(_needed(i_base[1]), _needed(i_thumb[1]))
        for r, c in pyramid._plan_base_pass(rows, cols).values():
            rows, cols = np.union1d(rows, r), np.union1d(cols, c)
        width = int(cols[-1]) + 1 - int(cols[0])
        return sum((y1 - y0) * width for y0, y1 in _runs(rows, max(1, STRIP_BYTES // (3 * width))))
    except (AttributeError, ImportError, TypeError, ValueError, IndexError):
        return int(pyramid.geometry.height) * int(pyramid.geometry.width)


class Metered:
    """`encode` / `score` of `focus.run_focus` that tell the meter which planned lump starts."""

    def __init__(self, meter: WorkMeter | None, work: str, fn: Callable[..., Any]):
        self.meter, self.work, self.fn, self.calls = meter, work, fn, 0

    def __call__(self, *args: Any) -> Any:
        if self.meter is not None:
            if self.work == "tiles":
                self.meter.level_tiles(self.calls, len(args[1]))
            self.meter.start(self.work, self.calls)
        self.calls += 1
        return self.fn(*args)
