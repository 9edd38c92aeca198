"""One question end to end: raster -> lazy pyramid -> focus (Algorithm 1) -> LLM answer + trace.

Kept apart from `engine.py` so that the engine module stays import-light (the service imports it
without torch); this module is imported only when a real question is asked.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from . import flops
from .engine import AskOptions, ProgressFn, StopFn, stage_checker
from .errors import BadOptions, Cancelled
from .exact_pixels import ExactPyramid
from .features import CachedGrids, FeatureCache, TileEncoder, ViewKey
from .focus import Canvas, FocusResult, build_trace, run_focus
from .model.modeling import CLIP_MEAN_RGB, LrsFocusModel, MultimodalSequence
from .model.prompts import PromptIds, control_tokens_in, encode_prompt
from .model.qwen_vl import QwenVLFocusModel
from .pyramid import ImagePyramid, PyramidConfig
from .score_map import heatmap_document

#: The pixel path of modes that do not force one. "exact" = the released preprocessing (bilinear
#: from full resolution, no antialiasing: what the checkpoints were trained on); "gdal" = GDAL's
#: resampling from overviews (fast on huge rasters with overviews). docs/method.md has the figures.
DEFAULT_PIXELS = "exact"


def is_vl(model: Any) -> bool:
    """A stock Qwen2.5-VL / Qwen3-VL checkpoint (attention focus), not the released LLaVA + RFM."""
    return isinstance(model, QwenVLFocusModel)


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


class RfmScorer:
    """The `score` callable of `focus.run_focus`: one RFM pass over a canvas; times itself."""

    def __init__(self, model: LrsFocusModel, prompt: PromptIds, thumbnail: torch.Tensor):
        self.model, self.prompt, self.thumbnail = model, prompt, thumbnail
        self.seconds = 0.0

    def __call__(self, canvas: Canvas) -> np.ndarray:
        t0 = time.perf_counter()
        tiles = canvas.gather(self.model.image_newline)
        if canvas.keep_gaps:  # released stage B: the whole canvas, absent tiles as zero placeholders
            offsets = torch.as_tensor(canvas.offsets)
            full = tiles.new_zeros(canvas.span, tiles.shape[-1])
            full[offsets.to(tiles.device)] = tiles
            present = torch.zeros(canvas.span, dtype=torch.bool)
            present[offsets] = True
            seq = self.model.build_sequence(self.prompt, self.thumbnail, full)
            del tiles, full
            scores = self.model.rfm_scores(seq, present=present)[offsets.to(seq.embeds.device)]
        else:
            seq = self.model.build_sequence(self.prompt, self.thumbnail, tiles)
            del tiles
            scores = self.model.rfm_scores(seq)
        self.seconds += time.perf_counter() - t0
        return scores.float().cpu().numpy().astype(np.float64)


def final_sequence(model: LrsFocusModel, prompt: PromptIds, thumbnail: torch.Tensor,
                   result: FocusResult) -> MultimodalSequence:
    """[prefix][thumbnail][':'][kept tokens in raster order][suffix], contiguous positions."""
    if result.canvas is None:
        return model.build_sequence(prompt, thumbnail, None)
    kept = result.canvas.gather(model.image_newline, result.keep)
    return model.build_sequence(prompt, thumbnail, kept)


def transformer_blocks(model: Any) -> list[Any]:
    """Every block a question's forward passes run: vision tower, LLM and RFM (LLaVA) or vision and
    language model (Qwen-VL)."""
    if is_vl(model):
        return [*model.hf.model.visual.blocks, *model.hf.model.language_model.layers]
    return [*model.vision_tower.encoder.layers, *model.llm.model.layers, *model.rfm.layers]


@contextlib.contextmanager
def cancel_between_layers(model: Any, should_stop: StopFn | None) -> Iterator[None]:
    """A cancel is honoured between two blocks of any forward pass, not only between stages: one prefill
    of tens of thousands of tokens takes seconds on a CPU and minutes on a slow card."""
    if should_stop is None:
        yield
        return

    def poll(module: Any, args: Any) -> None:
        if should_stop():
            raise Cancelled("cancelled during a forward pass")

    handles = [block.register_forward_pre_hook(poll) for block in transformer_blocks(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cancel_check(should_stop: StopFn | None):
    """A cancel-only check for long reads (no progress event per strip)."""

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled while reading pixels")

    return check


def sequence_budget(model: LrsFocusModel, prompt: PromptIds, options: AskOptions) -> dict[str, int]:
    """Max length, text tokens and what is left for tile + newline tokens. The text is never cut:
    a question that does not fit with the thumbnail is refused."""
    cfg = model.config
    max_length = int(options.max_length or cfg.max_length)
    limit = int(getattr(cfg.text_config, "max_position_embeddings", max_length) or max_length)
    if max_length > limit:
        raise BadOptions(f"max_length {max_length} exceeds the model's {limit} positions")
    text = len(prompt.prefix) + len(prompt.suffix)
    fixed = text + cfg.thumbnail_tokens + (0 if options.mode == "thumbnail" else 1)
    if fixed > max_length:
        raise BadOptions(
            f"the question and prompt take {text} tokens; with the {cfg.thumbnail_tokens}-token thumbnail they "
            f"exceed the sequence limit of {max_length} tokens (shorten the question or raise max_length)"
        )
    return {"max_length": max_length, "text_tokens": text, "vision_budget": max_length - fixed,
            "positions": limit}


def refuse_vl_options(options: AskOptions) -> None:
    """The attention-focus options of the Qwen-VL families, refused for the LLaVA + RFM family."""
    if options.focus not in (None, "rfm") or options.focus_layer is not None or options.focus_heads is not None:
        raise BadOptions("--focus attention|relative, --focus-layer and --focus-heads are for Qwen2.5-VL / Qwen3-VL "
                         "checkpoints; this model focuses with its Region Focus Module (--focus rfm)")


def refuse_bad_question(tokenizer: Any, question: str) -> None:
    """An empty question or one holding the model's control tokens is refused."""
    if not question.strip():
        raise BadOptions("the question is empty")
    controls = control_tokens_in(tokenizer, question)
    if controls:
        raise BadOptions(f"the question contains the model's control token {controls[0]!r}; "
                         "remove it (it would end the question early)")


def checked_prompt(tokenizer: Any, template: str, question: str) -> PromptIds:
    """The question's prompt ids, once the question passed `refuse_bad_question`."""
    refuse_bad_question(tokenizer, question)
    return encode_prompt(tokenizer, template, question)


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


def open_view(engine: Any, raster: str, options: AskOptions, pixels: str):
    """Open the raster, restore cached stretch statistics, apply the window. -> (src, view, key)."""
    from .raster import RasterSource, RasterWindow

    src = RasterSource.open(raster, bands=options.bands, stretch=options.stretch)
    try:
        view = RasterWindow(src, options.window) if options.window is not None else src
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


@dataclass
class Run:
    """What one question produced before it is turned into the result document."""

    result: FocusResult
    answer: str
    sequence_tokens: int
    budget: dict[str, int]
    encoder: TileEncoder
    timings: dict[str, float]
    n_max: int
    llm_vision_tokens: int | None = None  # what the LLM read (None: thumbnail + kept tokens)
    max_pass_tokens: int | None = None  # longest focus pass (None: text + the largest RFM pass's vision)


def run_question(engine: Any, pyramid: Any, question: str, options: AskOptions, check, should_stop: StopFn | None,
                 key: ViewKey | None = None, prompt: PromptIds | None = None) -> Run:
    """Thumbnail, Algorithm 1 and the answer on an open pyramid (any pixel source, no GDAL needed):
    the engine's path and the GPU check's. `prompt`: the question's ids when the caller checked them."""
    if is_vl(engine.model):
        return run_question_vl(engine, pyramid, question, options, check, should_stop, key)
    model: LrsFocusModel = engine.model
    cfg = model.config
    timings: dict[str, float] = {}
    refuse_vl_options(options)
    prompt = prompt or checked_prompt(engine.tokenizer, cfg.template, question)
    budget = sequence_budget(model, prompt, options)
    n_max = int(options.n_max or cfg.n_max)
    encoder = TileEncoder(model, pyramid, key, getattr(engine, "cache", None), check)
    released_numerics = options.mode == "released" and model.dtype == torch.float32
    with torch.inference_mode(), model.float16_rotary(released_numerics), cancel_between_layers(model, should_stop):
        check("encode", None, 0.0, "encoding the thumbnail")
        t0 = time.perf_counter()
        thumbnail = encoder.thumbnail()
        timings["thumbnail"] = time.perf_counter() - t0
        scorer = RfmScorer(model, prompt, thumbnail)
        t0 = time.perf_counter()
        result = run_focus(
            pyramid.geometry,
            options.mode,
            encoder,
            scorer,
            alpha=float(options.alpha),
            n_max=n_max,
            max_levels=options.max_levels,
            check=check,
            thumbnail_tokens=cfg.thumbnail_tokens,
            vision_budget=budget["vision_budget"],
            pass_limit=budget["positions"] - budget["text_tokens"] - cfg.thumbnail_tokens - 1,
        )
        timings["encode"] = encoder.seconds
        timings["focus"] = scorer.seconds
        timings["select"] = time.perf_counter() - t0 - encoder.seconds - scorer.seconds
        seq = final_sequence(model, prompt, thumbnail, result)
        if result.canvas is not None:
            result.canvas.feats = None  # generation needs only the sequence
        if seq.length > budget["max_length"]:  # fit_budget guarantees it; never cut text silently
            raise AssertionError(f"sequence of {seq.length} tokens exceeds {budget['max_length']}")
        check("generate", None, 0.0, f"answering from {seq.length} tokens")
        t0 = time.perf_counter()
        answer, _ = model.generate(seq, engine.tokenizer, int(options.max_new_tokens), should_stop=should_stop,
                                   config_eos_only=options.mode == "released")
        timings["generate"] = time.perf_counter() - t0
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled during generation")
    return Run(result, answer, seq.length, budget, encoder, timings, n_max)


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

    model: LrsFocusModel = engine.model
    cfg = model.config
    check = stage_checker(progress, should_stop)
    t_start = time.perf_counter()
    pixels = pixel_path(options, model)

    # question and sequence limit are checked before a 27k raster is opened
    if is_vl(model):
        from .vl_answer import check_options

        check_options(model, options)
        prompt = None
        vl_budget(model, question, options)
    else:
        refuse_vl_options(options)
        prompt = checked_prompt(engine.tokenizer, cfg.template, question)
        sequence_budget(model, prompt, options)
    check("open", None, 0.0, f"opening {raster}")
    t0 = time.perf_counter()
    src, view, key = open_view(engine, raster, options, pixels)
    open_seconds = time.perf_counter() - t0
    try:
        check("pyramid", None, 0.0, f"pyramid of a {view.width} x {view.height} px raster")
        cache: FeatureCache | None = getattr(engine, "cache", None)
        grids = CachedGrids(cache, key) if cache is not None else None
        pyramid = make_pyramid(view, pyramid_config(model), pixels, check=cancel_check(should_stop), grids=grids)
        geo = pyramid.geometry
        run = run_question(engine, pyramid, question, options, check, should_stop, key, prompt)
        result = run.result
        origin = getattr(view, "origin", (0, 0))
        trace = build_trace(geo, result, options.score_reduce, origin=origin)
        trace["budget"] = {**run.budget, "llm_sequence_tokens": run.sequence_tokens,
                           "vision_tokens_dropped": result.vision_tokens_dropped}
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


def vl_budget(model: QwenVLFocusModel, question: str, options: AskOptions) -> dict[str, int]:
    """The sequence budget of a Qwen-VL answer: the text and a full-size thumbnail never cut; the rest
    is for tiles. A question that does not fit with the thumbnail is refused."""
    from .vl_answer import check_question

    cfg = model.config
    max_length = int(options.max_length or cfg.max_length)
    limit = int(getattr(cfg.text_config, "max_position_embeddings", max_length) or max_length)
    if max_length > limit:
        raise BadOptions(f"max_length {max_length} exceeds the model's {limit} positions")
    tile = model.grid_for(cfg.tile_size, cfg.tile_size)
    q = check_question(model, question, tile)
    fixed = q.text_tokens + cfg.thumbnail_tokens
    if fixed > max_length:
        raise BadOptions(
            f"the question and prompt take {q.text_tokens} tokens; with the {cfg.thumbnail_tokens}-token thumbnail "
            f"they exceed the sequence limit of {max_length} tokens (shorten the question or raise max_length)")
    return {"max_length": max_length, "text_tokens": q.text_tokens, "vision_budget": max_length - fixed,
            "positions": limit}


def run_question_vl(engine: Any, pyramid: Any, question: str, options: AskOptions, check, should_stop: StopFn | None,
                    key: ViewKey | None = None) -> Run:
    """`run_question` for Qwen2.5-VL / Qwen3-VL: attention focus per level, thumbnail + kept tiles."""
    from .vl_answer import AttentionScorer, answer_tiles, caption_tokens, check_options

    model: QwenVLFocusModel = engine.model
    cfg = model.config
    check_options(model, options)
    budget = vl_budget(model, question, options)
    n_max = int(options.n_max or cfg.n_max)
    cache = getattr(engine, "cache", None)
    encoder = TileEncoder(model, pyramid, key, cache, check)
    timings: dict[str, float] = {}
    geo = pyramid.geometry
    with torch.inference_mode(), cancel_between_layers(model, should_stop):
        check("encode", None, 0.0, "encoding the thumbnail")
        t0 = time.perf_counter()
        thumbnail = encoder.thumbnail()
        timings["thumbnail"] = time.perf_counter() - t0
        thumb_grid = model.grid_for(*geo.thumbnail_size)
        scorer = AttentionScorer(model, question, thumbnail, thumb_grid, geo, options.focus == "relative",
                                 options.focus_layer, options.focus_heads, cache, key)
        t0 = time.perf_counter()
        per_tile = cfg.tokens_per_tile ** 2
        room = budget["positions"] - budget["text_tokens"] - int(thumbnail.shape[0])
        result = run_focus(geo, options.mode, encoder, scorer, alpha=float(options.alpha), n_max=n_max,
                           max_levels=options.max_levels, check=check, thumbnail_tokens=int(thumbnail.shape[0]),
                           vision_budget=None, pass_limit=room // (per_tile + caption_tokens(model)) * per_tile)
        timings["encode"] = encoder.seconds
        timings["select"] = time.perf_counter() - t0 - encoder.seconds - scorer.seconds
        t0, s0 = time.perf_counter(), scorer.seconds
        thumb_tokens = int(thumbnail.shape[0])  # the processor may upscale thin views past one tile's tokens
        vision_budget = budget["max_length"] - budget["text_tokens"] - thumb_tokens
        if vision_budget < 0:
            raise BadOptions(f"the question and prompt take {budget['text_tokens']} tokens; with this view's "
                             f"{thumb_tokens}-token thumbnail they exceed the sequence limit of {budget['max_length']}")
        budget["vision_budget"] = vision_budget
        vl = answer_tiles(model, scorer, result, vision_budget, int(options.max_new_tokens), should_stop, check,
                          options.answer_input)
        timings["focus"] = scorer.seconds
        timings["generate"] = time.perf_counter() - t0 - (scorer.seconds - s0)
        if result.canvas is not None:
            result.canvas.feats = None
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled during generation")
    if vl.sequence_tokens > budget["max_length"]:
        raise AssertionError(f"sequence of {vl.sequence_tokens} tokens exceeds {budget['max_length']}")
    result.notes["focus"] = {"signal": options.focus or "attention",
                             "layer": model._layer(options.focus_layer),
                             "heads": list(options.focus_heads) if options.focus_heads else "all",
                             "prefix_reused": scorer.prefix_hits, "tiles_sent": vl.tiles_sent}
    return Run(result, vl.answer, vl.sequence_tokens, budget, encoder, timings, n_max, vl.llm_vision_tokens,
               scorer.max_tokens)
