"""`lrs-focus train`: RFM attention-distillation SFT on LLaVA-format data; `train needle`: the synthetic check.

    lrs-focus train --data sft.json --model DIR|tiny --out CKPT [--steps N] [--pairs first,last] ...
    lrs-focus train needle [--family llava|qwen2.5-vl] [--json] [--seed S] [--steps N] [--quick] [--workdir DIR]

Several GPUs: `accelerate launch -m lrs_focus.cli train --data ...` (or torchrun); the loop is
built on accelerate.
"""

from __future__ import annotations

import argparse

from ._output import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="RFM distillation training (LM + paper's KL/MSE attention loss); `train needle` = synthetic check",
        description="SFT with the LM loss plus attention distillation from LLM layers into the RFM "
        "(thumbnail + base-level tiles, no pruning). `lrs-focus train needle` runs the synthetic check.",
    )
    parser.add_argument("--data", help="LLaVA conversation JSON (list of {id, image, conversations})")
    parser.add_argument("--image-root", help="folder image paths are relative to (default: the JSON's folder)")
    parser.add_argument("--model", default="tiny", help="starting model: tiny, a released-layout directory or hub id")
    parser.add_argument("--out", help="output checkpoint directory (released LLaVA layout); new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace the checkpoint in a non-empty --out")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate (LLaVA SFT default 2e-5)")
    parser.add_argument("--rfm-lr", type=float, default=None, help="RFM learning rate (default: --lr)")
    parser.add_argument("--pairs", default="first,last", help="distilled RFM-LLM pairs: first,last | all | 0,3")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--train", dest="parts", choices=("all", "rfm", "no-rfm"), default="all",
                        help="parameters to train: all (paper), only the RFM, or the LVLM without the RFM")
    parser.add_argument("--no-init-rfm", action="store_true", help="keep the checkpoint's RFM instead of copying LLM layers")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_flag(parser)
    inner = parser.add_subparsers(dest="task", required=False, metavar="{needle}")
    needle = inner.add_parser("needle", help="train a tiny model on synthetic needle scenes and report focus/accuracy")
    needle.add_argument("--family", choices=("llava", "qwen2.5-vl"), default="llava", dest="needle_family",
                        help="llava: tiny LLaVA + RFM with distillation (default); qwen2.5-vl: a tiny stock "
                        "Qwen2.5-VL trained with the LM loss only, focus by its own attention (no RFM)")
    needle.add_argument("--seed", type=int, default=0, dest="needle_seed")
    needle.add_argument("--steps", type=int, default=None, dest="needle_steps",
                        help="LVLM SFT steps (default 4000 for llava, 3000 for qwen2.5-vl; distillation and "
                        "controls keep theirs)")
    needle.add_argument("--quick", action="store_true", help="seconds-long smoke run (figures meaningless)")
    needle.add_argument("--workdir", help="keep scenes and checkpoint here (scenes are reused on rerun)")
    add_json_flag(needle)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "task", None) == "needle":
        return _needle(args)
    return _train(args)


def _needle(args: argparse.Namespace) -> int:
    from ..train.needle import NeedleConfig, run_needle

    if getattr(args, "needle_family", "llava") != "llava":
        return _needle_vl(args)
    cfg = NeedleConfig.quick(seed=args.needle_seed) if args.quick else NeedleConfig(seed=args.needle_seed)
    steps = _needle_steps(args)
    if steps is not None:
        cfg.lvlm_steps = steps
    doc = run_needle(cfg, workdir=args.workdir, progress=not args.json)
    emit(args, doc, _needle_text)
    return 0


def _needle_steps(args: argparse.Namespace) -> int | None:
    """--steps as given (None: the check's default); 0 is refused, not read as unset (it once ran the
    default 4000 LLaVA steps, 17 minutes)."""
    from ..errors import BadOptions

    if args.needle_steps is None:
        return None
    if args.needle_steps < 1:
        raise BadOptions(f"--steps must be at least 1, not {args.needle_steps}")
    return int(args.needle_steps)


def _needle_vl(args: argparse.Namespace) -> int:
    from ..train.needle_vl import VLNeedleConfig, run_needle_vl

    kw = {"seed": args.needle_seed, "family": args.needle_family}
    cfg = VLNeedleConfig.quick(**kw) if args.quick else VLNeedleConfig(**kw)
    steps = _needle_steps(args)
    if steps is not None:
        cfg.steps = steps
    doc = run_needle_vl(cfg, workdir=args.workdir, progress=not args.json)
    emit(args, doc, _needle_vl_text)
    return 0


def _needle_vl_text(doc: dict) -> str:
    a, t = doc["accuracy"], doc["llm_vision_tokens"]
    layers = "  ".join(f"{k}: {v:.2f}" for k, v in doc["attention_recall_top25_by_layer"].items())
    return "\n".join([
        f"{doc['family']}: held-out questions: {doc['n_questions']} (trained on {doc['n_train_questions']})",
        f"recall of the dot among the top 25% base-level tokens (chance {doc['chance_top25']:.2f}): "
        f"focus layer {doc['focus_layer']} (chosen on validation scenes) {doc['attention_recall_top25']:.2f}",
        f"  by layer: {layers}",
        "accuracy   " + "   ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in a.items()),
        "LLM vision tokens   " + "   ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in t.items()),
        f"time {doc['timings']['total']:.0f} s wall, {doc['cpu_seconds']['total']:.0f} s CPU",
    ])


def _needle_text(doc: dict) -> str:
    a, t = doc["accuracy"], doc["llm_vision_tokens"]
    rfm, ctl = doc["rfm_recall_top25"], doc["control_recall_top25"]
    return "\n".join([
        f"held-out questions: {doc['n_questions']} (trained on {doc['n_train_questions']})",
        "recall of the dot among the top 25% base-level tokens "
        f"(chance {doc['chance_top25']:.2f}): teacher (LLM layer {doc['teacher_layer']}) {doc['teacher_recall_top25']:.2f}",
        f"  RFM, paper initialisation: before {rfm['before']:.2f}  after {rfm['after']:.2f}",
        f"  control RFMs (untrained LLMs' layers, mean of {len(doc['control_runs'])}): before {ctl['before']:.2f}"
        f"  after {ctl['after']:.2f}",
        "accuracy   " + "   ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in a.items()),
        "LLM vision tokens   " + "   ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in t.items()),
        f"time {doc['timings']['total']:.0f} s wall, {doc['cpu_seconds']['total']:.0f} s CPU",
    ])


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..errors import BadOptions
    from ..model.loading import check_device, load_model
    from ..train.data import check_samples, load_conversations
    from ..train.trainer import TrainConfig, expand, save_checkpoint, train

    if not args.data or not args.out:
        raise BadOptions("train needs --data JSON and --out DIR (or use `lrs-focus train needle`)")
    # everything a user can get wrong is checked before the model loads and training starts, so a
    # mistake costs seconds, not a run that fails at its end
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                      rfm_lr=args.rfm_lr, pairs=args.pairs, distill_weight=args.distill_weight,
                      lm_weight=args.lm_weight, train=args.parts, init_rfm=not args.no_init_rfm, seed=args.seed).check()
    if args.device is not None:
        check_device(args.device)
    samples = load_conversations(args.data, args.image_root)
    check_samples(samples)
    _check_out(args.out, args.overwrite)
    model, tokenizer, info = load_model(args.model, device=args.device, dtype=torch.float32)
    check_samples(samples, tokenizer)
    items = expand(samples)
    result = train(model, tokenizer, items, cfg, progress=not args.json)
    from accelerate import PartialState

    state = PartialState()  # under accelerate launch / torchrun every rank trains; one writes
    if state.is_main_process:
        out = save_checkpoint(model, tokenizer, args.out)
        doc = {"checkpoint": str(out), "items": len(items), "history": result.history, "first": result.first,
               "last": result.last, "config": cfg.to_dict(), "model": info}
        emit(args, doc, lambda d: f"saved {d['checkpoint']} after {cfg.steps} steps on {d['items']} items; "
             f"last losses: lm {d['last'].get('lm', 0):.4f} distill {d['last'].get('distill', 0):.5f}")
    state.wait_for_everyone()
    return 0


def _check_out(out: str, overwrite: bool) -> None:
    """--out must be writable, and new or empty unless --overwrite: the save replaces the weight,
    tokenizer and config files in it."""
    import tempfile
    from pathlib import Path

    from ..errors import OutputError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputError(f"--out {out} is not empty; choose a new directory or pass --overwrite to replace "
                          "the checkpoint in it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise OutputError(f"cannot write the checkpoint to --out {out}: {exc}") from exc
