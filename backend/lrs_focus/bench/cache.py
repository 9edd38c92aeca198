"""`lrs-focus bench cache`: a follow-up question about the same raster vs a cold one.

Per raster: `baseline` = a fresh engine (empty feature cache) answering question B; `ours` = an
engine that has already answered question A about the same raster answering B (thumbnail, base
level and every tile both questions visit come from the cache, as do the stretch statistics).
`same_result`: the follow-up's answer, trace, counts (but for the cache counter) and heatmap equal
the cold run's. Tiny model (random weights; the vision tower and the reads dominate), CPU.

Rasters: the Sentinel-2 sample (1933 x 1947, uint16 VRT) and synthetic tiled GeoTIFFs (shared with
`bench pyramid`'s cache), the large one read without overviews (a symlink GDAL finds no .ovr for).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .pyramid import _default_cache, ensure_raster

DEFAULT_SIZES = "27328x20000"
QUESTIONS = ("How many ships are docked at the northern pier?", "What is the colour of the largest building?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"synthetic WIDTHxHEIGHT list (default {DEFAULT_SIZES})")
    parser.add_argument("--no-sentinel2", action="store_true", help="skip the Sentinel-2 sample")
    parser.add_argument("--pixels", choices=["exact", "gdal"], default=None, help="pixel path (default: the engine's)")
    parser.add_argument("--mode", default="paper")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--cache-dir", default=_default_cache(), help="where the synthetic rasters are kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the tiny model's ops are too small to split, and "
                             "spinning OpenMP threads on a shared 2-core machine would measure contention)")


def _log(msg: str) -> None:
    print(f"bench cache: {msg}", file=sys.stderr, flush=True)


def _without_overviews(path: Path) -> Path:
    """A second name for the raster: GDAL looks for `<name>.ovr`, finds none, reads full resolution."""
    link = path.with_name(path.stem + "_no_ovr" + path.suffix)
    if not link.exists():
        link.symlink_to(path.name)
    return link


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    counts = {k: v for k, v in doc["counts"].items() if k != "tiles_from_cache"}
    return {"answer": doc["answer"], "trace": doc["trace"], "counts": counts, "heatmap": doc["heatmap"]}


def measure(raster: str, options: Any) -> dict[str, Any]:
    from ..engine import Engine

    first, follow = QUESTIONS

    def timed(engine, question):
        wall, cpu = time.perf_counter(), time.process_time()
        doc = engine.ask(raster, question, options)
        return doc, time.perf_counter() - wall, time.process_time() - cpu

    cold_engine = Engine("tiny", device="cpu")
    cold, cold_s, cold_cpu = timed(cold_engine, follow)
    del cold_engine
    engine = Engine("tiny", device="cpu")
    _, first_s, _ = timed(engine, first)
    again, follow_s, follow_cpu = timed(engine, follow)
    return {
        "ours": {"seconds": round(follow_s, 3), "cpu_seconds": round(follow_cpu, 3),
                 "tiles_from_cache": again["counts"]["tiles_from_cache"],
                 "tiles_encoded": again["counts"]["tiles_encoded"], "timings": again["timings"],
                 "cache": engine.cache.stats() if engine.cache else None},
        "baseline": {"seconds": round(cold_s, 3), "cpu_seconds": round(cold_cpu, 3), "timings": cold["timings"]},
        "first_question_seconds": round(first_s, 3),
        "ratio": round(cold_s / follow_s, 2),
        "cpu_ratio": round(cold_cpu / follow_cpu, 2),  # steadier than wall time on a shared machine
        "same_result": _comparable(again) == _comparable(cold),
    }


def run(args) -> dict[str, Any]:
    import torch

    from ..engine import AskOptions
    from ..samples import parse_sizes

    torch.set_num_threads(max(1, args.threads))
    options = AskOptions(mode=args.mode, max_new_tokens=args.max_new_tokens, pixels=args.pixels).validate()
    cases = []
    rasters: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_sentinel2:
            from ..samples import sentinel2_rgb_vrt

            rasters.append(("1933x1947 Sentinel-2 sample", str(sentinel2_rgb_vrt(Path(tmp) / "s2.vrt"))))
        for w, h in parse_sizes(args.sizes):
            path = ensure_raster(Path(args.cache_dir), w, h)
            rasters.append((f"{w}x{h} no-overviews", str(_without_overviews(path))))
        for name, raster in rasters:
            _log(f"{name}: cold, first question, follow-up")
            case = {"name": name, **measure(raster, options)}
            _log(f"{name}: follow-up {case['ours']['seconds']:.2f} s vs cold {case['baseline']['seconds']:.2f} s "
                 f"({case['ratio']:.1f}x), same result {case['same_result']}")
            cases.append(case)
    return {
        "benchmark": "cache",
        "workload": f"tiny model, mode {options.mode}, pixels {options.pixels or 'default'}, "
                    f"max_new_tokens {options.max_new_tokens}, {args.threads} torch thread(s); "
                    "follow-up (another question) vs cold",
        "ratio_means": "baseline seconds / ours seconds",
        "cases": cases,
    }


def format_table(doc: dict[str, Any]) -> str:
    lines = [doc["workload"], f"{'case':<30} {'follow-up s':>12} {'cold s':>9} {'ratio':>7} {'CPU ratio':>10} "
                              f"{'same':>6} {'cached tiles':>13}"]
    for c in doc["cases"]:
        lines.append(f"{c['name']:<30} {c['ours']['seconds']:12.2f} {c['baseline']['seconds']:9.2f} "
                     f"{c['ratio']:7.1f} {c['cpu_ratio']:10.1f} {str(c['same_result']):>6} "
                     f"{c['ours']['tiles_from_cache']:13d}")
    return "\n".join(lines)
