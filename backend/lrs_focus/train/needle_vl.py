"""The needle check for a stock Qwen2.5-VL: does the model's own attention find the dot, and does
coarse-to-fine focus from that attention alone (no RFM) answer what the thumbnail cannot?

`lrs-focus train needle --family qwen2.5-vl`. Same scenes, seeds and held-out rasters as the LLaVA
check (`needle.py`, `synthetic.py`); what differs:

1. The model is `Qwen2_5_VLForConditionalGeneration` at toy size (`tiny_vl_parts`) with a 7 px
   vision patch and the 2 x 2 merge: 14 px LLM tokens, the token of the LLaVA needle, so a tile is
   16 x 14 = 224 px and the base level of a 1344 px raster is 672 px (3 tiles). The tokenizer is the
   toy byte-level BPE of `model/tiny.py` plus the Qwen-VL special tokens (the needle is about focus,
   not the vocabulary; the 151k Qwen2 vocabulary would make the output layer most of the model).
2. Training: the LM loss of the stock forward (`labels`), nothing else. A training example is one
   scene image at its own size (336-672 px, the processor's grid) and its question, rendered with the
   checkpoint's chat template exactly as `QwenVLFocusModel.build_prompt` renders a prompt; the answer
   tokens and the closing <|im_end|> are labelled.
3. Saved in the hub layout (model, tokenizer with its chat template, image processor) and loaded
   with `Engine(dir)`, as a user's checkpoint is.
4. Recall: for every LLM layer, the fraction of held-out questions for which some base-level token
   overlapping the dot's pixel box is among the top 25 % of the focus map (last prompt token's
   attention, heads averaged; prompt = thumbnail + the 9 base tiles + question, as the engine's first
   level), and the chance of that for a uniformly random top 25 %. The layer used for answering is
   chosen on separate validation scenes (seeds no other split uses), never on the held-out ones.
5. Accuracy and LLM vision tokens per mode through `Engine.ask` with `--focus attention` at the
   chosen layer: thumbnail, base tiles (all-tiles of the base level), all tiles, coarse-to-fine.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .data import load_conversations
from .losses import chance_of_hit, top_fraction_hits
from .needle import TEST_SEED_OFFSET, _Clock, _dataset, _jsonable, normalise_answer, run_in_workdir
from .synthetic import SceneSpec
from .trainer import Item, expand

VAL_SEED_OFFSET = 2_000_000  # validation scenes (focus-layer choice): seeds neither training nor test use
QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass
class VLNeedleConfig:
    seed: int = 0
    family: str = "qwen2.5-vl"
    train_images: int = 2000
    val_images: int = 30
    test_images: int = 200
    # 3000 steps (about 16 CPU minutes at 2 threads): the first run whose attention finds the dot
    # (recall 0.825 vs chance 0.386); 1100 and 1600 steps stayed near chance (docs/training.md)
    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.01
    patch_size: int = 7  # x 2 merge = 14 px LLM tokens: tiles of 224 px
    # training scenes are one tile or less (168-224 px: at most 16 x 16 LLM tokens, 0.7 s per step at
    # batch 8; 336-672 px scenes, 2304 tokens each, took 16 s per step). Relative to a 224 px tile the
    # rings span 7-45 %, the held-out base tiles show rings of 25-36 % of a tile (dot about 5 px) and
    # the zoomed level 50-72 % (dot 9-13 px): every scale the model must find or read occurs in training
    train_spec: SceneSpec = SceneSpec(size_range=(168, 224), ring_range=(0.07, 0.45), dot_ratio=(0.08, 0.6),
                                      n_loose_dots=(0, 2))
    test_spec: SceneSpec = SceneSpec()  # the LLaVA needle's held-out rasters: 1344 px, base level 672 px
    alpha: float = 0.25
    max_levels: Optional[int] = 3
    n_max: Optional[int] = None
    max_new_tokens: int = 4
    # base_tiles (all-tiles of the base level) is measured when listed; left out by default for time
    modes: tuple[str, ...] = ("thumbnail", "all_tiles", "coarse_to_fine")
    threads: int = 1
    log_every: int = 100
    # wall-clock cap of the accuracy stage (None: every held-out question); when it is reached, the
    # accuracies are over the questions answered so far and `accuracy_n` says how many
    eval_seconds: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: Any) -> "VLNeedleConfig":
        """Seconds, for tests and smoke runs: the figures mean nothing at this size."""
        small = dict(train_images=8, val_images=2, test_images=2, steps=3, batch_size=2, log_every=1,
                     test_spec=SceneSpec(size_range=(672, 672)))
        small.update(kw)
        return cls(**small)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MODES = {"thumbnail": ("thumbnail", None), "base_tiles": ("all-tiles", 1), "all_tiles": ("all-tiles", None),
         "coarse_to_fine": ("paper", None)}


def needle_tokenizer() -> Any:
    """The toy byte-level BPE of `model/tiny.py` with the Qwen-VL special tokens; eos <|im_end|>."""
    from ..model.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(QWEN_VL_TOKENS, special_tokens=True)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def build_model(cfg: VLNeedleConfig) -> Any:
    """A `QwenVLFocusModel` around a fresh toy checkpoint of the real class (random weights)."""
    from ..model.qwen_vl import QwenVLFocusModel
    from ..model.qwen_vl_loading import focus_config, tiny_vl_parts

    tok = needle_tokenizer()
    hf, processor, template = tiny_vl_parts(cfg.family, tok, seed=cfg.seed, patch_size=cfg.patch_size)
    tok.chat_template = template
    return QwenVLFocusModel(hf, tok, processor, focus_config(cfg.family, hf, processor, template))


def training_batch(model: Any, items: list[Item]) -> dict[str, torch.Tensor]:
    """Stock-forward inputs of one image + question per item, answer (+ <|im_end|>) labelled."""
    from PIL import Image

    tok = model.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    pil = [Image.open(it.sample.image).convert("RGB") for it in items]
    px = model.image_processor(images=pil, return_tensors="pt")
    grids = px["image_grid_thw"]
    seqs, labels = [], []
    for it, grid in zip(items, grids.tolist()):
        prompt = model.build_prompt([(None, tuple(grid))], it.question)
        answer = tok(it.answer, add_special_tokens=False)["input_ids"] + [end]
        seqs.append(prompt.ids + answer)
        labels.append([-100] * len(prompt.ids) + answer)
    n = max(len(s) for s in seqs)
    pad = int(tok.pad_token_id)
    ids = torch.tensor([s + [pad] * (n - len(s)) for s in seqs], dtype=torch.long)
    lab = torch.tensor([s + [-100] * (n - len(s)) for s in labels], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab, "pixel_values": px["pixel_values"],
            "image_grid_thw": grids, "mm_token_type_ids": (ids == model.image_token_id).to(torch.int)}


def chance_lm_loss(tokenizer: Any, colours: tuple[str, ...]) -> float:
    """The stock LM loss (mean over labelled tokens) of a model that knows the answer format but
    guesses the colour uniformly: ln(K) nats per example over the mean labelled length (answer
    tokens + <|im_end|>). With the toy BPE "red" is 1 token and "blue"/"black"/"yellow" 3 ("blue"
    and "black" share two), so chance is ln 4 / 3.5 = 0.396: a loss above it has learned nothing
    about the dot."""
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in colours]
    return math.log(len(colours)) / (sum(lengths) / len(lengths))


def train_lm(model: Any, items: list[Item], cfg: VLNeedleConfig, progress: bool = False) -> list[dict[str, float]]:
    """AdamW, linear warmup then cosine decay; LM loss of the stock forward only."""
    hf = model.hf
    hf.train()
    decay = [p for n, p in hf.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in hf.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warm = max(1, int(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = random.Random(cfg.seed)
    history: list[dict[str, float]] = []
    running, t0 = 0.0, time.perf_counter()
    for step in range(cfg.steps):
        batch = training_batch(model, rng.sample(items, min(cfg.batch_size, len(items))))
        loss = hf(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            k = (step % cfg.log_every) + 1
            history.append({"step": step + 1, "loss": running / k, "seconds": time.perf_counter() - t0})
            if progress:
                print(f"step {step + 1}/{cfg.steps} loss {running / k:.4f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            running = 0.0
    hf.eval()
    return history


def save_hub(model: Any, directory: Path) -> Path:
    """The hub layout `Engine(dir)` loads: config + safetensors, tokenizer with chat template, processor."""
    directory.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(str(directory))
    model.tokenizer.save_pretrained(str(directory))
    model.image_processor.save_pretrained(str(directory))
    return directory


@torch.no_grad()
def attention_recall(model: Any, items: list[Item], fraction: float = 0.25) -> dict[str, Any]:
    """Per layer: fraction of questions whose dot has a base-level token among the top `fraction` of
    the focus map over the base level's tile tokens (the engine's first level: thumbnail + 9 base
    tiles + question); and the chance of that. {"by_layer": {layer: r}, "chance", "n"}."""
    from ..answer import pyramid_config
    from ..focus import build_canvas
    from ..features import TileEncoder
    from ..pyramid import ImagePyramid
    from ..raster import RasterSource
    from ..vl_answer import AttentionScorer

    layers = range(model.config.num_layers)
    hits = {layer: 0 for layer in layers}
    chance, n = 0.0, 0
    noop = lambda *a: None  # noqa: E731
    for item in items:
        boxes = item.sample.extra.get("boxes") or []
        if not boxes:
            continue
        src = RasterSource.open(str(item.sample.image))
        pyr = ImagePyramid(src, pyramid_config(model))
        geo = pyr.geometry
        encoder = TileEncoder(model, pyr, None, None, noop)
        thumb = encoder.thumbnail()
        thumb_grid = model.grid_for(*geo.thumbnail_size)
        base = geo.levels[0]
        tiles = [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])]
        canvas = build_canvas(geo, base.index, tiles, encoder, all_newlines=False, keep_gaps=False)
        cand = ~canvas.is_newline
        target = np.zeros(canvas.size, dtype=bool)
        for i in np.flatnonzero(cand):
            x0, y0, x1, y1 = geo.token_window_float(base, int(canvas.row[i]), int(canvas.col[i]))
            target[i] = any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)
        t = torch.from_numpy(target[cand])
        for layer in layers:
            scorer = AttentionScorer(model, item.question, thumb, thumb_grid, geo, False, layer, None)
            scores = torch.from_numpy(scorer(canvas)[cand])
            hits[layer] += top_fraction_hits(scores, t, fraction)
        chance += chance_of_hit(int(cand.sum()), int(target.sum()), fraction)
        n += 1
    d = max(n, 1)
    return {"by_layer": {str(k): v / d for k, v in hits.items()}, "chance": chance / d, "n": n}


def evaluate_modes(checkpoint: Path, items: list[Item], cfg: VLNeedleConfig, layer: int) -> dict[str, Any]:
    """Accuracy and vision tokens per mode through `Engine.ask`, attention focus at `layer`."""
    from ..engine import AskOptions, Engine

    engine = Engine(str(checkpoint), device="cpu")
    modes = {k: MODES[k] for k in cfg.modes}
    correct = {k: 0 for k in modes}
    tokens: dict[str, list[int]] = {k: [] for k in modes}
    encoded: dict[str, list[int]] = {k: [] for k in modes}
    seconds = {k: 0.0 for k in modes}
    stopped: list[Any] = []
    examples = []
    start = time.perf_counter()
    done = 0
    for item in items:
        if cfg.eval_seconds is not None and time.perf_counter() - start > cfg.eval_seconds:
            break
        done += 1
        row = {"id": item.sample.id, "truth": item.answer}
        for key, (mode, levels) in modes.items():
            opts = AskOptions(mode=mode, alpha=cfg.alpha, n_max=cfg.n_max, max_levels=levels or cfg.max_levels,
                              max_new_tokens=cfg.max_new_tokens, focus="attention", focus_layer=layer)
            t0 = time.perf_counter()
            res = engine.ask(str(item.sample.image), item.question, opts)
            seconds[key] += time.perf_counter() - t0
            correct[key] += normalise_answer(res["answer"]) == normalise_answer(item.answer)
            tokens[key].append(int(res["counts"]["llm_vision_tokens"]))
            encoded[key].append(int(res["counts"]["tiles_encoded"]))
            row[key] = res["answer"]
            if key == "coarse_to_fine":
                stopped.append(res["trace"].get("stopped_at"))
        examples.append(row)
    n = max(done, 1)
    return {
        "accuracy_n": done,
        "accuracy": {k: correct[k] / n for k in modes},
        "llm_vision_tokens": {k: float(np.mean(v)) if v else 0.0 for k, v in tokens.items()},
        "tiles_encoded": {k: float(np.mean(v)) if v else 0.0 for k, v in encoded.items()},
        "coarse_to_fine_stopped_at": {str(lv): stopped.count(lv) for lv in sorted(set(stopped), key=str)},
        "seconds_per_question": {k: seconds[k] / n for k in modes},
        "examples": examples,
    }


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def run_needle_vl(cfg: VLNeedleConfig, workdir: Optional[str | Path] = None, progress: bool = False) -> dict[str, Any]:
    """Generate, train (LM loss), save in the hub layout, load with Engine, measure; the JSON document."""
    return run_in_workdir(_run, cfg, workdir, progress, "lrs-needle-vl-")


def _run(cfg: VLNeedleConfig, work: Path, progress: bool) -> dict[str, Any]:
    from ..model.qwen_vl import default_focus_layer

    clock = _Clock()
    train_seeds = range(cfg.seed * 100_000, cfg.seed * 100_000 + cfg.train_images)
    test_base = TEST_SEED_OFFSET + cfg.seed * 100_000
    val_base = VAL_SEED_OFFSET + cfg.seed * 100_000
    train_items = expand(load_conversations(_dataset(work, "train", train_seeds, cfg.train_spec)))
    val_items = expand(load_conversations(_dataset(work, "val", range(val_base, val_base + cfg.val_images),
                                                   cfg.test_spec)))
    test_items = expand(load_conversations(_dataset(work, "test", range(test_base, test_base + cfg.test_images),
                                                    cfg.test_spec)))
    clock.lap("data")
    _say(progress, f"data: {len(train_items)} training, {len(val_items)} validation, {len(test_items)} held-out")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    history = train_lm(model, train_items, cfg, progress)
    clock.lap("train")
    ckpt = save_hub(model, work / "checkpoint")

    from ..engine import Engine

    loaded = Engine(str(ckpt), device="cpu").model  # recall on the checkpoint as users load it
    _say(progress, "recall per layer (validation, then held-out)")
    val = attention_recall(loaded, val_items, cfg.alpha)
    layer = max(sorted(int(k) for k in val["by_layer"]), key=lambda k: (val["by_layer"][str(k)], -k))
    test = attention_recall(loaded, test_items, cfg.alpha)
    clock.lap("recall")
    _say(progress, f"focus layer {layer} (validation recall {val['by_layer']}); held-out {test['by_layer']}")
    ev = evaluate_modes(ckpt, test_items, cfg, layer)
    clock.lap("evaluate")
    clock.total()
    preset = default_focus_layer(cfg.family, loaded.config.num_layers)
    return {
        "family": cfg.family,
        "n_questions": len(test_items),
        "chance_top25": test["chance"],
        "attention_recall_top25": test["by_layer"][str(layer)],
        "focus_layer": layer,
        "attention_recall_top25_by_layer": test["by_layer"],
        "validation_recall_top25_by_layer": val["by_layer"],
        "validation_chance_top25": val["chance"],
        "default_focus_layer": preset,
        "accuracy": ev["accuracy"],
        "accuracy_n": ev["accuracy_n"],
        "llm_vision_tokens": ev["llm_vision_tokens"],
        "tiles_encoded": ev["tiles_encoded"],
        "coarse_to_fine_stopped_at": ev["coarse_to_fine_stopped_at"],
        "seconds_per_question": ev["seconds_per_question"],
        "n_train_questions": len(train_items),
        "chance_accuracy": 1.0 / len(cfg.test_spec.colours),
        "answer_counts": {c: sum(i.answer == c for i in test_items) for c in cfg.test_spec.colours},
        "model": {"class": type(model.hf).__name__, "patch_size": cfg.patch_size,
                  "token_px": loaded.config.token_px, "tile_px": loaded.config.tile_size,
                  "parameters": sum(p.numel() for p in model.hf.parameters()),
                  "vocabulary": len(model.tokenizer), "tokenizer": "toy byte-level BPE + Qwen-VL special tokens"},
        "training": {"lm": history, "lm_loss_at_answer_chance": chance_lm_loss(model.tokenizer, cfg.test_spec.colours)},
        "examples": ev["examples"][:8],
        "timings": clock.wall,
        "cpu_seconds": clock.cpu,
        "config": _jsonable(cfg.to_dict()),
    }
