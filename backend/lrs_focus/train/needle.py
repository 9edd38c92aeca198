"""The synthetic "needle" check: does the whole method work on a task we can verify?

Why: with random weights nothing about accuracy or focus can be shown. Here a tiny LVLM is
trained on CPU in minutes on seeded synthetic scenes, then evaluated on held-out rasters of
several thousand pixels a side, where the answer sits in one small object that the thumbnail
cannot resolve:

1. LVLM SFT (LM loss only, no RFM): the stand-in for the pretrained LVLM the paper starts from.
2. The RFM is initialised from the LLM's layers ([l0-1] + llm_layer_list); its recall is measured
   ("before").
3. SFT with LM loss + the paper's distillation loss (weight 1, first and last pairs); recall
   again ("after").
4. The checkpoint is saved in the released layout and loaded by `Engine`, which answers every
   held-out question with mode thumbnail, all-tiles and paper (coarse-to-fine, Algorithm 1): the
   method's own code path, not a re-implementation.

Recall: on the base level (thumbnail + base tiles, the training-time input), the fraction of
held-out questions for which some token whose pixel window overlaps the object's box is among the
top 25% of the RFM's scores (the paper-mode candidate set: tile tokens without newline tokens).
`chance` is the same probability for a uniformly random top 25%. Also measured at level 1 (the
second decision of coarse-to-fine with three levels), and for a control RFM that starts from an
untrained LLM's layers and is distilled alone: with a 4-layer LLM the paper's initialisation
already attends like its teacher, so only the control shows what distillation transfers.

Training scenes are small (300-400 px, cheap to make by the thousand) with objects from 10 px to a
fifth of the scene; held-out scenes are 2048-2560 px with 56-88 px objects (1-2 px in the
thumbnail, 4-7 px at the base level, 14-22 px at the finest level used). The model only ever
trains on the base level, so the object appearances it must read at the finer levels that
coarse-to-fine zooms into have to occur at base scale during training (multi-scale training), and
the large objects give the from-scratch LVLM a gradient towards reading colour at all (with only
needle-sized objects it memorised the training scenes and answered one colour on held-out ones).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .data import ImageViews, image_views, load_conversations
from .losses import chance_of_hit, top_fraction_hits
from .synthetic import SceneSpec, write_dataset
from .trainer import Item, TrainConfig, ViewCache, build_training_sequence, expand, pyramid_config, save_checkpoint, train

log = logging.getLogger(__name__)

TEST_SEED_OFFSET = 1_000_000  # held-out scenes never share a seed with training scenes


@dataclass
class NeedleConfig:
    seed: int = 0
    train_images: int = 1500
    test_images: int = 24
    lvlm_steps: int = 1500  # phase 1: LM loss only
    distill_steps: int = 400  # phase 3: LM + distillation
    control_steps: int = 400  # control: RFM from an untrained LLM's layers, distillation only (0: skip)
    recall_levels: int = 2  # recall at the base level and level 1 (the two decisions of max_levels 3)
    batch_size: int = 8
    lr: float = 1e-3  # phase 1 (2e-3 stalls at chance: every answer one colour)
    distill_lr: float = 3e-4  # LVLM during phase 3: keep what phase 1 learned
    rfm_lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.01
    family: str = "qwen2"
    # Training scenes are small (cheap: thousands in seconds) with objects from 10 px to 1/5 of the
    # scene: the big ones make the colour visible in many tokens, so the LM loss has a gradient
    # towards reading it at all (with only small objects the needle is ~1/200 of the vision
    # tokens, the tiny LVLM never finds it and memorises); the small ones (4-10 px at base scale)
    # teach it to pick one token out, which is what the held-out scenes need at every level.
    train_spec: SceneSpec = SceneSpec(size_range=(300, 400), object_size_range=(10, 70), n_objects=(1, 1), n_decoys=(0, 1))
    test_spec: SceneSpec = SceneSpec(size_range=(2048, 2560), object_size_range=(56, 88), n_objects=(1, 1), n_decoys=(1, 2))
    kinds: tuple[str, ...] = ("colour",)
    alpha: float = 0.25
    max_levels: Optional[int] = 3  # base, 1/8 and 1/4 of the original scale for the held-out sizes
    n_max: Optional[int] = None  # None: the model's default (80 for the Qwen2 build)
    max_new_tokens: int = 4

    @classmethod
    def quick(cls, **kw: Any) -> "NeedleConfig":
        """Seconds, for tests and smoke runs: the figures mean nothing at this size."""
        small = dict(train_images=6, test_images=2, lvlm_steps=4, distill_steps=4, control_steps=4, batch_size=2,
                     train_spec=SceneSpec(size_range=(500, 640), object_size_range=(20, 40), n_objects=(1, 1), n_decoys=(1, 1)),
                     test_spec=SceneSpec(size_range=(900, 1000), object_size_range=(24, 40), n_objects=(1, 1), n_decoys=(1, 1)))
        small.update(kw)
        return cls(**small)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_answer(text: str) -> str:
    """Lower case, first word, no punctuation ("Red." -> "red"; "grey"/"gray" unified)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    word = words[0] if words else ""
    return {"grey": "gray"}.get(word, word)


def _token_targets(views: Any, boxes: list[list[int]], level: Any = None) -> np.ndarray:
    """bool (rows, cols + 1): tile tokens of `level` (default: base) whose pixel window overlaps any box."""
    geo = views.geometry
    level = geo.levels[0] if level is None else level
    rows, cols = views.token_grid
    out = np.zeros((rows, cols + 1), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = geo.token_window_float(level, r, c)
            out[r, c] = any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)
    return out


def level_views(image: str | Path, pyramid_config: Any, level: int) -> Optional[tuple[ImageViews, Any]]:
    """Thumbnail + every tile of pyramid level `level` (0 = base), laid out like the training views.

    Why: coarse-to-fine decides twice with three levels (which base tokens to zoom into, then which
    level-1 tokens), and the held-out object is 4-7 px at the base but 7-11 px at level 1, so the
    RFM's recall is measured at both decision levels. None when the raster has no such level.
    """
    from ..pyramid import ImagePyramid
    from ..raster import RasterSource

    src = RasterSource.open(str(image))
    pyr = ImagePyramid(src, pyramid_config)
    geo = pyr.geometry
    if level >= len(geo.levels):
        return None  # a small raster has fewer levels
    lv = geo.levels[level]
    n_rows, n_cols = lv.grid
    tiles = np.stack([pyr.tile(lv, r, c) for r in range(n_rows) for c in range(n_cols)])
    return ImageViews(pyr.thumbnail(), tiles, (n_rows, n_cols), tuple(geo.token_grid(lv)), (src.height, src.width), geo), lv


@torch.no_grad()
def rfm_recall(model: Any, tokenizer: Any, items: list[Item], views: ViewCache, fraction: float = 0.25,
               level: int = 0) -> dict[str, float]:
    """Recall of the object's tokens among the RFM's top `fraction` at pyramid `level` (0 = base), and chance.

    The whole level is scored (thumbnail + all its tiles), not only the tiles coarse-to-fine reached;
    images without that level are skipped (`n` counts the measured ones).
    """
    hits, chance, n = 0, 0.0, 0
    for item in items:
        boxes = item.sample.extra.get("boxes") or []
        if not boxes:
            continue
        if level == 0:
            v, lv = views(item.sample.image), None
        else:
            found = level_views(item.sample.image, views.pyramid_config, level)
            if found is None:
                continue
            v, lv = found
        seq = build_training_sequence(model, tokenizer, v, item.question, None)
        scores = model.rfm_scores(seq).cpu()
        rows, cols = v.token_grid
        cand = torch.ones(rows, cols + 1, dtype=torch.bool)
        cand[:, cols] = False  # newline tokens are never candidates in paper mode
        target = torch.from_numpy(_token_targets(v, boxes, lv))
        hits += top_fraction_hits(scores[cand.flatten()], target[cand], fraction)
        chance += chance_of_hit(int(cand.sum()), int(target.sum()), fraction)
        n += 1
    return {"recall": hits / max(n, 1), "chance": chance / max(n, 1), "n": n}


def recall_by_level(model: Any, tokenizer: Any, items: list[Item], views: ViewCache, fraction: float,
                    levels: int) -> dict[str, dict[str, float]]:
    """{"base": {...}, "level1": {...}, ...} for the first `levels` pyramid levels."""
    return {("base" if i == 0 else f"level{i}"): rfm_recall(model, tokenizer, items, views, fraction, i)
            for i in range(levels)}


def distil_random_rfm(model: Any, tokenizer: Any, train_items: list[Item], test_items: list[Item], views: ViewCache,
                      cfg: "NeedleConfig", progress: bool = False) -> dict[str, Any]:
    """Control: a copy of the trained LVLM whose RFM starts from an untrained LLM's layers, then is
    distilled with the LLM frozen (RFM only, distillation loss only); recall before and after.

    Why: the paper's RFM starts as a copy of the LLM's own layers, and in a 4-layer LLM that copy
    already attends like its teacher, so "before vs after" cannot move; starting from layers that
    know nothing isolates what the distillation loss itself transfers from the teacher.
    """
    import copy

    from ..model.tiny import build_tiny

    control = copy.deepcopy(model)
    untrained, _ = build_tiny(cfg.family, seed=cfg.seed + 7)
    untrained.init_rfm_from_llm()
    control.rfm.load_state_dict(untrained.rfm.state_dict())
    del untrained
    before = recall_by_level(control, tokenizer, test_items, views, cfg.alpha, cfg.recall_levels)
    res = train(control, tokenizer, train_items,
                TrainConfig(steps=cfg.control_steps, batch_size=cfg.batch_size, lr=cfg.distill_lr, rfm_lr=cfg.rfm_lr,
                            warmup=cfg.warmup, weight_decay=cfg.weight_decay, train="rfm", init_rfm=False,
                            seed=cfg.seed + 2, log_every=max(1, cfg.control_steps // 10)),
                views=views, progress=progress)
    after = recall_by_level(control, tokenizer, test_items, views, cfg.alpha, cfg.recall_levels)
    return {"before": before, "after": after, "history": res.history}


def evaluate_modes(checkpoint: Path, items: list[Item], cfg: NeedleConfig) -> dict[str, Any]:
    """Accuracy and vision tokens per mode through `Engine.ask` (the product's own path)."""
    from ..engine import AskOptions, Engine

    engine = Engine(str(checkpoint), device="cpu")
    modes = {"thumbnail": "thumbnail", "all_tiles": "all-tiles", "coarse_to_fine": "paper"}
    correct = {k: 0 for k in modes}
    tokens: dict[str, list[int]] = {k: [] for k in modes}
    encoded: dict[str, list[int]] = {k: [] for k in modes}
    seconds = {k: 0.0 for k in modes}
    examples = []
    for item in items:
        row = {"id": item.sample.id, "question": item.question, "truth": item.answer}
        for key, mode in modes.items():
            opts = AskOptions(mode=mode, alpha=cfg.alpha, n_max=cfg.n_max, max_levels=cfg.max_levels,
                              max_new_tokens=cfg.max_new_tokens)
            t0 = time.perf_counter()
            res = engine.ask(str(item.sample.image), item.question, opts)
            seconds[key] += time.perf_counter() - t0
            ok = normalise_answer(res["answer"]) == normalise_answer(item.answer)
            correct[key] += ok
            tokens[key].append(int(res["counts"]["llm_vision_tokens"]))
            encoded[key].append(int(res["counts"]["tiles_encoded"]))
            row[key] = res["answer"]
        examples.append(row)
    n = max(len(items), 1)
    return {
        "accuracy": {k: correct[k] / n for k in modes},
        "llm_vision_tokens": {k: float(np.mean(v)) if v else 0.0 for k, v in tokens.items()},
        "tiles_encoded": {k: float(np.mean(v)) if v else 0.0 for k, v in encoded.items()},
        "seconds_per_question": {k: seconds[k] / n for k in modes},
        "examples": examples,
    }


def run_needle(cfg: NeedleConfig, workdir: Optional[str | Path] = None, progress: bool = False) -> dict[str, Any]:
    """Generate, train (LVLM, then RFM distillation), evaluate; returns the `train needle --json` document."""
    from ..model.tiny import build_tiny

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lrs-needle-")
        workdir = tmp.name
    work = Path(workdir)
    try:
        t0 = time.perf_counter()
        train_seeds = range(cfg.seed * 100_000, cfg.seed * 100_000 + cfg.train_images)
        test_base = TEST_SEED_OFFSET + cfg.seed * 100_000
        test_seeds = range(test_base, test_base + cfg.test_images)
        train_json = _dataset(work, "train", train_seeds, cfg.train_spec, cfg.kinds)
        test_json = _dataset(work, "test", test_seeds, cfg.test_spec, cfg.kinds)
        timings["data"] = time.perf_counter() - t0
        train_items = expand(load_conversations(train_json))
        test_items = expand(load_conversations(test_json))
        log.info("needle: %d training and %d held-out questions", len(train_items), len(test_items))

        torch.manual_seed(cfg.seed)
        model, tokenizer = build_tiny(cfg.family, seed=cfg.seed)
        views = ViewCache(pyramid_config(model))

        t0 = time.perf_counter()
        lvlm = train(model, tokenizer, train_items,
                     TrainConfig(steps=cfg.lvlm_steps, batch_size=cfg.batch_size, lr=cfg.lr, train="no-rfm",
                                 warmup=cfg.warmup, weight_decay=cfg.weight_decay,
                                 init_rfm=False, seed=cfg.seed, log_every=max(1, cfg.lvlm_steps // 10)),
                     views=views, progress=progress)
        timings["train_lvlm"] = time.perf_counter() - t0

        model.init_rfm_from_llm()
        before = recall_by_level(model, tokenizer, test_items, views, cfg.alpha, cfg.recall_levels)

        t0 = time.perf_counter()
        distill = train(model, tokenizer, train_items,
                        TrainConfig(steps=cfg.distill_steps, batch_size=cfg.batch_size, lr=cfg.distill_lr, rfm_lr=cfg.rfm_lr,
                                    warmup=cfg.warmup, weight_decay=cfg.weight_decay,
                                    train="all", init_rfm=False, seed=cfg.seed + 1,
                                    log_every=max(1, cfg.distill_steps // 10)),
                        views=views, progress=progress)
        timings["train_distill"] = time.perf_counter() - t0
        after = recall_by_level(model, tokenizer, test_items, views, cfg.alpha, cfg.recall_levels)

        control = None
        if cfg.control_steps > 0:
            t0 = time.perf_counter()
            control = distil_random_rfm(model, tokenizer, train_items, test_items, views, cfg, progress)
            timings["control"] = time.perf_counter() - t0

        ckpt = save_checkpoint(model, tokenizer, work / "checkpoint")
        t0 = time.perf_counter()
        ev = evaluate_modes(ckpt, test_items, cfg)
        timings["evaluate"] = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    timings["total"] = time.perf_counter() - t_start
    return {
        "rfm_recall_top25": {"before": before["base"]["recall"], "after": after["base"]["recall"],
                             "chance": after["base"]["chance"]},
        "rfm_recall_top25_by_level": {name: {"before": before[name]["recall"], "after": after[name]["recall"],
                                             "chance": after[name]["chance"]} for name in after},
        "rfm_recall_top25_control": None if control is None else {
            name: {"before": control["before"][name]["recall"], "after": control["after"][name]["recall"],
                   "chance": control["after"][name]["chance"]} for name in control["after"]},
        "accuracy": ev["accuracy"],
        "llm_vision_tokens": {"all_tiles": ev["llm_vision_tokens"]["all_tiles"],
                              "coarse_to_fine": ev["llm_vision_tokens"]["coarse_to_fine"],
                              "thumbnail": ev["llm_vision_tokens"]["thumbnail"]},
        "tiles_encoded": ev["tiles_encoded"],
        "seconds_per_question": ev["seconds_per_question"],
        "n_train_questions": len(train_items),
        "n_test_questions": len(test_items),
        "chance_accuracy": 1.0 / len(cfg.train_spec.colours) if cfg.kinds == ("colour",) else None,
        "training": {"lvlm": lvlm.history, "distill": distill.history,
                     "control": None if control is None else control["history"]},
        "examples": ev["examples"][:8],
        "timings": timings,
        "config": _jsonable(cfg.to_dict()),
    }


def _dataset(work: Path, name: str, seeds: range, spec: SceneSpec, kinds: tuple[str, ...]) -> Path:
    """Write the scenes once per (seeds, spec, kinds): a rerun with the same --workdir reuses them."""
    key = hashlib.sha1(repr((name, seeds.start, seeds.stop, spec, kinds)).encode()).hexdigest()[:10]
    folder = work / f"{name}-{key}"
    path = folder / f"{name}.json"
    if path.exists():
        return path
    return write_dataset(folder, seeds, spec, kinds, name=name)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
