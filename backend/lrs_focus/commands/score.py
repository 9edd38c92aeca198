"""`lrs-focus score lrs|mme ANSWERS [ANSWERS...]`: score answers files, print tables (or --json).

One file: its per-category table (`--json`: the score document, for LRS
{"subsets": {"FAIR": {"AA", "OA", "categories", ...}, ...}, "mean_AA", ...}, percentages 0-100).
Several files (one per mode): each table, then a comparison; `--report DIR` also writes the
comparison as markdown, CSV and an accuracy-vs-vision-tokens plot.
"""

from __future__ import annotations

from ._output import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", help="scorers: tables (and --json)")
    inner = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, help_text in (("lrs", "LRS-VQA (WordNet synonyms, AA/OA per subset)"),
                            ("mme", "MME-RealWorld-RS (official letter extraction, micro accuracy)")):
        p = inner.add_parser(name, help=help_text)
        p.add_argument("answers", nargs="+", help="answers JSONL file(s), one per mode")
        if name == "lrs":
            p.add_argument("--questions", default=None,
                           help="question file: ground truth from it; unknown ids and missing answers counted")
        p.add_argument("--report", default=None, metavar="DIR", help="write the comparison (md, csv, png) here")
        add_json_flag(p)
        p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import BadOptions
    from ..evaluate import score_lrs, score_mme
    from ..evaluate.report import comparison_rows, markdown_table, write_report

    module = score_lrs if args.benchmark == "lrs" else score_mme
    missing = [a for a in args.answers if not Path(a).is_file()]
    if missing:
        raise BadOptions(f"answers file not found: {', '.join(missing)}")
    questions = Path(args.questions) if getattr(args, "questions", None) else None
    docs = [module.score_file(Path(a), questions) for a in args.answers]
    report = write_report(args.benchmark, docs, Path(args.report)) if args.report else None

    if len(docs) == 1 and report is None:
        emit(args, docs[0], module.format_table)
        return 0
    document = {"benchmark": args.benchmark, "runs": docs}
    if len(docs) == 1:
        document = dict(docs[0])
    if report is not None:
        document["report"] = report

    def text(doc) -> str:
        parts = [module.format_table(d) for d in docs]
        parts.append("Comparison:\n\n" + markdown_table(comparison_rows(args.benchmark, docs)))
        if report is not None:
            parts.append("report: " + ", ".join(str(v) for k, v in report.items() if k != "table" and v))
        return "\n\n".join(parts)

    emit(args, document, text)
    return 0
