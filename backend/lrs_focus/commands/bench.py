"""`lrs-focus bench pyramid|tokens|service|memory|cache|answer-server`: each measures ours against its baseline in one run.

A benchmark module under `lrs_focus.bench` defines `add_arguments(parser)`, `run(args) -> dict`
(the `{"cases": [{"name", "ours", "baseline", "ratio"}, ...]}` document) and `format_table(doc)`.
"""

from __future__ import annotations

import importlib

from ._output import add_json_flag, emit

BENCHMARKS = {
    "pyramid": "lazy DIP reads vs loading the whole raster as float32 (memory, time)",
    "tokens": "vision tokens and prefill TFLOPs per mode vs anyres-p144; tiny model end to end",
    "service": "ZeroMQ ping round trip p50/p99 and asks per second with the tiny model",
    "memory": "feature/canvas/sequence memory of a question at the 7B geometry vs dense canvases",
    "cache": "a follow-up question about the same raster vs a cold one (feature cache)",
    "answer-server": "asks per second with the answer on an OpenAI-compatible server vs in process",
}


def _module(name: str) -> str:
    return f"lrs_focus.bench.{name.replace('-', '_')}"


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks against their baselines, with ratios")
    inner = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, help_text in BENCHMARKS.items():
        p = inner.add_parser(name, help=help_text)
        add_json_flag(p)
        p.set_defaults(func=run, benchmark=name)
        importlib.import_module(_module(name)).add_arguments(p)


def run(args) -> int:
    module = importlib.import_module(_module(args.benchmark))
    document = module.run(args)
    emit(args, document, module.format_table)
    return 0
