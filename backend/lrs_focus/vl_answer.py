"""Algorithm 1 on a stock Qwen2.5-VL / Qwen3-VL: attention focus per level, tiles to the answer.

The pyramid, `focus.run_focus`, the trace and the feature cache are the method's own; this module
supplies the two callables the algorithm needs for these families and the answer stage:

    score(canvas)  one prompt [thumbnail][caption, tile]... [question]; the focus layer's attention of
                   the last prompt token to each tile token (model/qwen_vl.py). The prefix (everything
                   before the question) is kept in the feature cache, keyed by the view, level, tiles
                   and layer, so a follow-up question about the same view runs only its own tokens.
    answer         the thumbnail plus the tiles holding the kept tokens of the last scored level, each
                   with a caption saying where it lies, best-scored first into the sequence budget
                   (the text is never cut; tiles that do not fit are dropped and counted), then shown
                   to the model in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import BadOptions, Cancelled
from .features import TileEncoder, ViewKey
from .focus import Canvas, FocusResult, LevelRecord, run_focus
from .trace import tile_scores
from .model.prompts import refuse_bad_question
from .model.qwen_vl import Prompt, PrefixCache, QwenVLFocusModel
from .options import AskOptions, StopFn
from . import pass_memory
from .question_run import Run, cancel_between_layers
from .stage_clock import clock_of
from .work_meter import Metered, meter_of


def tile_caption(where: str) -> str:
    """The short text before each tile image: where it lies in the asked view."""
    return f"Detail of the {where} of the image:"


def where_words(window: Sequence[float], width: float, height: float) -> str:
    """'top-left', 'centre', 'bottom' ... from a window's centre within a width x height view."""
    x0, y0, x1, y1 = (float(v) for v in window)
    cx, cy = (x0 + x1) / 2 / max(width, 1e-9), (y0 + y1) / 2 / max(height, 1e-9)
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    return "-".join(p for p in (row, col) if p) or "centre"


@dataclass
class VLQuestion:
    """The question as checked once: its text and what the prompt costs around the images."""

    text: str
    text_tokens: int  # template + question, without image tokens


def check_question(model: QwenVLFocusModel, question: str, thumb_grid: tuple[int, int, int]) -> VLQuestion:
    refuse_bad_question(model.tokenizer, question)
    prompt = model.build_prompt([(None, thumb_grid)], question)
    image_tokens = len(prompt.ids) - int(np.count_nonzero(np.asarray(prompt.ids) != model.image_token_id))
    return VLQuestion(question, len(prompt.ids) - image_tokens)


WHERE = [f"{r}-{c}".strip("-") or "centre" for r in ("top", "", "bottom") for c in ("left", "", "right")]


def caption_tokens(model: QwenVLFocusModel) -> int:
    """Tokens one tile adds besides its image tokens (caption + vision start/end): the most any of the
    nine captions takes, so that a budget counted with it is never exceeded."""
    one = len(model.build_prompt([(None, (1, 2, 2))], "q").ids)
    return max(len(model.build_prompt([(None, (1, 2, 2)), (tile_caption(w), (1, 2, 2))], "q").ids) - one - 1
               for w in WHERE)


class AttentionScorer:
    """The `score` callable of `focus.run_focus` for these families; times itself."""

    def __init__(self, model: QwenVLFocusModel, question: str, thumbnail: torch.Tensor, thumb_grid: tuple,
                 geometry: Any, relative: bool, layer: int | None, heads: list[int] | None,
                 cache: Any = None, view: Any = None, limits: dict[str, int] | None = None):
        self.model, self.question, self.thumbnail, self.thumb_grid = model, question, thumbnail, thumb_grid
        self.limits = limits  # trace.budget: positions and rfm_pass_tokens bound every focus pass
        self.geometry, self.relative, self.layer, self.heads = geometry, relative, layer, heads
        self.cache, self.view = cache, view
        self.seconds = 0.0
        self.prefix_hits = 0
        self.max_tokens = 0  # longest focus prompt run
        self.token_layers = 0  # tokens x layers run (the work meter's rate)

    def images(self, level: int, tiles: list[tuple[int, int]]) -> list[tuple[str | None, tuple[int, int, int]]]:
        tile_grid = self.model.grid_for(self.geometry.cfg.tile_size, self.geometry.cfg.tile_size)
        geo = self.geometry
        return [(None, self.thumb_grid)] + [
            (tile_caption(where_words(geo.tile_window(level, r, c), geo.width, geo.height)), tile_grid)
            for r, c in tiles]

    def refuse_too_long(self, n: int, canvas: Canvas) -> None:
        """A pass the zoom stop and the all-tiles cap could not avoid (paper mode's base level, all-tiles'
        coarsest level) is refused with the figures rather than run past the positions or memory."""
        lim = self.limits
        if lim is None or n <= min(lim["positions"], lim.get("rfm_pass_tokens", n)):
            return
        what = f"the focus pass over {len(canvas.tiles)} tiles of level {canvas.level}"
        if n > lim["positions"]:
            raise BadOptions(f"{what} needs {n} tokens, past the model's {lim['positions']} positions")
        raise BadOptions(pass_memory.refusal(what, n, lim, "rfm_pass_tokens"))

    def _prefix(self, prompt: Prompt, feats: list[torch.Tensor], canvas: Canvas) -> PrefixCache:
        layer = self.model._layer(self.layer)
        key = (self.view, "prefix", canvas.level, tuple(canvas.tiles), layer)
        if self.cache is not None and self.view is not None:
            packed = self.cache.get(key)
            if packed is not None:
                self.prefix_hits += 1
                return unpack_prefix(self.model, packed, prompt.prefix_length)
        prefix = self.model.prefix_cache(prompt, feats, layer)
        if self.cache is not None and self.view is not None:
            self.cache.put(key, pack_prefix(prefix))
        return prefix

    def __call__(self, canvas: Canvas) -> np.ndarray:
        clock = clock_of(self.model)
        t0 = clock.now()
        t = canvas.feats.shape[1]
        prompt = self.model.build_prompt(self.images(canvas.level, canvas.tiles), self.question)
        self.refuse_too_long(len(prompt.ids), canvas)
        self.max_tokens = max(self.max_tokens, len(prompt.ids))
        feats = [self.thumbnail] + [f.flatten(0, 1) for f in canvas.feats]
        hits = self.prefix_hits
        prefix = self._prefix(prompt, feats, canvas)
        scores = self.model.focus_map(prompt, feats, self.relative, prefix, self.layer, self.heads)
        ran = len(prompt.ids) - (prompt.prefix_length if self.prefix_hits > hits else 0)
        self.token_layers += ran * (self.model._layer(self.layer) + 1) * (2 if self.relative else 1)
        per_tile = scores[self.thumbnail.shape[0]:].view(len(canvas.tiles), t, t).cpu().double().numpy()
        out = np.zeros(canvas.size, dtype=np.float64)
        sel = np.flatnonzero(canvas.tile >= 0)
        origin = np.asarray(canvas.tiles, dtype=np.int64).reshape(-1, 2)[canvas.tile[sel]] * t
        out[sel] = per_tile[canvas.tile[sel], canvas.row[sel] - origin[:, 0], canvas.col[sel] - origin[:, 1]]
        self.seconds += clock.now() - t0
        return out


def pack_prefix(prefix: PrefixCache) -> torch.Tensor:
    """Keys and values of the filled layers as one tensor (layers, 2, 1, kv_heads, n, head_dim)."""
    layers = [lay for lay in prefix.cache.layers if getattr(lay, "is_initialized", True) and lay.keys is not None]
    return torch.stack([torch.stack([lay.keys, lay.values]) for lay in layers])


def unpack_prefix(model: QwenVLFocusModel, packed: torch.Tensor, length: int) -> PrefixCache:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.hf.config.text_config)
    packed = packed.to(model.device)
    for i in range(packed.shape[0]):
        cache.update(packed[i, 0], packed[i, 1], i)
    return PrefixCache(cache, length)


@dataclass
class VLAnswer:
    answer: str
    sequence_tokens: int
    llm_vision_tokens: int
    tiles_sent: int


def answer_tiles(model: QwenVLFocusModel, scorer: AttentionScorer, result: FocusResult, vision_budget: int,
                 max_new_tokens: int, should_stop: Any, check: Any, answer_input: str = "tiles",
                 overhead: int | None = None, remote: Any = None) -> VLAnswer:
    """Thumbnail + the tiles holding kept tokens (whole, or only their kept tokens with `answer_input`
    "tokens"), best-scored tile first into the budget, shown in raster order; then the answer.

    `vision_budget`: tokens left for tiles once the text and the thumbnail are counted. Updates
    `result` (keep, the last record's kept mask, vision_tokens_dropped) to what the model read.
    `remote`: a `RemoteAnswer` sends the same images and question to an answer server instead."""
    feats: list[torch.Tensor] = [scorer.thumbnail]
    images: list[tuple[str | None, tuple[int, int, int]]] = [(None, scorer.thumb_grid)]
    keep_lists: list[torch.Tensor] = [torch.arange(scorer.thumbnail.shape[0])]
    sent: list[int] = []
    canvas = result.canvas
    if canvas is not None:
        if not result.records:
            result.records.append(LevelRecord(canvas.level, (0, 0), canvas.skeleton()))
        rec = result.records[-1]
        t = canvas.feats.shape[1]
        is_tok = canvas.tile >= 0
        kept_tok = np.zeros(canvas.size, dtype=bool)
        kept_tok[result.keep] = True
        kept_tok &= is_tok
        candidates = sorted({int(i) for i in canvas.tile[kept_tok]})
        overhead = caption_tokens(model) if overhead is None else overhead
        cost = {i: (int(np.count_nonzero(kept_tok & (canvas.tile == i))) if answer_input == "tokens" else t * t)
                + overhead for i in candidates}
        if sum(cost.values()) > vision_budget and rec.scores is None:  # all-tiles: scored only to drop tiles
            check("focus", canvas.level, 0.0, f"scoring level {canvas.level} to fit the sequence budget")
            rec.scores = scorer(canvas)
            result.rfm_vision_tokens.append(scorer.thumbnail.shape[0] + canvas.size)
        score = tile_scores(rec, "sum") if rec.scores is not None else np.zeros(len(canvas.tiles))
        order = sorted(candidates, key=lambda i: (-score[i], canvas.tiles[i]))
        used = 0
        for i in order:
            if used + cost[i] > vision_budget:
                break
            used += cost[i]
            sent.append(i)
        sent.sort()  # raster order
        dropped = np.isin(canvas.tile, [i for i in candidates if i not in set(sent)])
        if answer_input == "tokens":
            keep_mask = kept_tok & np.isin(canvas.tile, sent)
        else:
            keep_mask = is_tok & np.isin(canvas.tile, sent)
        result.keep = np.flatnonzero(keep_mask)
        result.vision_tokens_dropped = int(np.count_nonzero(kept_tok & dropped))
        rec.kept = keep_mask
        images += scorer.images(canvas.level, [canvas.tiles[i] for i in sent])[1:]
        origin = np.asarray(canvas.tiles, dtype=np.int64).reshape(-1, 2)
        for i in sent:
            feats.append(canvas.feats[i].flatten(0, 1))
            entries = np.flatnonzero(keep_mask & (canvas.tile == i))
            local = (canvas.row[entries] - origin[i, 0] * t) * t + (canvas.col[entries] - origin[i, 1] * t)
            keep_lists.append(torch.as_tensor(np.sort(local), dtype=torch.long))
    prompt = model.build_prompt(images, scorer.question)
    check("generate", None, 0.0, f"answering from {len(prompt.ids)} tokens ({len(sent)} tiles)")
    vision = int(np.count_nonzero(np.asarray(prompt.ids) == model.image_token_id))
    if remote is not None:
        tiles = [canvas.tiles[i] for i in sent] if canvas is not None else []
        answer = remote.answer(images, canvas.level if canvas is not None else 0, tiles, scorer.question, prompt,
                               max_new_tokens, should_stop)
        return VLAnswer(answer, len(prompt.ids), vision, len(sent))
    if answer_input == "tokens":
        answer, _, n_tokens = model.generate_pruned(prompt, feats, keep_lists, max_new_tokens, should_stop=should_stop)
        vision = int(sum(k.numel() for k in keep_lists))
    else:
        answer, _ = model.generate(prompt, feats, max_new_tokens, should_stop=should_stop)
        n_tokens = len(prompt.ids)
    return VLAnswer(answer, n_tokens, vision, len(sent))


def check_options(model: QwenVLFocusModel, options: Any) -> None:
    """What these families cannot do, refused in words before anything is read."""
    if options.mode == "released":
        raise BadOptions(f"released mode is the released LLaVA + RFM checkpoint's; {model.config.family} "
                         "takes --mode paper, thumbnail or all-tiles")
    if options.pixels == "exact":
        raise BadOptions(f"--pixels exact is the released CLIP preprocessing; {model.config.family} reads its "
                         "tiles with GDAL and normalises them with its own image processor (--pixels gdal)")
    if options.focus == "rfm":
        raise BadOptions(f"{model.config.family} has no Region Focus Module: use --focus attention or relative")
    if options.focus_layer is not None and not 0 <= int(options.focus_layer) < model.config.num_layers:
        raise BadOptions(f"--focus-layer must be in 0..{model.config.num_layers - 1} for this model, "
                         f"not {options.focus_layer}")
    heads = int(model.hf.config.text_config.num_attention_heads)
    bad = [h for h in (options.focus_heads or []) if not 0 <= int(h) < heads]
    if bad:
        raise BadOptions(f"--focus-heads {bad} outside 0..{heads - 1} (this model has {heads} heads)")


def vl_budget(model: QwenVLFocusModel, question: str, options: AskOptions) -> dict[str, int]:
    """The sequence budget of a Qwen-VL answer: the text and a full-size thumbnail never cut; the rest
    is for tiles. A question that does not fit with the thumbnail is refused."""
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


def vl_within_memory(model: QwenVLFocusModel, budget: dict[str, int], focus_layer: int | None,
                     local_answer: bool = True) -> dict[str, int]:
    """`vl_budget` bounded by memory too (pass_memory.vl_memory_limits), as LLaVA's `within_memory`:
    focus passes by `rfm_pass_tokens` (the run stops zooming or caps all-tiles before; a pass it cannot
    avoid is refused with the figures), the answer by `llm_pass_tokens` (tiles drop first; refused
    with the figures when the text and thumbnail alone do not fit). An answer server's memory is its
    own: with one, the answer keeps the positions bound only."""
    mem = pass_memory.vl_memory_limits(model, model._layer(focus_layer))
    budget = {**budget, **mem}
    fixed = budget["max_length"] - budget["vision_budget"]
    if local_answer:
        if mem["llm_pass_tokens"] < fixed:
            raise BadOptions(pass_memory.refusal("the answer pass for the text and thumbnail", fixed, mem,
                                                 "llm_pass_tokens"))
        budget["vision_budget"] = min(budget["max_length"], mem["llm_pass_tokens"]) - fixed
    return budget


def answer_length(budget: dict[str, int], local_answer: bool) -> int:
    """The longest answer sequence: max_length, and the memory's `llm_pass_tokens` when answered here."""
    return min(budget["max_length"], budget["llm_pass_tokens"]) if local_answer else budget["max_length"]


def run_question_vl(engine: Any, pyramid: Any, question: str, options: AskOptions, check, should_stop: StopFn | None,
                    key: ViewKey | None = None) -> Run:
    """`run_question` for Qwen2.5-VL / Qwen3-VL: attention focus per level, thumbnail + kept tiles."""
    model: QwenVLFocusModel = engine.model
    cfg = model.config
    check_options(model, options)
    local_answer = getattr(engine, "answer_server", None) is None
    budget = vl_within_memory(model, vl_budget(model, question, options), options.focus_layer, local_answer)
    longest = answer_length(budget, local_answer)
    n_max = int(options.n_max or cfg.n_max)
    cache = getattr(engine, "cache", None)
    encoder = TileEncoder(model, pyramid, key, cache, check)
    timings: dict[str, float] = {}
    clock = clock_of(model)  # synchronised stage edges on CUDA
    geo = pyramid.geometry
    meter = meter_of(check)
    if meter is not None:  # `overall`: the work priced once the pyramid is known; the focus pass runs
        # layers 0..L of the LLM, a tile is about tokens_per_tile^2 tokens plus its caption
        meter.plan(geo, options.mode, n_max, float(options.alpha), budget["text_tokens"],
                   cfg.tokens_per_tile ** 2, (model._layer(options.focus_layer) + 1, cfg.num_layers),
                   int(options.max_new_tokens), longest, 0, options.max_levels)
    beat = meter.beat if meter is not None else None
    with torch.inference_mode(), cancel_between_layers(model, should_stop, beat):
        check("encode", None, 0.0, "encoding the thumbnail")
        if meter is not None:
            meter.start("thumbnail")
        t0 = clock.now()
        thumbnail = encoder.thumbnail()
        timings["thumbnail"] = clock.now() - t0
        thumb_grid = model.grid_for(*geo.thumbnail_size)
        scorer = AttentionScorer(model, question, thumbnail, thumb_grid, geo, options.focus == "relative",
                                 options.focus_layer, options.focus_heads, cache, key, budget)
        if meter is not None:
            meter.encoder, meter.scorer = encoder, scorer
        t0 = clock.now()
        per_tile = cfg.tokens_per_tile ** 2
        overhead = caption_tokens(model)  # once per question: ten tokenizations
        # a focus pass is text + thumbnail + at most (caption + 256 tokens) per tile: bounded by the
        # positions and the memory's rfm_pass_tokens
        room = min(budget["positions"], budget["rfm_pass_tokens"]) - budget["text_tokens"] - int(thumbnail.shape[0])
        result = run_focus(geo, options.mode, Metered(meter, "tiles", encoder), Metered(meter, "score", scorer),
                           alpha=float(options.alpha), n_max=n_max,
                           max_levels=options.max_levels, check=check, thumbnail_tokens=int(thumbnail.shape[0]),
                           vision_budget=None, pass_limit=room,
                           pass_entries=lambda level, tiles: len(tiles) * (per_tile + overhead))
        timings["encode"] = encoder.seconds
        timings["select"] = clock.now() - t0 - encoder.seconds - scorer.seconds
        t0, s0 = clock.now(), scorer.seconds
        thumb_tokens = int(thumbnail.shape[0])  # the processor may upscale thin views past one tile's tokens
        vision_budget = longest - budget["text_tokens"] - thumb_tokens
        if vision_budget < 0:
            if longest < budget["max_length"]:
                raise BadOptions(pass_memory.refusal("the answer pass for the text and thumbnail",
                                                     budget["text_tokens"] + thumb_tokens, budget, "llm_pass_tokens"))
            raise BadOptions(f"the question and prompt take {budget['text_tokens']} tokens; with this view's "
                             f"{thumb_tokens}-token thumbnail they exceed the sequence limit of {budget['max_length']}")
        budget["vision_budget"] = vision_budget
        remote = None
        if getattr(engine, "answer_server", None) is not None:
            from .remote_stage import RemoteAnswer

            remote = RemoteAnswer(engine.answer_server, model, pyramid, key)
        if meter is not None:
            meter.start("llm")
        vl = answer_tiles(model, scorer, result, vision_budget, int(options.max_new_tokens), should_stop, check,
                          options.answer_input, overhead, remote)
        timings["focus"] = scorer.seconds
        timings["generate"] = clock.now() - t0 - (scorer.seconds - s0)
        if result.canvas is not None:
            result.canvas.feats = None
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled during generation")
    if vl.sequence_tokens > longest:
        raise AssertionError(f"sequence of {vl.sequence_tokens} tokens exceeds {longest}")
    result.notes["focus"] = {"signal": options.focus or "attention",
                             "layer": model._layer(options.focus_layer),
                             "heads": list(options.focus_heads) if options.focus_heads else "all",
                             "prefix_reused": scorer.prefix_hits, "tiles_sent": vl.tiles_sent}
    return Run(result, vl.answer, vl.sequence_tokens, budget, encoder, timings, n_max, vl.llm_vision_tokens,
               scorer.max_tokens, remote.source() if remote is not None else None)
