"""One question end to end: raster -> lazy pyramid -> focus (Algorithm 1) -> LLM answer + trace.

Kept apart from `engine.py` so that the engine module stays import-light (the service imports it
without torch); this module is imported only when a real question is asked.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from . import flops
from .engine import AskOptions, ProgressFn, StopFn, stage_checker
from .focus import Canvas, build_trace, run_focus
from .geo import trace_to_features
from .model.modeling import CLIP_MEAN_RGB, LrsFocusModel
from .model.prompts import PromptIds, encode_prompt
from .pyramid import ImagePyramid, PyramidConfig
from .raster import RasterSource


def pyramid_config(model: LrsFocusModel) -> PyramidConfig:
    """Tile size, base size and pooled tokens come from the model; padding is the CLIP mean colour."""
    cfg = model.config
    return PyramidConfig(
        tile_size=cfg.tile_size,
        base_long_side=cfg.base_long_side,
        tokens_per_tile=cfg.tokens_per_tile,
        pad_rgb=CLIP_MEAN_RGB,
    )


class ModelCallbacks:
    """The `encode` and `score` callables of `focus.run_focus`, backed by the model; times them."""

    def __init__(self, model: LrsFocusModel, pyramid: ImagePyramid, prompt: PromptIds, thumbnail: torch.Tensor, check):
        self.model, self.pyramid, self.prompt, self.thumbnail, self.check = model, pyramid, prompt, thumbnail, check
        self.encode_seconds = 0.0
        self.score_seconds = 0.0

    def encode(self, level: int, tiles: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
        """Read the tiles lazily through the pyramid and encode them in batches."""
        t0 = time.perf_counter()
        out: dict[tuple[int, int], torch.Tensor] = {}
        batch = max(1, int(self.model.config.encode_batch))
        for i in range(0, len(tiles), batch):
            if i:
                self.check("encode", level, i / len(tiles), f"encoded {i}/{len(tiles)} tiles of level {level}")
            chunk = tiles[i : i + batch]
            images = np.stack(self.pyramid.tiles(level, chunk))
            feats = self.model.encode_tiles(images)
            out.update(zip(chunk, feats))
        self.encode_seconds += time.perf_counter() - t0
        return out

    def score(self, canvas: Canvas) -> np.ndarray:
        """RFM scores of the canvas's present tokens (NaN elsewhere)."""
        t0 = time.perf_counter()
        flat = canvas.flat_valid()
        d = canvas.feats.shape[-1]
        tiles = canvas.feats.reshape(-1, d)[torch.as_tensor(flat, device=canvas.feats.device)]
        offsets = torch.as_tensor(flat) if canvas.keep_gaps else None
        seq = self.model.build_sequence(self.prompt, self.thumbnail, tiles, tile_offsets=offsets, tile_span=canvas.valid.size)
        s = self.model.rfm_scores(seq).float().cpu().numpy()
        out = np.full(canvas.valid.size, np.nan, dtype=np.float64)
        out[flat] = s
        self.score_seconds += time.perf_counter() - t0
        return out.reshape(canvas.valid.shape)


def final_sequence(model: LrsFocusModel, prompt: PromptIds, thumbnail: torch.Tensor, result) -> Any:
    """[prefix][thumbnail][':'][kept tokens in raster order][suffix], contiguous positions, truncated."""
    if result.canvas is None:
        seq = model.build_sequence(prompt, thumbnail, None)
    else:
        feats = result.canvas.feats
        kept = feats.reshape(-1, feats.shape[-1])[torch.as_tensor(result.keep, device=feats.device)]
        seq = model.build_sequence(prompt, thumbnail, kept)
    return seq.truncated(int(model.config.max_length))


def answer_question(
    engine: Any,
    raster: str,
    question: str,
    options: AskOptions,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    job_id: str = "",
) -> dict[str, Any]:
    model: LrsFocusModel = engine.model
    cfg = model.config
    check = stage_checker(progress, should_stop)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    check("open", None, 0.0, f"opening {raster}")
    t0 = time.perf_counter()
    src = RasterSource.open(raster, bands=options.bands)
    timings["open"] = time.perf_counter() - t0
    try:
        check("pyramid", None, 0.0, f"pyramid of a {src.height}x{src.width} raster")
        pyramid = ImagePyramid(src, pyramid_config(model))
        geo = pyramid.geometry
        prompt = encode_prompt(engine.tokenizer, cfg.template, question)
        n_max = int(options.n_max or cfg.n_max)
        with torch.inference_mode():
            check("encode", None, 0.0, "encoding the thumbnail")
            t0 = time.perf_counter()
            thumbnail = model.encode_thumbnail(pyramid.thumbnail())
            timings["thumbnail"] = time.perf_counter() - t0
            calls = ModelCallbacks(model, pyramid, prompt, thumbnail, check)
            t0 = time.perf_counter()
            result = run_focus(
                geo,
                options.mode,
                calls.encode,
                calls.score,
                alpha=float(options.alpha),
                n_max=n_max,
                max_levels=options.max_levels,
                newline=model.image_newline,
                check=check,
                thumbnail_tokens=cfg.thumbnail_tokens,
            )
            timings["encode"] = calls.encode_seconds
            timings["focus"] = calls.score_seconds
            timings["select"] = time.perf_counter() - t0 - calls.encode_seconds - calls.score_seconds
            seq = final_sequence(model, prompt, thumbnail, result)
            check("generate", None, 0.0, f"answering from {seq.length} tokens")
            t0 = time.perf_counter()
            answer, _ = model.generate(seq, engine.tokenizer, int(options.max_new_tokens))
            timings["generate"] = time.perf_counter() - t0
        trace = build_trace(geo, result, options.score_reduce)
        features = trace_to_features(trace, src.geotransform, src.crs_wkt, job_id, question)
        crs_wkt = src.crs_wkt
    finally:
        src.close()

    llm_vision = cfg.thumbnail_tokens + int(result.keep.size)
    counts = {
        "tiles_encoded": int(result.tiles_encoded),
        "vit_tokens": int((1 + result.tiles_encoded) * cfg.thumbnail_tokens),
        "llm_vision_tokens": int(llm_vision),
        "llm_sequence_tokens": int(seq.length),
        "rfm_passes": len(result.rfm_vision_tokens),
        "prefill_tflops": flops.method_prefill_tflops(
            llm_vision, result.rfm_vision_tokens, rfm_layers=cfg.rfm_layers, **flops.shape_of(cfg.text_config)
        ),
    }
    check("done", None, 1.0, "done")
    timings["total"] = time.perf_counter() - t_start
    opts = options.to_dict()
    opts["n_max"] = n_max
    return {
        "answer": answer,
        "trace": trace,
        "counts": counts,
        "features": features,
        "crs_wkt": crs_wkt,
        "timings": timings,
        "model": {
            "name": engine.name,
            "random_weights": bool(engine.info["random_weights"]),
            "device": engine.info["device"],
            "dtype": engine.info["dtype"],
        },
        "options": opts,
        "raster": {"path": str(raster), "size": [geo.height, geo.width]},
        "job_id": job_id,
    }
