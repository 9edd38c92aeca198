"""The released LLaVA + RFM family on Algorithm 1: RFM scores per canvas, kept tokens to the LLM."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import BadOptions, Cancelled
from .features import TileEncoder, ViewKey
from .focus import Canvas, FocusResult, run_focus
from .model.modeling import LrsFocusModel, MultimodalSequence
from .model.prompts import PromptIds, encode_prompt, refuse_bad_question
from .options import AskOptions, StopFn
from .question_run import Run, cancel_between_layers
from .stage_clock import clock_of
from .work_meter import Metered, base_pass_pixels, gridded_levels, meter_of
from . import pass_memory
from .pass_memory import memory_limits


class RfmScorer:
    """The `score` callable of `focus.run_focus`: one RFM pass over a canvas; times itself."""

    def __init__(self, model: LrsFocusModel, prompt: PromptIds, thumbnail: torch.Tensor):
        self.model, self.prompt, self.thumbnail = model, prompt, thumbnail
        self.seconds = 0.0
        self.token_layers = 0  # tokens x RFM layers scored (the work meter's rate)
        self.clock = clock_of(model)

    def __call__(self, canvas: Canvas) -> np.ndarray:
        t0 = self.clock.now()
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
        scores = scores.float().cpu().numpy().astype(np.float64)
        self.seconds += self.clock.now() - t0
        self.token_layers += seq.length * len(self.model.rfm.layers)
        return scores


def final_sequence(model: LrsFocusModel, prompt: PromptIds, thumbnail: torch.Tensor,
                   result: FocusResult) -> MultimodalSequence:
    """[prefix][thumbnail][':'][kept tokens in raster order][suffix], contiguous positions."""
    if result.canvas is None:
        return model.build_sequence(prompt, thumbnail, None)
    kept = result.canvas.gather(model.image_newline, result.keep)
    return model.build_sequence(prompt, thumbnail, kept)


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


def within_memory(model: LrsFocusModel, budget: dict[str, int]) -> dict[str, int]:
    """The sequence budget bounded by memory too (pass_memory.py): the RFM's passes by
    `rfm_pass_tokens` (the run stops zooming or caps all-tiles before), the LLM's sequence by
    `llm_pass_tokens` (vision tokens drop first; refused with the figures when text and thumbnail
    alone do not fit)."""
    mem = memory_limits(model)
    budget = {**budget, **mem}
    fixed = budget["max_length"] - budget["vision_budget"]
    if mem["llm_pass_tokens"] < fixed:
        raise BadOptions(pass_memory.refusal("the answer pass for the text and thumbnail", fixed, mem, "llm_pass_tokens"))
    if mem["llm_pass_tokens"] < budget["max_length"]:
        budget["vision_budget"] = mem["llm_pass_tokens"] - fixed
    return budget


def refuse_vl_options(options: AskOptions) -> None:
    """The attention-focus options of the Qwen-VL families, refused for the LLaVA + RFM family."""
    if options.focus not in (None, "rfm") or options.focus_layer is not None or options.focus_heads is not None:
        raise BadOptions("--focus attention|relative, --focus-layer and --focus-heads are for Qwen2.5-VL / Qwen3-VL "
                         "checkpoints; this model focuses with its Region Focus Module (--focus rfm)")


def checked_prompt(tokenizer: Any, template: str, question: str) -> PromptIds:
    """The question's prompt ids, once the question passed `refuse_bad_question`."""
    refuse_bad_question(tokenizer, question)
    return encode_prompt(tokenizer, template, question)


def run_question_llava(engine: Any, pyramid: Any, question: str, options: AskOptions, check,
                       should_stop: StopFn | None, key: ViewKey | None = None, prompt: PromptIds | None = None) -> Run:
    """Thumbnail, Algorithm 1 with the RFM and the answer from the kept tokens, on an open pyramid.
    `prompt`: the question's ids when the caller checked them."""
    model: LrsFocusModel = engine.model
    cfg = model.config
    timings: dict[str, float] = {}
    refuse_vl_options(options)
    prompt = prompt or checked_prompt(engine.tokenizer, cfg.template, question)
    budget = within_memory(model, sequence_budget(model, prompt, options))
    n_max = int(options.n_max or cfg.n_max)
    encoder = TileEncoder(model, pyramid, key, getattr(engine, "cache", None), check)
    released_numerics = options.mode == "released" and model.dtype == torch.float32
    clock = clock_of(model)  # synchronised stage edges on CUDA
    meter = meter_of(check)
    if meter is not None:  # `overall`: the work priced once the pyramid is known
        meter.plan(pyramid.geometry, options.mode, n_max, float(options.alpha), budget["text_tokens"],
                   cfg.thumbnail_tokens, (len(model.rfm.layers), len(model.llm.model.layers)),
                   int(options.max_new_tokens), budget["max_length"], base_pass_pixels(pyramid), options.max_levels,
                   exact=hasattr(pyramid, "source_pixels"), gridded=gridded_levels(pyramid))
    beat = meter.beat if meter is not None else None
    with torch.inference_mode(), model.float16_rotary(released_numerics), cancel_between_layers(model, should_stop, beat):
        check("encode", None, 0.0, "encoding the thumbnail")
        if meter is not None:
            meter.reading(pyramid)
            meter.start("thumbnail")
        t0 = clock.now()
        thumbnail = encoder.thumbnail()
        timings["thumbnail"] = clock.now() - t0
        scorer = RfmScorer(model, prompt, thumbnail)
        if meter is not None:
            meter.encoder, meter.scorer = encoder, scorer
        t0 = clock.now()
        result = run_focus(
            pyramid.geometry,
            options.mode,
            Metered(meter, "tiles", encoder),
            Metered(meter, "score", scorer),
            alpha=float(options.alpha),
            n_max=n_max,
            max_levels=options.max_levels,
            check=check,
            thumbnail_tokens=cfg.thumbnail_tokens,
            vision_budget=budget["vision_budget"],
            pass_limit=min(budget["positions"], budget["rfm_pass_tokens"]) - budget["text_tokens"] - cfg.thumbnail_tokens - 1,
        )
        timings["encode"] = encoder.seconds
        timings["focus"] = scorer.seconds
        timings["select"] = clock.now() - t0 - encoder.seconds - scorer.seconds
        seq = final_sequence(model, prompt, thumbnail, result)
        if result.canvas is not None:
            result.canvas.feats = None  # generation needs only the sequence
        if seq.length > budget["max_length"]:  # fit_budget guarantees it; never cut text silently
            raise AssertionError(f"sequence of {seq.length} tokens exceeds {budget['max_length']}")
        check("generate", None, 0.0, f"answering from {seq.length} tokens")
        if meter is not None:
            meter.start("llm")
        t0 = clock.now()
        answer, _ = model.generate(seq, engine.tokenizer, int(options.max_new_tokens), should_stop=should_stop,
                                   config_eos_only=options.mode == "released")
        timings["generate"] = clock.now() - t0
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled during generation")
    return Run(result, answer, seq.length, budget, encoder, timings, n_max)
