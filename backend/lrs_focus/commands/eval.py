"""`lrs-focus eval lrs|mme QUESTIONS`: run a benchmark with the model, resumable and shardable.

Under `torchrun --nproc_per_node N` (or `accelerate launch`) each process answers a disjoint
share; rank 0 merges, scores and prints. `--modes` compares several modes in one run.
"""

from __future__ import annotations

from ._answer_server import add_answer_server_args, answer_server_from_args
from ._output import add_json_flag, emit

MODES_HELP = "comma-separated modes to compare: paper, released, thumbnail, all-tiles (default: paper)"


def register(subparsers) -> None:
    from ..engine import DEFAULT_MODEL  # light module: no torch at import

    parser = subparsers.add_parser("eval", help="benchmark runners (resumable, shardable)")
    inner = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, help_text, questions_help in (
        ("lrs", "LRS-VQA", "LRS_VQA_merged.jsonl (images relative to the parent of LRS_VQA/)"),
        ("mme", "MME-RealWorld-RS", "MME_RealWorld_RS.json (images relative to its folder)"),
    ):
        p = inner.add_parser(name, help=help_text)
        p.add_argument("questions", help=questions_help)
        p.add_argument("--image-root", default=None, help="folder the records' image paths are relative to")
        p.add_argument("--out", default=f"eval-{name}", help="output folder: answers, shards, report (default: %(default)s)")
        p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint dir or hub id; `tiny` = random weights")
        p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when GPUs exist, else cpu")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="weights' dtype (default bfloat16 on CUDA, float32 on CPU)")
        p.add_argument("--cache-mb", type=float, default=None,
                       help="tile features kept between the questions of one image (default 1024; 0 = none)")
        p.add_argument("--pixels", choices=["exact", "gdal"], default=None,
                       help="pixel path of paper/all-tiles/thumbnail (default exact; released is always exact)")
        p.add_argument("--max-length", type=int, default=None, help="sequence limit (default: the model's)")
        p.add_argument("--modes", "--mode", dest="modes", default="paper", help=MODES_HELP)
        p.add_argument("--alpha", type=float, default=None, help="kept fraction per level (default 0.25)")
        p.add_argument("--n-max", type=int, default=None, help="tile budget per zoom step (default: the model's)")
        p.add_argument("--max-levels", type=int, default=None, help="cap on tiled levels used")
        p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default 64)")
        p.add_argument("--focus", choices=["rfm", "attention", "relative"], default=None,
                       help="focus signal (default: the family's own; docs/models.md)")
        p.add_argument("--focus-layer", type=int, default=None, help="Qwen-VL: layer of the attention focus")
        add_answer_server_args(p)
        p.add_argument("--limit", type=int, default=None, help="only the first N questions (quick runs)")
        if name == "lrs":
            p.add_argument("--subset", action="append", choices=("FAIR", "GLH-Bridge", "STAR"),
                           help="only this sub-dataset (repeatable)")
        p.add_argument("--merge-only", action="store_true", help="merge and score existing shards, answer nothing")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_json_flag(p)
        p.set_defaults(func=run)


def build_config(args):
    from pathlib import Path

    from ..evaluate.runner import EvalConfig

    options = {
        key: value
        for key, value in (
            ("alpha", args.alpha),
            ("n_max", args.n_max),
            ("max_levels", args.max_levels),
            ("max_new_tokens", args.max_new_tokens),
            ("pixels", args.pixels),
            ("max_length", args.max_length),
            ("focus", args.focus),
            ("focus_layer", args.focus_layer),
        )
        if value is not None
    }
    return EvalConfig(
        benchmark=args.benchmark,
        questions=Path(args.questions),
        out_dir=Path(args.out),
        image_root=Path(args.image_root) if args.image_root else None,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()],
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        cache_mb=args.cache_mb,
        options=options,
        limit=args.limit,
        subsets=getattr(args, "subset", None),
        progress=not args.no_progress,
        answer_server=answer_server_from_args(args),
    )


def format_text(doc) -> str:
    from ..evaluate import score_lrs, score_mme

    module = score_lrs if doc["benchmark"] == "lrs" else score_mme
    parts = [module.format_table(d) for d in doc["modes"].values()]
    if "report" in doc:
        parts.append("Comparison of modes:\n\n" + doc["report"]["table"])
        parts.append("report: " + ", ".join(str(v) for k, v in doc["report"].items() if k != "table" and v))
    return "\n\n".join(parts)


def _check_something_to_merge(config) -> None:
    """--merge-only of a mode never run here (a mistyped --out or mode) is an error: merging it
    would write an empty answers file and a report of zeros."""
    from ..errors import BadOptions
    from ..evaluate import answers as answer_files

    for mode in config.modes:
        if not (answer_files.answers_path(config.out_dir, config.benchmark, mode).is_file()
                or answer_files.shard_paths(config.out_dir, config.benchmark, mode)):
            raise BadOptions(f"nothing to merge for mode {mode} in {config.out_dir}: "
                             f"no {config.benchmark}-{mode}.jsonl and no shards")


def run(args) -> int:
    from ..evaluate.runner import merge_and_report, run_eval

    config = build_config(args)
    if args.merge_only:
        config.validate()
        _check_something_to_merge(config)
        doc = {"benchmark": config.benchmark, **merge_and_report(config)}
    else:
        doc = run_eval(config)
    if "modes" in doc:  # rank 0 only: the others have written their shards and stay quiet
        emit(args, doc, format_text)
    return 0
