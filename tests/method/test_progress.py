"""Progress the backend can vouch for (issue 21): a cold `ask` through the real CLI on a 20000 x 15000
raster sends messages at least every 2 s (and never leaves a quarter of the run silent), and their
`overall` stays within 0.25 of the elapsed share of the run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from lrs_focus.samples import mosaic_vrt
from lrs_focus.work_meter import Rates, WorkMeter

LINE = re.compile(r"^\[(?P<stage>\w+)(?: level (?P<level>\d+))? +(?P<fraction>\d+)%(?: \| job +(?P<overall>\d+)%)?\] ")


def timed_messages(cmd: list[str], env: dict) -> tuple[list[tuple[float, dict]], int, str]:
    """Run `cmd`, time-stamping each progress line of its stderr as it arrives."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    messages, other = [], []
    for line in proc.stderr:
        m = LINE.match(line)
        if m:
            messages.append((time.monotonic(), m.groupdict()))
        else:
            other.append(line)
    return messages, proc.wait(), "".join(other)[-2000:]


def check_progress(messages: list[tuple[float, dict]]) -> dict:
    """The issue's bounds over the run (first message, `open`, to the last, `done`)."""
    t0, t1 = messages[0][0], messages[-1][0]
    run = t1 - t0
    gaps = [b[0] - a[0] for a, b in zip(messages, messages[1:])]
    overall = [int(m["overall"] or 0) / 100 for _, m in messages]  # none before the plan (open, pyramid)
    off = [abs(o - (t - t0) / run) for (t, _), o in zip(messages, overall)]
    return {"run_s": run, "max_gap_s": max(gaps), "max_off": max(off), "overall": overall,
            "stages": [m["stage"] for _, m in messages]}


@pytest.mark.parametrize("pixels", ["exact"])
def test_cold_ask_on_a_20000_by_15000_raster_reports_proportional_progress(tmp_path, pixels):
    # a DEFLATE block: GDAL inflates every pixel as it would an image's (an uncompressed one is read
    # at memory speed since the base pass reads whole strips, and the run shrank to ~1.4 s, where a
    # busy machine's hiccup alone is a quarter of it)
    vrt = mosaic_vrt(tmp_path, compress="DEFLATE")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    t = time.monotonic()
    messages, rc, err = timed_messages([sys.executable, "-m", "lrs_focus.cli", "ask", str(vrt),
                                        "How many ships are docked at the northern pier?", "--model", "tiny",
                                        "--pixels", pixels, "--json"], env)
    wall = time.monotonic() - t
    assert rc == 0, err
    got = check_progress(messages)
    print(f"cold ask 20000x15000 ({pixels}): process {wall:.1f} s, run {got['run_s']:.1f} s, "
          f"{len(messages)} messages, longest gap {got['max_gap_s']:.2f} s, overall off by at most {got['max_off']:.2f}")
    t0, run = messages[0][0], got["run_s"]
    timeline = "\n".join(f"{t - t0:6.2f} s share {(t - t0) / run:4.2f} overall {o:4.2f} {m['stage']} {m['level'] or ''}"
                         for (t, m), o in zip(messages, got["overall"]))
    print(timeline)
    assert got["stages"][0] == "open" and got["stages"][-1] == "done"
    assert got["overall"] == sorted(got["overall"]) and got["overall"][-1] == 1.0
    assert got["max_gap_s"] <= 2.0 and got["max_gap_s"] <= 0.25 * got["run_s"]
    assert got["max_off"] <= 0.25


def test_overall_is_monotone_and_heartbeats_keep_coming():
    """The meter alone, on a fake clock: a long stage sends its message again every HEARTBEAT_S with a
    growing `overall`, which never goes back even when the plan turns out too small."""
    from lrs_focus.pyramid import PyramidConfig, PyramidGeometry

    now = [0.0]
    sent = []
    meter = WorkMeter(lambda *a, overall=None: sent.append((now[0], a[0], overall)), None, Rates(),
                      clock=lambda: now[0])
    geo = PyramidGeometry(15000, 20000, PyramidConfig(tile_size=336, base_long_side=1008, tokens_per_tile=12))
    meter.check("open", None, 0.0, "opening")
    meter.plan(geo, "paper", 80, 0.25, 40, 576, (5, 28), 16, 8192, pixels=0)
    meter.check("encode", None, 0.0, "encoding the thumbnail")
    meter.start("thumbnail")
    for _ in range(50):  # a thumbnail that takes 5 s instead of its priced 10 ms
        now[0] += 0.1
        meter.beat()
    beats = [s for s in sent if s[1] == "encode"]
    assert len(beats) >= 5 and all(b[0] - a[0] <= 1.0 + 1e-9 for a, b in zip(beats, beats[1:]))
    assert sent[0][2] is None  # before the plan: no share claimed (clients fall back to stage spans)
    shares = [s[2] for s in sent[1:]]
    assert shares == sorted(shares) and 0 < shares[-1] < 1
    meter.check("done", None, 1.0, "done")
    assert sent[-1][2] == 1.0


def test_levels_the_base_pass_gathers_are_planned_without_reading():
    """At 27k the exact base pass gathers levels 1 and 2: the meter prices their tiles as blends
    (no source pixels), and level 3's as a read of its windows."""
    from lrs_focus.exact_pixels import ExactPyramid
    from lrs_focus.work_meter import gridded_levels, tile_pixels

    class Declared:  # what the plan needs: the declared size and blocks (nothing is read)
        height, width, block_size = 20000, 27328, (256, 256)

    pyr = ExactPyramid(Declared())
    assert gridded_levels(pyr) == {1, 2}
    geo = pyr.geometry
    meter = WorkMeter(lambda *a, overall=None: None, None, Rates())
    meter.plan(geo, "paper", 80, 0.25, 40, 576, (5, 28), 16, 8192, pixels=geo.height * geo.width, exact=True,
               gridded=gridded_levels(pyr))
    pixels = [lv["pixel"] for lv in meter.levels]
    assert pixels[0] == pixels[1] == pixels[2] == 0.0
    assert pixels[3] == meter.levels[3]["tile"] * tile_pixels(geo, geo.levels[3]) > 0


def test_qwen_vl_questions_report_overall_too(sentinel2_vrt):
    """The Qwen-VL run plans its work like the LLaVA one (tiles per level, the focus passes' token-layers
    up to the focus layer, the answer): every message from the plan on carries a monotone `overall`."""
    from lrs_focus.engine import AskOptions, Engine

    engine = Engine("tiny-qwen2.5-vl", device="cpu", cache_mb=0)
    sent = []
    doc = engine.ask(str(sentinel2_vrt), "Where are the largest agricultural fields?",
                     AskOptions(mode="paper", max_new_tokens=4),
                     progress=lambda stage, level, fraction, message="", overall=None: sent.append((stage, overall)))
    assert doc["answer"] is not None
    stages = [s for s, _ in sent]
    assert stages[0] == "open" and stages[-1] == "done" and "generate" in stages
    planned = [o for s, o in sent[stages.index("encode"):]]
    assert None not in planned, sent
    assert planned == sorted(planned) and planned[-1] == 1.0
    assert 0 < planned[0] < 1


def _meter_reading(pixels: int, send, now: list) -> tuple:
    """A meter (fake clock `now[0]`) planned for a 48000 x 36000 paper question whose exact base pass of
    `pixels` has started: (meter, the pass whose `source_pixels` the test sets)."""
    from types import SimpleNamespace

    from lrs_focus.pyramid import PyramidConfig, PyramidGeometry

    meter = WorkMeter(send, None, Rates(), clock=lambda: now[0])
    geo = PyramidGeometry(36000, 48000, PyramidConfig(tile_size=56, base_long_side=168, tokens_per_tile=4))
    meter.plan(geo, "paper", 80, 0.25, 40, 16, (2, 2), 16, 8192, pixels=pixels)
    meter.check("encode", None, 0.0, "encoding the thumbnail")
    pass_ = SimpleNamespace(source_pixels=0)
    meter.reading(pass_)
    meter.start("thumbnail")
    return meter, pass_


def test_heartbeats_of_the_base_pass_say_what_it_reads():
    """On a large raster the exact base pass under "encoding the thumbnail" is most of the job: its
    heartbeats say how much of the raster is read (as the stage's fraction too), then the stage's
    own message comes back once the pass is done."""
    now, sent = [0.0], []
    meter, pass_ = _meter_reading(1_721_403_450, lambda *a, overall=None: sent.append((*a, overall)), now)
    for read in (0, 400_000_000, 1_721_403_450):
        pass_.source_pixels = read
        now[0] += 1.0
        meter.beat()
    stage, level, fraction, message, _ = sent[-3]
    assert (stage, level, fraction) == ("encode", None, 0.0)
    assert message == "reading the raster for the thumbnail and base level: 0 of 1,721 million pixels"
    assert sent[-2][2] == pytest.approx(400 / 1721.40345) and "400 of 1,721 million" in sent[-2][3]
    assert sent[-1][2:4] == (0.0, "encoding the thumbnail")  # read: the stage's own message again
    meter.check("encode", 0, 0.0, "encoding 9 base tiles")
    now[0] += 1.0
    meter.beat()
    assert sent[-1][3] == "encoding 9 base tiles"


def test_overall_keeps_moving_while_a_band_of_the_base_pass_is_read():
    """The base pass counts its pixels per band (a quarter of a large raster, seconds each): between two
    counts `overall` kept still for the band's whole read, then jumped (seen in QGIS: 27 % for 5 s, then
    49 %). The band in flight now counts at the measured rate, so every heartbeat moves the bar a little."""
    now, sent = [0.0], []
    meter, pass_ = _meter_reading(1_600_000_000, lambda *a, overall=None: sent.append((now[0], overall)), now)
    for step in range(1, 61):  # 4 bands of 400 Mpx, 7.5 s each (a rate 12x the default's)
        now[0] += 0.5
        if step % 15 == 0:
            pass_.source_pixels += 400_000_000
        meter.beat()
    during = [o for t, o in sent if 8.0 <= t < 30.0]  # from the first band's count on
    assert all(b > a for a, b in zip(during, during[1:])), during
    steps = [b - a for a, b in zip(during, during[1:])]
    assert max(steps) < 0.05, steps  # no jump at a band's end
    assert abs(during[-1] - 29.5 / 30.0) < 0.1
