"""The job's share done (`overall`, 0..1, monotone) from measured work, and messages that keep coming.

Stage fractions say how far one stage is, not the job: a cold question on a 20000 x 15000 raster
spent 8.5 of 11 s in the exact-pixel base pass that "encoding the thumbnail" triggers. Once the
pyramid is known the meter plans the work in units the run measures as it goes (source pixels the
base pass decodes, tiles the vision tower encodes, token-layers of each RFM pass, the answer's
prefill and decoding steps) and prices them with rates: pixels per second measured on the pass
itself, tiles per second measured from the encoder once it ran, and per-layer token costs timed
once per engine on the model (`calibrate`). `overall` = elapsed / (elapsed + the priced work left),
never going back; the plan is corrected as the run learns how many tiles a level really needs.

Messages: every stage edge, and at most `HEARTBEAT_S` (and a tenth of the job's estimated length)
apart during long stages (between strip reads
of the base pass, between tile batches, before every transformer block of a pass).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import Cancelled

#: decoding steps priced, as a share of max_new_tokens: an answer usually ends at its end token well
#: before the cap, and how long it will be is not known in advance (the generate stage's messages
#: still come every HEARTBEAT_S; `overall` jumps to 1 when the answer ends early)
ANSWER_SHARE = 0.25
HEARTBEAT_S = 0.5  # the issue asks for a message at least every 2 s (a busy CPU stretches a block)


@dataclass
class Rates:
    """Seconds per unit of work; `calibrate` times them on the engine's model and device."""

    pixel: float = 2e-8  # one source pixel decoded, stretched and gathered (exact base pass)
    tile: float = 0.01  # one tile through the vision tower, its read included
    token_layer: float = 2e-6  # one token through one decoder layer (prefill, RFM passes)
    step_layer: float = 2e-4  # one decoding step through one decoder layer


def calibrate(model: Any, repeats: int = 2) -> Rates:
    """Time a tile batch, a short prefill and a decoding-sized step on the model, the best of `repeats`
    (done when the engine loads, before any hook of a question is on its blocks)
    (a busy CPU stretches single timings several times): milliseconds with the tiny model, a fraction
    of a second for 7B on a GPU. Models without these parts keep the default rates."""
    import numpy as np
    import torch

    from .stage_clock import clock_of

    rates = Rates()
    clock = clock_of(model)

    def best(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = clock.now()
            fn()
            times.append(clock.now() - t0)
        return min(times)

    try:
        b, n = int(model.config.tile_size), max(1, min(4, int(model.config.encode_batch)))
        tiles = np.zeros((n, b, b, 3), dtype=np.uint8)
        if hasattr(model, "hf"):  # Qwen-VL: the stock language model under the wrapper
            llm, hidden = model.hf.model.language_model, int(model.hidden)
        else:
            llm, hidden = model.llm.model, int(model.config.hidden_size)
        layers = len(llm.layers)
        embeds = torch.zeros(1, 128, hidden, dtype=model.dtype, device=model.device)
        with torch.inference_mode():
            rates.tile = best(lambda: model.encode_tiles(tiles)) / n
            rates.token_layer = best(lambda: llm(inputs_embeds=embeds)) / (128 * layers)
            rates.step_layer = best(lambda: llm(inputs_embeds=embeds[:, :1])) / layers
    except (AttributeError, TypeError, RuntimeError, ValueError):
        pass
    return rates


class WorkMeter:
    """Wraps a job's progress callback: stage edges and heartbeats carry `overall`."""

    def __init__(self, progress: Optional[Callable[..., None]], should_stop: Optional[Callable[[], bool]],
                 rates: Rates | None = None, clock: Callable[[], float] = time.monotonic):
        self.progress, self.should_stop = progress, should_stop
        self._lock = threading.Lock()
        self.rates = dataclasses.replace(rates) if rates is not None else Rates()  # refined on this job only
        self.clock = clock
        self.t0 = clock()
        self.overall = 0.0
        self.last: tuple = (None, None, 0.0, "")  # the last stage message (stage, level, fraction, message)
        self.last_sent = self.t0
        self.planned = False
        # work not started, in units priced by `self.rates`: tiles, token-layers, decoding step-layers
        self.left = {"tile": 0.0, "token_layer": 0.0, "step_layer": 0.0}
        self.levels: list[dict[str, float]] = []  # per level to come: {"tile": tiles, "token_layer": RFM}
        self.lump: dict[str, float] = {}  # the units of the work running now (a level's tiles, a pass)
        self.lump_start = self.t0
        self.pixel_source: Any = None  # the exact pyramid being read (its `source_pixels` grows)
        self.pixels_total = 0
        self.pixel_t0: float | None = None
        self.pixel_seen = (0, 0.0)  # (source_pixels, when the meter saw that count first)
        self.pixel_step = 0  # how much the count grew last time (one band of the pass)
        self.encoder: Any = None  # TileEncoder: its `seconds` / tiles of the first level give the tile rate
        self.tile_rate_fixed = False
        self.scorer: Any = None  # RfmScorer: its `seconds` / `token_layers` refine the token rate

    # -- the plan --------------------------------------------------------------------------------
    def plan(self, geo: Any, mode: str, n_max: int, alpha: float, text_tokens: int, thumb_tokens: int,
             layers: tuple[int, int], max_new_tokens: int, max_length: int, pixels: int = 0,
             max_levels: int | None = None, exact: bool = False, gridded: frozenset = frozenset()) -> None:
        """Plan the run's work once the pyramid is known. `layers`: (RFM layers, LLM layers); `pixels`:
        the exact base pass's source pixels; `exact`: finer tiles read their own source windows, but
        those of `gridded` levels (samples the base pass gathers) read nothing."""
        rfm_layers, llm_layers = layers
        t = geo.cfg.tokens_per_tile
        levels = geo.levels[: max_levels or len(geo.levels)]
        counts = [lv.grid[0] * lv.grid[1] for lv in levels]
        if mode == "thumbnail":
            tiles: list[int] = []
        elif mode == "all-tiles":
            tiles = [([c for c in counts if c <= 4 * n_max] or counts[:1])[-1]]
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
        first = 0 if mode != "all-tiles" else len([c for c in counts if c <= 4 * n_max] or counts[:1]) - 1
        self.levels = [{"tile": float(n), "token_layer": float((fixed + n * t * (t + 1)) * rfm_layers)
                        if mode != "all-tiles" else 0.0,
                        "pixel": float(n * tile_pixels(geo, levels[first + i]))
                        if exact and first + i and levels[first + i].index not in gridded else 0.0}
                       for i, n in enumerate(tiles)]
        kept = tiles[-1] * t * (t + 1) * (alpha if mode in ("paper", "released") else 1.0) if tiles else 0
        self.left = {"tile": 1.0, "token_layer": float(min(max_length, fixed + kept) * llm_layers),
                     "step_layer": float(ANSWER_SHARE * max_new_tokens * llm_layers)}
        self.pixels_total = int(pixels)
        self.planned = True

    def level_tiles(self, index: int, n: int) -> None:
        """The run knows how many tiles a level needs: re-plan it (later levels scale with it)."""
        if index < len(self.levels) and self.levels[index]["tile"]:
            scale = n / self.levels[index]["tile"]
            for lv in self.levels[index:]:
                for k in lv:
                    lv[k] *= scale

    # -- measured work ---------------------------------------------------------------------------
    def _measure(self, now: float) -> None:
        """Rates from the run itself, once it has done some of each kind of work."""
        enc, sc = self.encoder, self.scorer
        done = (getattr(enc, "encoded", 0) + getattr(enc, "cached", 0)) if enc is not None else 0
        if done and not self.tile_rate_fixed:  # the first level's pixels are in memory: encoding alone
            self.rates.tile = enc.seconds / done
        if sc is not None and getattr(sc, "token_layers", 0):
            self.rates.token_layer = sc.seconds / sc.token_layers
        if self.pixel_source is not None and self.pixel_t0 is not None:
            read = int(getattr(self.pixel_source, "source_pixels", 0))
            if read != self.pixel_seen[0]:
                self.pixel_step, self.pixel_seen = read - self.pixel_seen[0], (read, now)
            # the time the count last grew, not `now`: the count grows per band of the pass (a quarter of
            # a large raster), and dividing by `now` made the rate slower and slower between bands, which
            # held `overall` still for a band's whole read, then jumped it
            seen_at = self.pixel_seen[1]
            if 0 < read < self.pixels_total and seen_at > self.pixel_t0:
                self.rates.pixel = (seen_at - self.pixel_t0) / read

    def _pixels_read(self, now: float) -> float:
        """Source pixels the base pass has read by `now`: the count, plus the band in flight at the rate
        measured so far, up to the last band's size (half of what is unread before the first count),
        so a slower band holds the bar until its count comes instead of claiming the rest done."""
        if self.pixel_source is None or self.pixel_t0 is None:
            return 0.0
        read, seen_at = self.pixel_seen
        unread = max(0, self.pixels_total - read)
        flying = (now - seen_at) / self.rates.pixel if self.rates.pixel > 0 else 0.0
        return read + min(flying, unread, self.pixel_step if self.pixel_step > 0 else 0.5 * unread)

    def _price(self, units: dict[str, float]) -> float:
        return sum(v * getattr(self.rates, k) for k, v in units.items())

    def _remaining(self, now: float) -> float:
        self._measure(now)
        left = self._price(self.left) + sum(self._price(lv) for lv in self.levels)
        left += max(0, self.pixels_total - self._pixels_read(now)) * self.rates.pixel
        return left + max(0.0, self._price(self.lump) - (now - self.lump_start))

    def _share(self, now: float) -> float:
        if not self.planned:
            return self.overall
        elapsed = now - self.t0
        left = self._remaining(now)
        share = elapsed / (elapsed + left) if elapsed + left > 0 else 1.0
        self.overall = max(self.overall, min(share, 0.99))
        return self.overall

    def start(self, work: str, index: int | None = None) -> None:
        """A planned lump of work begins: 'thumbnail', 'tiles' or 'score' of level `index`, 'llm'."""
        if work == "thumbnail":
            lump = {"tile": self.left["tile"]}
            self.left["tile"] = 0.0
        elif work == "llm":  # levels the run did not reach are no longer work to do
            lump = {k: self.left[k] for k in ("token_layer", "step_layer")}
            self.left["token_layer"] = self.left["step_layer"] = 0.0
            self.levels = []
        elif index is not None and index < len(self.levels):
            keys = ("tile", "pixel") if work == "tiles" else ("token_layer",)
            lump = {k: self.levels[index][k] for k in keys}
            for k in keys:
                self.levels[index][k] = 0.0
            if work == "tiles" and index:
                self.tile_rate_fixed = True
        else:
            lump = {}
        self.lump, self.lump_start = lump, self.clock()

    def reading(self, pyramid: Any) -> None:
        """The exact base pass may start on `pyramid` (its `source_pixels` counts what was read)."""
        self.pixel_source, self.pixel_t0 = pyramid, self.clock()
        self.pixel_seen = (0, self.pixel_t0)

    # -- messages ----------------------------------------------------------------------------------
    def _send(self, stage: str, level: Optional[int], fraction: float, message: str, now: float) -> None:
        with self._lock:  # the tile reader's thread beats too: messages leave in `overall` order
            self._send_locked(stage, level, fraction, message, now)

    def _send_locked(self, stage: str, level: Optional[int], fraction: float, message: str, now: float) -> None:
        self.last, self.last_sent = (stage, level, fraction, message), now
        if self.progress is not None:
            overall = 1.0 if stage == "done" else (self._share(now) if self.planned else None)
            self.progress(stage, level, float(fraction), message, overall=overall)  # None: not planned yet

    def check(self, stage: str, level: Optional[int], fraction: float, message: str) -> None:
        """The `stage_checker` of a metered run: cancel, then a message with `overall`."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"cancelled before {stage}" + (f" (level {level})" if level is not None else ""))
        if stage == "done":
            self.overall = 1.0
        self._send(stage, level, fraction, message, self.clock())

    def beat(self, cancel: bool = True) -> None:
        """Between strip reads, tile batches and transformer blocks: cancel (unless the caller polls it
        itself), and a message when the last one is `HEARTBEAT_S` old (the stage's own message again,
        with the new `overall`)."""
        if cancel and self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled during " + (self.last[0] or "the run"))
        now = self.clock()
        interval = HEARTBEAT_S
        if self.planned:  # a short job gets more frequent messages: no silence of a large share of it
            interval = min(HEARTBEAT_S, max(0.02, 0.1 * (now - self.t0 + self._remaining(now))))
        if now - self.last_sent >= interval and self.last[0] is not None:
            with self._lock:
                stage_message = self.last
                self._send_locked(*self._reading_news(*stage_message), now)
                self.last = stage_message  # the next heartbeat starts from the stage's own message again

    def _reading_news(self, stage: str, level: Optional[int], fraction: float, message: str) -> tuple:
        """The thumbnail's stage message, while the exact base pass under it still reads: what it reads
        (on a large raster that is most of the job; "encoding the thumbnail" said nothing of it), and
        the share read as the stage's fraction. Other stages: their own message."""
        read = int(getattr(self.pixel_source, "source_pixels", 0)) if self.pixel_source is not None else 0
        if stage != "encode" or level is not None or not 0 <= read < self.pixels_total:
            return stage, level, fraction, message
        return (stage, level, read / self.pixels_total, f"reading the raster for the thumbnail and base level: "
                f"{read / 1e6:,.0f} of {self.pixels_total / 1e6:,.0f} million pixels")


def tile_pixels(geo: Any, level: Any) -> int:
    """Source pixels the exact path decodes for one tile of `level` read from the raster: strips over
    the tile's source window, two source rows per output row at most (bilinear), every column."""
    b = geo.cfg.tile_size
    side_y = b * geo.height / max(1, level.resized[0])
    side_x = b * geo.width / max(1, level.resized[1])
    return int(min(side_y, 2 * b) * side_x)


def meter_of(check: Any) -> WorkMeter | None:
    """The meter behind a run's `check` (`options.stage_checker` returns its bound `check`), if any."""
    meter = getattr(check, "__self__", None)
    return meter if isinstance(meter, WorkMeter) else None


def base_pass_pixels(pyramid: Any) -> int:
    """Source pixels the exact pyramid's base pass will decode (0 when done or not an exact pyramid)."""
    count = getattr(pyramid, "base_pass_pixels", None)
    if count is None:
        return 0
    try:
        return int(count())
    except (TypeError, ValueError, IndexError):
        return int(pyramid.geometry.height) * int(pyramid.geometry.width)


def gridded_levels(pyramid: Any) -> frozenset:
    """Levels whose tiles the exact pyramid cuts from sample grids (the base pass gathers them)."""
    levels = getattr(pyramid, "gridded_levels", None)
    return frozenset(levels()) if levels is not None else frozenset()


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
