"""SFT with the LM loss plus the paper's attention distillation, on `accelerate`.

Why accelerate: the same loop runs on one CPU, one GPU, or several GPUs under `accelerate launch`
/ `torchrun` (DDP) without code changes. The whole step goes through `DistillStep.forward`, so
DDP sees every parameter that receives a gradient. Samples have different lengths (thumbnail +
base-level tiles of images of any aspect), so a batch is a list processed sample by sample and
its losses averaged; `grad_accum` makes larger effective batches.

Checkpoints are written with the project's saver (`model.loading.save_released`, the released
LLaVA key layout), so `lrs-focus ask --model DIR` and `Engine(DIR)` load them.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BadOptions
from ..model.modeling import CLIP_MEAN_RGB, MultimodalSequence
from ..model.prompts import encode_prompt
from ..pyramid import PyramidConfig
from .data import ImageViews, Sample, ViewCache
from .distill import PairSpec, batch_losses, layer_pairs

log = logging.getLogger(__name__)

PARTS = ("all", "rfm", "no-rfm")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    rfm_lr: Optional[float] = None  # None: same as lr
    weight_decay: float = 0.0
    warmup: float = 0.03  # fraction of steps (LLaVA SFT default)
    distill_weight: float = 1.0  # paper: 1
    lm_weight: float = 1.0
    pairs: str = "first,last"  # paper: distil the first and last RFM-LLM pairs
    train: str = "all"  # all | rfm (only the RFM) | no-rfm (LVLM only, e.g. before the RFM exists)
    init_rfm: bool = True  # copy LLM layers into the RFM before training (start of SFT)
    seed: int = 0
    log_every: int = 50
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> "TrainConfig":
        """Refuse values that would crash deep in torch or train silently wrong (a NaN or negative
        learning rate writes a NaN or gradient-ascent checkpoint), before any model is loaded."""
        for name in ("steps", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise BadOptions(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)!r}")
        for name in ("lr", "rfm_lr", "distill_weight", "lm_weight", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise BadOptions(f"{name.replace('_', '-')} must be a finite number >= 0, not {value!r}")
        if self.train not in PARTS:
            raise BadOptions(f"train must be one of {', '.join(PARTS)}, not {self.train!r}")
        lm = self.lm_weight if self.train != "rfm" else 0.0
        distill = self.distill_weight if self.train != "no-rfm" else 0.0
        if lm == 0 and distill == 0:
            raise BadOptions(f"nothing to train: --train {self.train} with lm-weight {self.lm_weight} and "
                             f"distill-weight {self.distill_weight} leaves no loss")
        return self


def pyramid_config(model: Any) -> PyramidConfig:
    """The DIP the model was built for (tile = CLIP input, base = 3 tiles, pad = CLIP mean)."""
    c = model.config
    return PyramidConfig(tile_size=c.tile_size, base_long_side=c.base_long_side, tokens_per_tile=c.tokens_per_tile,
                         pad_rgb=CLIP_MEAN_RGB)


@dataclass
class Item:
    """One single-turn training example (multi-turn records become one item per turn)."""

    sample: Sample
    question: str
    answer: str


def expand(samples: Iterable[Sample]) -> list[Item]:
    return [Item(s, q, a) for s in samples for q, a in s.turns]


def build_training_sequence(model: Any, tokenizer: Any, views: ImageViews, question: str,
                            answer: Optional[str]) -> MultimodalSequence:
    """Thumbnail + all base-level tiles (no pruning) + question (+ answer when training)."""
    thumb = model.encode_thumbnail(views.thumbnail)
    tiles = model.encode_tiles(views.tiles)
    n_rows, n_cols = views.grid
    t = tiles.shape[1]
    grid = model.stitch(tiles.view(n_rows, n_cols, t, t, -1), views.token_grid)
    prompt = encode_prompt(tokenizer, model.config.template, question, answer)
    return model.build_sequence(prompt, thumb, grid.reshape(-1, grid.shape[-1]), with_answer=answer is not None)


class DistillStep(nn.Module):
    """forward(batch of Items) -> (total, lm, distill), averaged over the batch."""

    def __init__(self, model: nn.Module, tokenizer: Any, views: Callable[[Any], ImageViews],
                 pairs: Sequence[PairSpec], cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.views = views
        self.pairs = list(pairs)
        self.cfg = cfg

    def forward(self, batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distill_weight = 0.0 if self.cfg.train == "no-rfm" else self.cfg.distill_weight
        lm_weight = 0.0 if self.cfg.train == "rfm" else self.cfg.lm_weight
        seqs = build_training_batch(self.model, self.tokenizer, [self.views(i.sample.image) for i in batch],
                                    [(i.question, i.answer) for i in batch])
        limit = int(self.model.config.max_length)
        for item, seq in zip(batch, seqs):  # text is never cut: a sequence past the limit is refused
            if seq.length > limit:
                raise BadOptions(f"record {item.sample.id!r}: the training sequence takes {seq.length} tokens "
                                 f"(thumbnail, base-level tiles, question and answer), more than the model's "
                                 f"max_length {limit}; shorten the question or answer")
        out = batch_losses(self.model, seqs, self.pairs, distill_weight=distill_weight, lm_weight=lm_weight)
        return out.total, out.lm, out.distill


def build_training_batch(model: Any, tokenizer: Any, views: Sequence[ImageViews],
                         turns: Sequence[tuple[str, Optional[str]]]) -> list[MultimodalSequence]:
    """`build_training_sequence` for a batch, with one vision-tower call for all images of the batch."""
    n_tiles = [len(v.tiles) for v in views]
    thumbs = model.project_images(np.stack([v.thumbnail for v in views])).flatten(1, 2)
    tiles = model.encode_tiles(np.concatenate([v.tiles for v in views]))
    seqs, start = [], 0
    for v, (question, answer), k, thumb in zip(views, turns, n_tiles, thumbs):
        n_rows, n_cols = v.grid
        t = tiles.shape[1]
        grid = model.stitch(tiles[start : start + k].reshape(n_rows, n_cols, t, t, -1), v.token_grid)
        start += k
        prompt = encode_prompt(tokenizer, model.config.template, question, answer)
        seqs.append(model.build_sequence(prompt, thumb, grid.reshape(-1, grid.shape[-1]), with_answer=answer is not None))
    return seqs


def _trainable(model: nn.Module, which: str) -> list[tuple[str, nn.Parameter]]:
    if which not in PARTS:
        raise ValueError(f"train must be one of {PARTS}, not {which!r}")
    out = []
    for name, p in model.named_parameters():
        on = which == "all" or (which == "rfm") == name.startswith("rfm.")
        p.requires_grad_(on)
        if on:
            out.append((name, p))
    return out


class TrainingDiverged(BadOptions):
    """The loss became NaN or infinite (usually a learning rate too high for the model)."""


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    first: dict[str, float] = field(default_factory=dict)  # mean losses over the first log window
    last: dict[str, float] = field(default_factory=dict)  # and over the last one


def train(model: nn.Module, tokenizer: Any, items: Sequence[Item], cfg: TrainConfig,
          views: Optional[Callable[[Any], ImageViews]] = None, progress: bool = False) -> TrainResult:
    """Run `cfg.steps` optimiser steps over `items` (shuffled, cycled). Returns the loss history."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from torch.utils.data import DataLoader

    cfg.check()
    if not items:
        raise BadOptions("no training items")
    # the last RFM layer's v/o/MLP and the layers after the last pair get no gradient: tell DDP
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    on_cpu = next(model.parameters()).device.type == "cpu"  # else prepare() moves a --device cpu model to CUDA
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=on_cpu or not torch.cuda.is_available(),
                              kwargs_handlers=[ddp])
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    views = views or ViewCache(pyramid_config(model))
    if cfg.init_rfm and cfg.train != "no-rfm":
        used = model.init_rfm_from_llm()
        log.info("RFM initialised from LLM layers %s", used)
    try:
        pairs = layer_pairs(model.config.rfm_layer_list, cfg.pairs)
    except ValueError as exc:
        raise BadOptions(f"--pairs: {exc}") from exc
    params = _trainable(model, cfg.train)
    rfm_lr = cfg.lr if cfg.rfm_lr is None else cfg.rfm_lr  # 0 is a value (a frozen RFM), not "unset"
    groups = [
        {"params": [p for n, p in params if not n.startswith("rfm.")], "lr": cfg.lr},
        {"params": [p for n, p in params if n.startswith("rfm.")], "lr": rfm_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, cfg.steps))))
    )
    step_module = DistillStep(model, tokenizer, views, pairs, cfg)
    loader = DataLoader(list(items), batch_size=cfg.batch_size, shuffle=True, collate_fn=list,
                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=len(items) >= cfg.batch_size)
    step_module, optimizer, loader, sched = accelerator.prepare(step_module, optimizer, loader, sched)
    model.train()
    result = TrainResult()
    window: list[tuple[float, float, float]] = []
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc=f"train ({cfg.train})", unit="step", leave=False)
    step = 0
    while step < cfg.steps:
        for batch in loader:
            with accelerator.accumulate(step_module):
                total, lm, dist = step_module(batch)
                accelerator.backward(total)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_([p for _, p in params], cfg.max_grad_norm)
                optimizer.step()
                sched.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            window.append((float(total.detach()), float(lm), float(dist)))
            if not math.isfinite(window[-1][0]):  # stop before a NaN model is saved as a checkpoint
                raise TrainingDiverged(f"the loss became {window[-1][0]} at step {step} (lm {window[-1][1]}, "
                                       f"distill {window[-1][2]}); lower --lr. No checkpoint was written")
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean = [sum(v) / len(v) for v in zip(*window)]
                rec = {"step": step, "loss": mean[0], "lm": mean[1], "distill": mean[2]}
                result.history.append(rec)
                if not result.first:
                    result.first = rec
                result.last = rec
                log.info("step %d loss %.4f lm %.4f distill %.4f", step, *mean)
                window = []
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lm=f"{float(lm):.3f}", distill=f"{float(dist):.4f}")
            if step >= cfg.steps:
                break
    if bar is not None:
        bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return result


def save_checkpoint(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write the model in the released layout (loads with `model.loading.load_model(DIR)`)."""
    from ..model.loading import save_released

    return save_released(model, tokenizer, out_dir)
