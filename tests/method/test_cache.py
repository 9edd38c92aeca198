"""The feature cache: follow-up questions reuse tile features, results stay identical to a cold run,
a rewritten raster gets fresh features, and the cache stays inside its byte budget."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from osgeo import gdal

from lrs_focus.engine import AskOptions, Engine
from lrs_focus.features import FeatureCache

Q1 = "How many ships are docked at the northern pier?"
Q2 = "What is the colour of the largest building?"


def _write(path, seed, size=(700, 900)):
    rng = np.random.default_rng(seed)
    h, w = size
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, gdal.GDT_Byte)
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    ds = None
    return path


@pytest.fixture(scope="module")
def engines():
    return Engine("tiny", device="cpu", cache_mb=64), Engine("tiny", device="cpu", cache_mb=0)


def _same(a, b):
    assert a["answer"] == b["answer"]
    assert a["trace"] == b["trace"]
    assert a["heatmap"] == b["heatmap"]
    strip = lambda c: {k: v for k, v in c.items() if k != "tiles_from_cache"}  # noqa: E731
    assert strip(a["counts"]) == strip(b["counts"])


@pytest.mark.parametrize("mode", ["paper", "released", "all-tiles"])
def test_follow_up_reuses_features_and_equals_a_cold_run(tmp_path, engines, mode):
    cached, cold = engines
    raster = str(_write(tmp_path / "r.tif", 1))
    opts = AskOptions(mode=mode, max_new_tokens=4, max_levels=3)
    first = cached.ask(raster, Q1, opts)
    assert first["counts"]["tiles_from_cache"] == 0
    follow = cached.ask(raster, Q2, opts)
    assert follow["counts"]["tiles_from_cache"] > 0
    base = next(lv for lv in follow["trace"]["levels"] if lv["level"] == 0)
    if mode != "all-tiles":
        assert follow["counts"]["tiles_from_cache"] >= len(base["tiles"])  # the whole base level at least
    _same(follow, cold.ask(raster, Q2, opts))


def test_a_rewritten_raster_gets_fresh_features(tmp_path, engines):
    cached, cold = engines
    path = _write(tmp_path / "r.tif", 1)
    opts = AskOptions(max_new_tokens=4)
    cached.ask(str(path), Q1, opts)
    st = os.stat(path)
    _write(path, 2)  # same size, other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    again = cached.ask(str(path), Q1, opts)
    assert again["counts"]["tiles_from_cache"] == 0
    _same(again, cold.ask(str(path), Q1, opts))
    # nothing of the old version survives
    current = cached.cache._versions[str(path)]
    mine = [k for k in cached.cache.tiers["host"] if k[0].path == str(path)]
    assert mine and all(k[0].identity == current for k in mine)


def test_bands_stretch_window_and_pixels_are_part_of_the_key(tmp_path, engines):
    cached, cold = engines
    raster = str(_write(tmp_path / "r.tif", 3))
    cached.ask(raster, Q1, AskOptions(max_new_tokens=2))
    for opts in (AskOptions(bands=[3, 2, 1], max_new_tokens=2), AskOptions(stretch=[[0, 127]] * 3, max_new_tokens=2),
                 AskOptions(window=[0, 0, 500, 400], max_new_tokens=2), AskOptions(pixels="gdal", max_new_tokens=2)):
        res = cached.ask(raster, Q1, opts)
        assert res["counts"]["tiles_from_cache"] == 0, opts
        _same(res, cold.ask(raster, Q1, opts))


def test_stretch_statistics_are_read_once_per_raster_version(tmp_path, monkeypatch):
    from lrs_focus.raster import RasterSource
    from lrs_focus.samples import write_synthetic_raster

    calls = []
    original = RasterSource._estimate_stretch
    monkeypatch.setattr(RasterSource, "_estimate_stretch", lambda self: calls.append(1) or original(self))
    engine = Engine("tiny", device="cpu", cache_mb=16)
    raster = str(write_synthetic_raster(tmp_path / "u16.tif", 600, 500, dtype="UInt16"))
    for q in (Q1, Q2, Q1):
        engine.ask(raster, q, AskOptions(max_new_tokens=2))
    assert len(calls) == 1


def test_the_cache_stays_inside_its_budget_and_spills_to_host():
    cache = FeatureCache(device_bytes=10_000, host_bytes=20_000, device="cpu", spill=True)
    t = lambda v: torch.full((25, 25), float(v))  # noqa: E731  2,500 bytes each
    for i in range(20):
        cache.put(("k", i), t(i))
        assert cache.used["device"] <= 10_000 and cache.used["host"] <= 20_000
    assert len(cache.tiers["device"]) == 4 and len(cache.tiers["host"]) == 8  # 4 newest on device, 8 spilled
    assert cache.get(("k", 0)) is None  # oldest dropped
    hit = cache.get(("k", 10))  # from the host tier, promoted back
    assert hit is not None and float(hit[0, 0]) == 10.0 and ("k", 10) in cache.tiers["device"]
    assert cache.used["device"] <= 10_000
    big = FeatureCache(device_bytes=1_000, device="cpu")
    big.put("x", t(1))  # larger than the whole budget: not kept
    assert big.get("x") is None and big.used == {"device": 0, "host": 0}


@pytest.mark.parametrize("mb", [float("inf"), float("nan"), -1])
def test_cache_budget_must_be_finite_and_non_negative(mb):
    from lrs_focus.errors import BadOptions

    with pytest.raises(BadOptions, match="cache_mb"):
        Engine("tiny", device="cpu", cache_mb=mb)


def test_serve_refuses_an_infinite_cache_budget_with_a_clear_error():
    """`serve --cache-mb inf` used to die with an OverflowError traceback after loading the model."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "serve", "--model", "tiny", "--cache-mb", "inf",
                          "--endpoint", "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error [bad_options]" in out.stderr and "--cache-mb" in out.stderr
    assert "Traceback" not in out.stderr
