"""`lrs-focus bench memory`: a question's feature memory at the 7B geometry, ours vs dense canvases.

Workload: paper mode with the Qwen2-7B geometry (336 px tiles, 12x12 tokens per tile, 576
thumbnail tokens, d = 3,584, bf16, N_max 80), real-width random features for every encoded tile,
and a forced peaked score (attention around one point) that zooms down to the finest level. Every
RFM pass builds its sequence, the final sequence lives through "generation"; no weights.

- ours: the engine's layout (`focus.run_focus` with sparse canvases: features per encoded tile,
  sequences gathered from them);
- baseline: the dense layout this project had before (one zero-filled (rows, cols + 1, d) grid per
  level, the previous level alive while the next is built, the final grid alive through
  generation), replayed on the same tiles in the same run.

Each runs in a fresh child process; `peak_mb` is the child's peak resident memory above what it
held before the question (VmHWM reset through /proc/self/clear_refs), i.e. features, canvases and
sequences. The GPU estimate adds the 7B weights (counted from the Qwen2-7B / CLIP-L shapes) and the
LLM's activations for the final sequence to our peak: it must fit a 24 GB card.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

DEFAULT_SIZES = "27328x20000,5000x5000"
D, T, THUMB, TEXT_PREFIX, TEXT_SUFFIX = 3584, 12, 576, 20, 40
GPU_GB = 24.0
QWEN2_7B = {"vocab": 152064, "hidden": 3584, "intermediate": 18944, "layers": 28, "heads": 28, "kv_heads": 4,
            "head_dim": 128}
CLIP_L_336 = {"hidden": 1024, "intermediate": 4096, "layers": 24, "patch": 14, "image": 336}
#: Stock Qwen-VL geometries (config.json of the hub checkpoints): LLM shapes, total parameters, tile
#: (16 x 16 tokens), features per token (Qwen3-VL-8B adds 3 deepstack levels of the same width), the
#: default focus layer (docs/models.md) whose KV the focus pass keeps.
VL_GEOMETRIES = {
    "qwen2.5-vl-7b": {"hidden": 3584, "intermediate": 18944, "layers": 28, "kv_heads": 4, "head_dim": 128,
                      "vocab": 152064, "params_b": 8.29, "tile": 448, "feature_parts": 1, "focus_layer": 21},
    "qwen3-vl-8b": {"hidden": 4096, "intermediate": 12288, "layers": 36, "kv_heads": 8, "head_dim": 128,
                    "vocab": 151936, "params_b": 8.77, "tile": 512, "feature_parts": 4, "focus_layer": 27},
}
GEOMETRIES = ("qwen2-7b", *VL_GEOMETRIES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"WIDTHxHEIGHT list (default {DEFAULT_SIZES})")
    parser.add_argument("--n-max", type=int, default=None, help="tiles per zoom step (default: 80 qwen2-7b, 24 Qwen-VL)")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--no-baseline", action="store_true", help="skip the dense-canvas replay")
    parser.add_argument("--geometry", choices=GEOMETRIES, default="qwen2-7b",
                        help="released LLaVA + RFM (qwen2-7b, with the dense baseline) or a stock Qwen-VL "
                             "checkpoint's geometry (attention focus over whole tiles; no baseline)")


def _log(msg: str) -> None:
    print(f"bench memory: {msg}", file=sys.stderr, flush=True)


# -- analytic GPU estimate ---------------------------------------------------------------------
def weights_bytes(bytes_per_param: int = 2) -> dict[str, float]:
    """Parameter bytes of the released Qwen2-7B build: LLM, RFM (5 layers), CLIP-L/336, projector."""
    q = QWEN2_7B
    h, kv = q["hidden"], q["kv_heads"] * q["head_dim"]
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * q["intermediate"] + 2 * h
    llm = 2 * q["vocab"] * h + q["layers"] * layer + h
    rfm = 5 * layer + h
    c = CLIP_L_336
    clip_layer = 4 * (c["hidden"] ** 2 + c["hidden"]) + 2 * c["hidden"] * c["intermediate"] + c["intermediate"] \
        + c["hidden"] + 4 * c["hidden"]
    patches = (c["image"] // c["patch"]) ** 2 + 1
    clip = c["layers"] * clip_layer + 3 * c["patch"] ** 2 * c["hidden"] + patches * c["hidden"] + 4 * c["hidden"]
    projector = c["hidden"] * h + h + h * h + h
    parts = {"llm": llm, "rfm": rfm, "vision_tower": clip, "projector": projector}
    return {k: v * bytes_per_param / 1e9 for k, v in parts.items()}


def activations_gb(seq_tokens: int, rfm_tokens: int) -> float:
    """Largest transient of the forward passes (bf16): prefill MLP intermediates of the final sequence
    or of the largest RFM pass, plus the KV cache of the final sequence and one row of logits."""
    q = QWEN2_7B
    kv_cache = q["layers"] * 2 * seq_tokens * q["kv_heads"] * q["head_dim"] * 2
    mlp = lambda n: n * (2 * q["intermediate"] + 3 * q["hidden"]) * 2  # noqa: E731
    return (max(mlp(seq_tokens), mlp(rfm_tokens)) + kv_cache + q["vocab"] * 4) / 1e9


# -- parent ------------------------------------------------------------------------------------
def vl_activations_gb(g: dict[str, Any], focus_tokens: int, answer_tokens: int) -> float:
    """Largest transient of a Qwen-VL question (bf16): the focus pass's KV of layers 0..L plus its MLP
    intermediates, or the answer's KV of every layer plus its MLP intermediates; one row of logits."""
    per_token_layer = 2 * g["kv_heads"] * g["head_dim"] * 2
    mlp = lambda n: n * (2 * g["intermediate"] + 3 * g["hidden"]) * 2  # noqa: E731
    focus = focus_tokens * (g["focus_layer"] + 1) * per_token_layer + mlp(focus_tokens)
    answer = answer_tokens * g["layers"] * per_token_layer + mlp(answer_tokens)
    return (max(focus, answer) + g["vocab"] * 4) / 1e9


def _child(kind: str, width: int, height: int, n_max: int, alpha: float, geometry: str = "qwen2-7b") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lrs_focus.bench.memory", kind, str(width), str(height), str(n_max), str(alpha),
           geometry]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"child exited {proc.returncode}: {' | '.join(proc.stderr.strip().splitlines()[-3:])}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict[str, Any]:
    if getattr(args, "geometry", "qwen2-7b") != "qwen2-7b":
        return run_vl(args)
    from ..samples import parse_sizes

    args.n_max = args.n_max or 80
    weights = weights_bytes()
    weights_gb = sum(weights.values())
    cases = []
    for w, h in parse_sizes(args.sizes):
        _log(f"{w}x{h}: ours")
        ours = _child("ours", w, h, args.n_max, args.alpha)
        baseline = None
        if not args.no_baseline:
            _log(f"{w}x{h}: dense-canvas baseline")
            baseline = _child("dense", w, h, args.n_max, args.alpha)
        case: dict[str, Any] = {"name": f"{w}x{h} paper bf16 d={D}", "ours": ours, "baseline": baseline, "ratio": None}
        if "peak_mb" in ours:
            act = activations_gb(ours["final_sequence_tokens"], ours["largest_rfm_tokens"])
            case["gpu_estimate_gb"] = {
                "weights": round(weights_gb, 2),
                "features_canvases_sequences": round(ours["peak_mb"] / 1024, 2),
                "activations": round(act, 2),
                "total": round(weights_gb + ours["peak_mb"] / 1024 + act, 2),
            }
            case["fits_24gb"] = case["gpu_estimate_gb"]["total"] <= GPU_GB
            if baseline and "peak_mb" in baseline:
                case["ratio"] = round(baseline["peak_mb"] / ours["peak_mb"], 1)
                case["baseline_gpu_total_gb"] = round(weights_gb + baseline["peak_mb"] / 1024 + act, 2)
        cases.append(case)
    return {
        "benchmark": "memory",
        "workload": f"paper mode, Qwen2-7B geometry (d {D}, bf16), N_max {args.n_max}, alpha {args.alpha}, "
                    "random features, peaked forced scores zooming to the finest level",
        "ratio_means": "baseline peak_mb / ours peak_mb",
        "weights_gb": {k: round(v, 2) for k, v in weights.items()},
        "cases": cases,
    }


def run_vl(args) -> dict[str, Any]:
    """A stock Qwen-VL checkpoint's question: features, focus sequences and the answer's input, measured
    in a child process with real-width random features; the GPU estimate adds weights and activations."""
    from ..samples import parse_sizes

    g = VL_GEOMETRIES[args.geometry]
    args.n_max = args.n_max or 24
    weights_gb = g["params_b"] * 2
    cases = []
    for w, h in parse_sizes(args.sizes):
        _log(f"{w}x{h}: {args.geometry}")
        ours = _child("vl", w, h, args.n_max, args.alpha, args.geometry)
        case: dict[str, Any] = {"name": f"{w}x{h} paper bf16 {args.geometry}", "ours": ours, "baseline": None,
                                "ratio": None}
        if "peak_mb" in ours:
            act = vl_activations_gb(g, ours["largest_rfm_tokens"], ours["final_sequence_tokens"])
            case["gpu_estimate_gb"] = {"weights": round(weights_gb, 2),
                                       "features_canvases_sequences": round(ours["peak_mb"] / 1024, 2),
                                       "activations": round(act, 2),
                                       "total": round(weights_gb + ours["peak_mb"] / 1024 + act, 2)}
            case["fits_24gb"] = case["gpu_estimate_gb"]["total"] <= GPU_GB
        cases.append(case)
    return {
        "benchmark": "memory",
        "workload": f"paper mode, {args.geometry} geometry (d {g['hidden']} x {g['feature_parts']} feature parts, "
                    f"{g['tile']} px tiles, bf16), N_max {args.n_max}, alpha {args.alpha}, random features, peaked "
                    "forced scores zooming to the finest level, the answer = thumbnail + kept tiles",
        "ratio_means": "no baseline for this geometry",
        "weights_gb": {"all": round(weights_gb, 2)},
        "cases": cases,
    }


def format_table(doc: dict[str, Any]) -> str:
    lines = [doc["workload"], f"weights (bf16): {sum(doc['weights_gb'].values()):.1f} GB {doc['weights_gb']}",
             f"{'case':<40} {'ours MB':>9} {'dense MB':>9} {'ratio':>7} {'GPU total GB':>13} {'dense GPU GB':>13}"]
    for c in doc["cases"]:
        o, b = c["ours"], c["baseline"] or {}
        gpu = c.get("gpu_estimate_gb", {}).get("total")
        lines.append(f"{c['name']:<40} {o.get('peak_mb', float('nan')):9.0f} {b.get('peak_mb', float('nan')):9.0f} "
                     f"{(c['ratio'] or float('nan')):7.1f} {(gpu or float('nan')):13.1f} "
                     f"{c.get('baseline_gpu_total_gb', float('nan')):13.1f}")
        for d in (o, b):
            if "error" in d:
                lines.append(f"  error: {d['error']}")
        if "tiles_per_level" in o:
            lines.append(f"  tiles per level {o['tiles_per_level']}, final sequence {o['final_sequence_tokens']} tokens")
    lines.append(f"GPU total = weights + our peak + activations of the final sequence; must fit {GPU_GB:.0f} GB")
    return "\n".join(lines)


# -- child -------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _peaked_scorer(geo, target):
    import numpy as np

    tx, ty = target
    step = geo.cfg.tile_size / geo.cfg.tokens_per_tile

    def score(canvas):
        lv = geo.levels[canvas.level]
        fy, fx = geo.height / lv.resized[0], geo.width / lv.resized[1]
        x, y = (canvas.col + 0.5) * step * fx, (canvas.row + 0.5) * step * fy
        s = 1.0 / (1.0 + np.maximum(np.abs(x - tx), np.abs(y - ty)))
        s[canvas.is_newline] = 0.0
        return s / s.sum()

    return score


def _child_main(argv: list[str]) -> int:
    import torch

    from ..focus import run_focus
    from ..pyramid import PyramidConfig, PyramidGeometry

    kind, width, height, n_max, alpha = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    torch.manual_seed(0)
    if kind == "vl":
        return _child_vl(argv[5], width, height, n_max, alpha)
    geo = PyramidGeometry(height, width, PyramidConfig())
    scorer = _peaked_scorer(geo, (0.37 * width, 0.61 * height))
    dtype = torch.bfloat16
    newline = torch.randn(D, dtype=dtype)
    prefix, thumb = torch.randn(TEXT_PREFIX, D, dtype=dtype), torch.randn(THUMB + 1, D, dtype=dtype)
    suffix = torch.randn(TEXT_SUFFIX, D, dtype=dtype)
    plan = run_focus(geo, "paper", lambda level, tiles: None, scorer, alpha=alpha, n_max=n_max)
    before = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    rfm_tokens = []

    def encode(level, tiles):
        return torch.randn(len(tiles), T, T, D, dtype=dtype)

    if kind == "ours":
        def score(canvas):
            seq = torch.cat([prefix, thumb, canvas.gather(newline), suffix])
            rfm_tokens.append(int(seq.shape[0]))
            del seq
            return scorer(canvas)

        result = run_focus(geo, "paper", encode, score, alpha=alpha, n_max=n_max)
        final = torch.cat([prefix, thumb, result.canvas.gather(newline, result.keep), suffix])
        result.canvas.feats = None  # as the engine does before generating
        tiles_per_level = [len(r.encoded) for r in result.records]
    else:  # the former dense layout, replayed on the same tiles
        prev = None
        for rec in plan.records:
            rows, cols = geo.token_grid(rec.level)
            grid = torch.zeros(rows, cols + 1, D, dtype=dtype)
            feats = encode(rec.level, rec.encoded)
            for (r, c), tok in zip(rec.encoded, feats):
                h, w = max(0, min(T, rows - r * T)), max(0, min(T, cols - c * T))
                grid[r * T:r * T + h, c * T:c * T + w] = tok[:h, :w]
            grid[:, cols] = newline
            del feats
            flat = torch.as_tensor(rec.canvas.offsets)
            seq = torch.cat([prefix, thumb, grid.reshape(-1, D)[flat], suffix])
            rfm_tokens.append(int(seq.shape[0]))
            del seq
            prev = grid  # the old loop kept the previous canvas until the next one was assigned
        final_index = torch.as_tensor(plan.canvas.offsets[plan.keep])
        final = torch.cat([prefix, thumb, prev.reshape(-1, D)[final_index], suffix])
        tiles_per_level = [len(r.encoded) for r in plan.records]
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM") - before
    doc = {
        "peak_mb": round(peak, 1),
        "seconds": round(seconds, 2),
        "tiles_per_level": tiles_per_level,
        "stopped_at": plan.stopped_at,
        "finest_level": len(geo.levels) - 1,
        "final_sequence_tokens": int(final.shape[0]),
        "largest_rfm_tokens": max(rfm_tokens),
        "rss_before_mb": round(before, 1),
    }
    print(json.dumps(doc), flush=True)
    return 0


def _child_vl(geometry: str, width: int, height: int, n_max: int, alpha: float) -> int:
    """Qwen-VL layout: tiles of 16 x 16 tokens whole in every focus pass, the answer = thumbnail + kept tiles."""
    import torch

    from ..focus import run_focus
    from ..pyramid import PyramidConfig, PyramidGeometry

    g = VL_GEOMETRIES[geometry]
    t, d, dtype = 16, g["hidden"], torch.bfloat16
    geo = PyramidGeometry(height, width, PyramidConfig(tile_size=g["tile"], base_long_side=3 * g["tile"],
                                                       tokens_per_tile=t))
    scorer = _peaked_scorer(geo, (0.37 * width, 0.61 * height))
    text, thumb = torch.randn(60, d, dtype=dtype), torch.randn(t * t, d * g["feature_parts"], dtype=dtype)
    before = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    passes = []

    def encode(level, tiles):
        return torch.randn(len(tiles), t, t, d * g["feature_parts"], dtype=dtype)

    def score(canvas):
        seq = torch.cat([thumb[:, :d], canvas.feats[..., :d].reshape(-1, d), text])
        passes.append(int(seq.shape[0]) + 14 * len(canvas.tiles))
        del seq
        return scorer(canvas)

    result = run_focus(geo, "paper", encode, score, alpha=alpha, n_max=n_max)
    kept = sorted({int(i) for i in result.canvas.tile[result.keep] if i >= 0})
    final = torch.cat([thumb[:, :d], result.canvas.feats[kept][..., :d].reshape(-1, d), text])
    result.canvas.feats = None
    doc = {"peak_mb": round(_status_mb("VmHWM") - before, 1), "seconds": round(time.perf_counter() - t0, 2),
           "tiles_per_level": [len(r.encoded) for r in result.records], "stopped_at": result.stopped_at,
           "finest_level": len(geo.levels) - 1, "final_sequence_tokens": int(final.shape[0]) + 14 * len(kept),
           "largest_rfm_tokens": max(passes), "tiles_to_answer": len(kept), "rss_before_mb": round(before, 1)}
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
