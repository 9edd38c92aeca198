"""One question end to end: raster -> lazy pyramid -> focus (Algorithm 1) -> answer + trace.

Kept apart from `engine.py` so that the engine module stays import-light (the service imports it
without torch); this module is imported only when a real question is asked. What differs by model
family is in `llava_answer.py` (released LLaVA + RFM) and `vl_answer.py` (Qwen2.5-VL / Qwen3-VL).
"""

from __future__ import annotations

import time
from typing import Any

from . import flops
from .errors import BadOptions
from .exact_pixels import ExactPyramid
from .features import CachedGrids, FeatureCache, ViewKey
from .trace import build_trace
from .llava_answer import checked_prompt, refuse_vl_options, run_question_llava, sequence_budget
from .model.modeling import CLIP_MEAN_RGB
from .model.prompts import PromptIds
from .options import AskOptions, ProgressFn, StopFn, stage_checker
from .pyramid import ImagePyramid, PyramidConfig
from .question_run import Run, cancel_check, is_vl
from .score_map import heatmap_document
from .vl_answer import check_options, run_question_vl, vl_budget, vl_within_memory
from .work_meter import calibrate

#: The pixel path of modes that do not force one. "exact" = the released preprocessing (bilinear
#: from full resolution, no antialiasing: what the checkpoints were trained on); "gdal" = GDAL's
#: resampling from overviews (fast on huge rasters with overviews). docs/method.md has the figures.
DEFAULT_PIXELS = "exact"


def pyramid_config(model: Any) -> PyramidConfig:
    """Tile size, base size and tokens per tile come from the model; padding is the colour its
    normalisation maps to 0 (the CLIP mean for LLaVA)."""
    cfg = model.config
    return PyramidConfig(
        tile_size=cfg.tile_size,
        base_long_side=cfg.base_long_side,
        tokens_per_tile=cfg.tokens_per_tile,
        pad_rgb=tuple(cfg.pad_rgb) if is_vl(model) else CLIP_MEAN_RGB,
    )


def pixel_path(options: AskOptions, model: Any = None) -> str:
    """Released mode always reads the released pixels; Qwen-VL families read GDAL's (their own
    processor normalises them); the others take the option or the default."""
    if model is not None and is_vl(model):
        return "gdal"
    return "exact" if options.mode == "released" else (options.pixels or DEFAULT_PIXELS)


def make_pyramid(src: Any, cfg: PyramidConfig, pixels: str, check=None, grids=None) -> ImagePyramid | ExactPyramid:
    return ExactPyramid(src, cfg, check=check, grids=grids) if pixels == "exact" else ImagePyramid(src, cfg)


def view_key(engine: Any, src: Any, pixels: str, window: tuple | None) -> ViewKey:
    return ViewKey(
        identity=src.identity(),
        bands=tuple(src.bands),
        stretch=tuple((s.low, s.high) for s in src.stretch) if src.explicit_stretch else None,
        window=window,
        pixels=pixels,
        model=str(engine.name),
        dtype=str(engine.info["dtype"]),
    )


def open_source(engine: Any, raster: str, options: AskOptions, should_stop: StopFn | None = None) -> Any:
    """The engine's reader pool when it has one (`serve`: confined reader processes, reads cancelled
    by `should_stop`), else GDAL in this process (`ask`: the user's own files)."""
    readers = getattr(engine, "readers", None)
    if readers is not None:
        return readers.open(raster, bands=options.bands, stretch=options.stretch, check=cancel_check(should_stop))
    from .raster import RasterSource

    return RasterSource.open(raster, bands=options.bands, stretch=options.stretch)


def open_view(engine: Any, raster: str, options: AskOptions, pixels: str, should_stop: StopFn | None = None):
    """Open the raster, restore cached stretch statistics, apply the window. -> (src, view, key)."""
    from .raster import RasterWindow

    src = open_source(engine, raster, options, should_stop)
    try:
        view = RasterWindow(src, options.window) if options.window is not None else src
        expect = getattr(src, "expect_full_read", None)  # confined readers: the pixel budget, before reading
        if expect is not None and (pixels == "exact" or not src.overview_sizes):
            expect(view.height, view.width)
        cache: FeatureCache | None = getattr(engine, "cache", None)
        key = view_key(engine, src, pixels, getattr(view, "window", None))
        if cache is not None:
            cache.observe(key)
            if not src.explicit_stretch:
                stats_key = (key.path, key.identity, key.bands)
                stats = cache.get_meta(stats_key)
                if stats is None:
                    cache.put_meta(stats_key, src.stretch)  # estimates once per raster version
                else:
                    src.stretch = stats
    except BaseException:
        src.close()
        raise
    return src, view, key


def run_question(engine: Any, pyramid: Any, question: str, options: AskOptions, check, should_stop: StopFn | None,
                 key: ViewKey | None = None, prompt: PromptIds | None = None) -> Run:
    """Thumbnail, Algorithm 1 and the answer on an open pyramid (any pixel source, no GDAL needed), by
    the model's family: the engine's path and the GPU check's. `prompt`: LLaVA ids already checked."""
    if is_vl(engine.model):
        return run_question_vl(engine, pyramid, question, options, check, should_stop, key)
    return run_question_llava(engine, pyramid, question, options, check, should_stop, key, prompt)


def answer_question(
    engine: Any,
    raster: str,
    question: str,
    options: AskOptions,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    job_id: str = "",
) -> dict[str, Any]:
    from .geo import trace_to_features

    model = engine.model
    cfg = model.config
    check = stage_checker(progress, should_stop, work_rates(engine))
    meter = check.__self__  # the run plans its work on it (`overall`)
    t_start = time.perf_counter()
    pixels = pixel_path(options, model)

    # question and sequence limit are checked before a 27k raster is opened
    if is_vl(model):
        check_options(model, options)
        check_answer_server(engine, options)
        prompt = None
        vl_within_memory(model, vl_budget(model, question, options), options.focus_layer,
                         getattr(engine, "answer_server", None) is None)
    else:
        refuse_vl_options(options)
        prompt = checked_prompt(engine.tokenizer, cfg.template, question)
        sequence_budget(model, prompt, options)
    check("open", None, 0.0, f"opening {raster}")
    t0 = time.perf_counter()
    src, view, key = open_view(engine, raster, options, pixels, should_stop)
    open_seconds = time.perf_counter() - t0
    try:
        check("pyramid", None, 0.0, f"pyramid of a {view.width} x {view.height} px raster")
        cache: FeatureCache | None = getattr(engine, "cache", None)
        grids = CachedGrids(cache, key) if cache is not None else None
        pyramid = make_pyramid(view, pyramid_config(model), pixels, check=cancel_check(should_stop, meter.beat),
                               grids=grids)
        geo = pyramid.geometry
        run = run_question(engine, pyramid, question, options, check, should_stop, key, prompt)
        result = run.result
        origin = getattr(view, "origin", (0, 0))
        trace = build_trace(geo, result, options.score_reduce, origin=origin)
        trace["budget"] = {**run.budget, "llm_sequence_tokens": run.sequence_tokens,
                           "vision_tokens_dropped": result.vision_tokens_dropped}
        trace["answer"] = run.answer_source or {"source": "local"}
        if options.window is not None:  # also at origin (0, 0): the trace says the pyramid saw a window
            trace["window"] = list(view.window)
        heatmap = heatmap_document(geo, result.records, origin)
        features = trace_to_features(trace, src.geotransform, src.crs_wkt, job_id)
        crs_wkt = src.crs_wkt
    finally:
        src.close()

    counts = result_counts(cfg, run)
    check("done", None, 1.0, "done")
    timings = {"open": open_seconds, **run.timings, "total": time.perf_counter() - t_start}
    opts = options.to_dict()
    opts["n_max"] = run.n_max
    opts["pixels"] = pixels
    opts["focus"] = options.focus or ("attention" if is_vl(model) else "rfm")
    if is_vl(model):
        opts["focus_layer"] = model.config.focus_layer if options.focus_layer is None else int(options.focus_layer)
    return {
        "answer": run.answer,
        "question": question,
        "trace": trace,
        "counts": counts,
        "features": features,
        "crs_wkt": crs_wkt,
        "heatmap": heatmap,
        "timings": timings,
        "model": {
            "name": engine.name,
            "random_weights": bool(engine.info["random_weights"]),
            "device": engine.info["device"],
            "dtype": engine.info["dtype"],
        },
        "options": opts,
        "raster": {"path": str(raster), "size": [src.height, src.width], "geotransform": list(src.geotransform)},
        "job_id": job_id,
    }


def check_answer_server(engine: Any, options: AskOptions) -> None:
    """An answer server reads images, not pruned token sets: `--answer-input tokens` stays local."""
    if getattr(engine, "answer_server", None) is not None and options.answer_input == "tokens":
        raise BadOptions("--answer-input tokens feeds the model only the kept tokens of each tile, which an "
                         "answer server cannot take (it reads whole images): use --answer-input tiles or no "
                         "--answer-endpoint")


def work_rates(engine: Any):
    """The engine's work rates for `overall` (work_meter.py), timed on its model at the first question."""
    rates = getattr(engine, "work_rates", None)
    if rates is None:
        rates = calibrate(engine.model)
        try:
            engine.work_rates = rates
        except AttributeError:
            pass
    return rates


def result_counts(cfg: Any, run: Run) -> dict[str, Any]:
    result = run.result
    llm_vision = run.llm_vision_tokens if run.llm_vision_tokens is not None else cfg.thumbnail_tokens + int(result.keep.size)
    return {
        "tiles_encoded": int(result.tiles_encoded),
        "tiles_from_cache": int(run.encoder.cached),
        "vit_tokens": int((1 + result.tiles_encoded) * getattr(cfg, "vit_tokens_per_tile", cfg.thumbnail_tokens)),
        "llm_vision_tokens": int(llm_vision),
        "llm_sequence_tokens": int(run.sequence_tokens),
        "vision_tokens_dropped": int(result.vision_tokens_dropped),
        "rfm_passes": len(result.rfm_vision_tokens),
        "rfm_max_pass_tokens": int(run.max_pass_tokens if run.max_pass_tokens is not None else
                                   (run.budget["text_tokens"] + max(result.rfm_vision_tokens) if result.rfm_vision_tokens else 0)),
        "prefill_tflops": flops.method_prefill_tflops(
            llm_vision, result.rfm_vision_tokens, rfm_layers=cfg.rfm_layers, **flops.shape_of(cfg.text_config)
        ),
    }
