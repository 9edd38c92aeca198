"""`lrs-focus ask RASTER QUESTION`: answer + trace, in process or through a running backend."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ._answer_server import add_answer_server_args, answer_server_from_args
from ._output import add_json_flag, emit
from ._values import seconds

DEFAULT_MODEL = "ll-13/llava-largeimg-Qwen2-7B"
RANDOM_NOTICE = "NOTE: model '{model}' has RANDOM WEIGHTS (offline test model): the answer is noise, not a prediction."


def _bands(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated band numbers, not {text!r}") from None


def _heads(text: str) -> list[int]:
    try:
        return [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"focus heads must be comma-separated head numbers, not {text!r}") from None


def _numbers(count: tuple[int, ...], what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if len(values) not in count or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return values

    return parse


_window = _numbers((4,), "window must be x0,y0,x1,y1 in raster pixels")
_stretch_values = _numbers((2, 6), "stretch must be low,high (one band) or low,high,low,high,low,high (R,G,B)")


def _stretch(text: str) -> list[list[float]]:
    values = _stretch_values(text)
    return [values[i:i + 2] for i in range(0, len(values), 2)]


def _out_file(text: str) -> str:
    from ..result_files import ResultFileError, kind_of

    try:
        kind_of(text)
    except ResultFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _heatmap_file(text: str) -> str:
    if not text.lower().endswith((".tif", ".tiff")):
        raise argparse.ArgumentTypeError(f"the heatmap is a GeoTIFF: name it .tif, not {text!r}")
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser("ask", help="answer a question about a raster; print the answer and the focused tiles")
    p.add_argument("raster", help="raster path (anything GDAL opens)")
    p.add_argument("question")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"released checkpoint dir or hub id (default {DEFAULT_MODEL}); 'tiny' = random weights, offline")
    p.add_argument("--mode", default="paper", choices=["paper", "released", "thumbnail", "all-tiles"])
    p.add_argument("--alpha", type=float, default=0.25, help="fraction of tile tokens kept per level (default 0.25)")
    p.add_argument("--n-max", type=int, default=None, help="tile budget to zoom further (default 40 Vicuna, 80 Qwen2, 24 Qwen-VL)")
    p.add_argument("--max-levels", type=int, default=None, help="use at most this many tiled levels")
    p.add_argument("--bands", type=_bands, default=None, help="1 or 3 GDAL band numbers, e.g. 4,3,2")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--score-reduce", choices=["sum", "max"], default="sum")
    p.add_argument("--window", type=_window, default=None, metavar="X0,Y0,X1,Y1",
                   help="ask about this pixel window of the raster only (x right, y down, end exclusive)")
    p.add_argument("--stretch", type=_stretch, default=None, metavar="LOW,HIGH[,...]",
                   help="map raw values LOW..HIGH to 0..255 per band (default: 2-98 %% percentiles; 8-bit as is)")
    p.add_argument("--pixels", choices=["exact", "gdal"], default=None,
                   help="exact = the released preprocessing (bilinear from full resolution; default); "
                        "gdal = GDAL's resampling from overviews (faster on huge rasters with overviews)")
    p.add_argument("--focus", choices=["rfm", "attention", "relative"], default=None,
                   help="focus signal: rfm (LLaVA's Region Focus Module, its default) or, for Qwen2.5-VL / Qwen3-VL, "
                        "attention of the last prompt token (default) or relative (divided by a generic prompt's)")
    p.add_argument("--focus-layer", type=int, default=None, metavar="N",
                   help="Qwen-VL: the layer whose attention focuses (default: the model's preset, docs/models.md)")
    p.add_argument("--focus-heads", type=_heads, default=None, metavar="H[,H...]",
                   help="Qwen-VL: attention heads averaged (default: all)")
    p.add_argument("--answer-input", choices=["tiles", "tokens"], default="tiles",
                   help="Qwen-VL: what the answer reads besides the thumbnail: the kept tiles whole, each with a "
                        "caption (default), or only their kept tokens at their own positions")
    p.add_argument("--max-length", type=int, default=None,
                   help="sequence limit in tokens (default: the model's, 8192 Qwen2 / 2048 Vicuna); the text is "
                        "never cut, the lowest-scored vision tokens are dropped to fit")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' dtype (default bfloat16 on CUDA, float32 on CPU); rotary and pixel "
                        "normalisation stay float32")
    p.add_argument("--out", type=_out_file, action="append", default=[], metavar="FILE.geojson|FILE.gpkg",
                   help="write the focused tiles (with pixel windows and the answer): .geojson = RFC 7946, "
                        "WGS 84 lon/lat; .gpkg = GeoPackage in the raster's CRS (also without a CRS); repeatable")
    p.add_argument("--heatmap", type=_heatmap_file, default=None, metavar="FILE.tif",
                   help="write the token scores as a single-band Float32 GeoTIFF on the raster's ground")
    add_answer_server_args(p)
    p.add_argument("--endpoint", default=None, metavar="URL", help="ask a running `lrs-focus serve` instead")
    p.add_argument("--server-key", default=None, metavar="FILE",
                   help="with --endpoint: the CURVE server's public key (server.key from `lrs-focus keys`)")
    p.add_argument("--client-key", default=None, metavar="FILE",
                   help="with --server-key: this client's certificate (NAME.key_secret from `lrs-focus keys`)")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="with --endpoint: seconds of silence from the server before giving up; progress events "
                        "reset it, so long jobs are fine (default 30)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _progress(stage: str, level, fraction: float, message: str, overall=None) -> None:
    where = f" level {level}" if level is not None else ""
    job = f" | job {overall:4.0%}" if overall is not None else ""
    print(f"[{stage}{where} {fraction:4.0%}{job}] {message}", file=sys.stderr, flush=True)


def _options(args) -> dict[str, Any]:
    return {
        "mode": args.mode,
        "alpha": args.alpha,
        "n_max": args.n_max,
        "bands": args.bands,
        "max_levels": args.max_levels,
        "max_new_tokens": args.max_new_tokens,
        "score_reduce": args.score_reduce,
        "window": args.window,
        "stretch": args.stretch,
        "pixels": args.pixels,
        "max_length": args.max_length,
        "focus": args.focus,
        "focus_layer": args.focus_layer,
        "focus_heads": args.focus_heads,
        "answer_input": args.answer_input,
    }


def format_text(doc: dict[str, Any]) -> str:
    lines = []
    model = doc.get("model", {})
    if model.get("random_weights"):
        lines.append(RANDOM_NOTICE.format(model=model.get("name", "tiny")))
    lines.append(f"answer: {doc['answer']}")
    c = doc["counts"]
    lines.append(
        f"tiles encoded {c['tiles_encoded']}, ViT tokens {c['vit_tokens']}, vision tokens into the LLM "
        f"{c['llm_vision_tokens']}, prefill {c['prefill_tflops']:.4g} TFLOPs (analytic)"
    )
    trace = doc["trace"]
    lines.append(f"mode {trace.get('mode')}, stopped at level {trace.get('stopped_at')}")
    for lv in trace["levels"]:
        enc = [t for t in lv["tiles"] if t["encoded"]]
        kept = sorted((t for t in lv["tiles"] if t["kept"]), key=lambda t: -t["score"])
        if not enc:
            continue
        top = ", ".join(f"({t['row']},{t['col']}) {t['score']:.3f}" for t in kept[:5])
        lines.append(f"  level {lv['level']} grid {lv['grid'][0]}x{lv['grid'][1]}: {len(enc)} encoded, "
                     f"{len(kept)} kept; top: {top}")
    t = doc.get("timings", {})
    if "total" in t:
        lines.append(f"time {t['total']:.2f} s on {model.get('device', '?')}")
    if doc.get("out"):
        lines.append(f"tiles written to {', '.join(doc['out'])}")
    if doc.get("heatmap_out"):
        lines.append(f"score heatmap written to {doc['heatmap_out']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import BadOptions, LrsFocusError

    options = _options(args)
    _check_files_possible(args)
    if args.endpoint and args.answer_endpoint:
        raise BadOptions("--answer-endpoint is the serving process's option: start `lrs-focus serve "
                         "--answer-endpoint URL` and ask it with --endpoint")
    if args.endpoint:
        try:
            from ..client import ask_remote
        except ImportError as exc:
            raise LrsFocusError(f"--endpoint needs lrs_focus.client.ask_remote, which is not available: {exc}") from exc
        doc = ask_remote(args.endpoint, args.raster, args.question, options, progress=_progress, timeout_s=args.timeout,
                         server_public_key=args.server_key, client_key_file=args.client_key)
    else:
        from ..engine import AskOptions, Engine

        try:
            ask_options = AskOptions.from_dict(options)
        except TypeError as exc:
            raise BadOptions(str(exc)) from exc
        if args.model.startswith("tiny"):
            print(RANDOM_NOTICE.format(model=args.model), file=sys.stderr)
        answer_server = answer_server_from_args(args)
        engine = Engine(args.model, device=args.device, dtype=args.dtype, cache_mb=0, answer_server=answer_server)
        doc = engine.ask(args.raster, args.question, ask_options, progress=_progress)
    failure = _write_files(args, doc)
    emit(args, doc, format_text)  # the answer is printed even when a file could not be written
    if failure:
        raise failure
    return 0


def _local_ground(raster: str):
    """The raster's geotransform and CRS as GDAL reads it here, or None if it does not open here
    (with --endpoint the path may be one only the server sees)."""
    import os
    import stat

    from ..result_files import raster_ground

    try:
        if not raster.startswith("/vsi") and not stat.S_ISREG(os.stat(raster).st_mode):
            return None  # a FIFO would block GDAL for ever; the engine's open names the problem
        return raster_ground(raster)
    except (OSError, RuntimeError, ValueError):
        return None


def _check_files_possible(args) -> None:
    """Refuse before the model runs what cannot be written after it."""
    from ..errors import BadOptions, OutputError
    from ..result_files import ResultFileError, check_writable, kind_of, no_wgs84_message
    from ._out_paths import check_outputs

    if args.heatmap and args.mode == "thumbnail":
        raise BadOptions("--heatmap needs token scores, and thumbnail mode scores none: use another --mode")
    outputs = [*args.out, *([args.heatmap] if args.heatmap else [])]
    for path in outputs:
        try:
            check_writable(path)
        except ResultFileError as exc:
            raise OutputError(str(exc)) from None
    try:
        check_outputs(args.raster, outputs)
    except ValueError as exc:
        raise OutputError(str(exc)) from None
    for out in args.out:
        if kind_of(out) == "geojson":
            ground = _local_ground(args.raster)
            if ground is not None and not ground.crs_wkt:
                raise BadOptions(no_wgs84_message(out))


def _write_files(args, doc: dict[str, Any]):
    """--out (tiles + answer) and --heatmap (score grid as a GeoTIFF), placed on the raster's ground.

    Returns the error to raise once the answer is printed, or None.
    """
    from ..errors import LrsFocusError, OutputError
    from ._out_paths import write_replacing

    try:
        if args.out:
            from ..result_files import write_result

            doc["out"] = [write_replacing(out, lambda tmp: write_result(tmp, doc, question=args.question))
                          for out in args.out]
        if args.heatmap:
            doc["heatmap_out"] = _write_heatmap(args, doc)
    except LrsFocusError as exc:
        return exc
    except (OSError, ValueError, RuntimeError) as exc:  # ResultFileError/HeatmapError: ValueError; GDAL: RuntimeError
        return OutputError(str(exc))
    return None


def _write_heatmap(args, doc: dict[str, Any]) -> str:
    from ..errors import LrsFocusError
    from ..heatmap import decode, write_geotiff
    from ._out_paths import write_replacing

    grid = decode(doc.get("heatmap"))
    if grid is None:
        raise LrsFocusError("the result has no heatmap (thumbnail mode, or a backend without token scores)")
    geotransform = (doc.get("raster") or {}).get("geotransform")
    crs_wkt = doc.get("crs_wkt", "")
    if not geotransform:
        ground = _local_ground(args.raster)
        if ground is None:
            raise LrsFocusError(f"--heatmap: the result carries no geotransform and {args.raster} does not open here")
        geotransform = ground.geotransform
    return write_replacing(args.heatmap, lambda tmp: write_geotiff(tmp, grid, geotransform, crs_wkt))
