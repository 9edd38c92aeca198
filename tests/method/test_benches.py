"""`lrs-focus bench tokens|memory|cache` end to end (subprocesses, small sizes): the documents keep
their contract (cases named with the raster size, ours/baseline/ratio) and their claims hold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bench(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "bench", *args, "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_bench_tokens_reproduces_the_papers_baseline():
    doc = _bench("tokens", "--no-timing", "--targets", "2")
    base = doc["cases"][0]["baseline"]
    assert base["llm_vision_tokens"] == 21312 and round(base["prefill_tflops"], 2) == 243.37
    for case in doc["cases"]:
        assert case["name"].startswith(("4000x4000", "27328x20000")) and case["ratio"] > 1


@pytest.mark.slow
def test_bench_memory_sparse_beats_dense_at_the_7b_width():
    doc = _bench("memory", "--sizes", "3000x2200")
    (case,) = doc["cases"]
    assert case["name"].startswith("3000x2200")
    ours, dense = case["ours"], case["baseline"]
    assert ours["stopped_at"] == ours["finest_level"]  # the forced scores zoom to the finest level
    assert 0 < ours["peak_mb"] < dense["peak_mb"] and case["ratio"] > 1
    assert case["gpu_estimate_gb"]["weights"] == pytest.approx(18.2, abs=0.1) and case["fits_24gb"]


@pytest.mark.slow
@pytest.mark.parametrize("geometry,weights,parts", [("qwen2.5-vl-7b", 16.6, 1), ("qwen3-vl-8b", 17.5, 4)])
def test_bench_memory_qwen_vl_geometries(geometry, weights, parts):
    doc = _bench("memory", "--sizes", "3000x2200", "--geometry", geometry)
    (case,) = doc["cases"]
    ours = case["ours"]
    assert ours["stopped_at"] == ours["finest_level"] and ours["tiles_to_answer"] >= 1
    # every encoded tile's features are held at the real width (16 x 16 tokens, bf16): the peak covers them
    tile_mb = 16 * 16 * {"qwen2.5-vl-7b": 3584, "qwen3-vl-8b": 4096}[geometry] * parts * 2 / 2**20
    assert ours["peak_mb"] > tile_mb * max(ours["tiles_per_level"])
    assert case["gpu_estimate_gb"]["weights"] == pytest.approx(weights, abs=0.1) and case["fits_24gb"]


@pytest.mark.slow
def test_bench_cache_follow_up_is_faster_and_identical(tmp_path):
    doc = _bench("cache", "--sizes", "2600x2000", "--no-sentinel2", "--cache-dir", str(tmp_path))
    (case,) = doc["cases"]
    assert case["name"] == "2600x2000 no-overviews"
    assert case["same_result"] is True and case["ours"]["tiles_from_cache"] > 0
    assert case["ours"]["seconds"] > 0 and case["baseline"]["seconds"] > 0  # the speed-up is the benchmark's figure
