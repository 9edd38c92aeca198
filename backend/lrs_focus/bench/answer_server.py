"""`lrs-focus bench answer-server`: asks per second answered in process vs on an answer server.

Same run, same checkpoint directory, same rasters and questions: `baseline` = an engine that answers
in process (transformers `generate`); `ours` = an engine whose answer stage goes to the
OpenAI-compatible server at `--answer-endpoint` (which must serve the same directory, e.g.
`scripts/answer_server.sh DIR PORT`). Focus runs locally in both. `same_answers` counts the asks
whose answers are equal. On one CPU machine the server competes with the focus stage for the same
cores; the figure that matters on a cluster is the answer stage's share (`generate_s`), which the
server takes off the focus node.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTIONS = ("Where are the largest agricultural fields?", "How many ships are docked at the northern pier?",
             "What is the colour of the largest building?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Qwen-VL checkpoint directory the server also serves")
    parser.add_argument("--answer-endpoint", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--answer-model", default=None, help="served model name (default: the only one listed)")
    parser.add_argument("--mode", default="thumbnail", help="ask mode (default thumbnail: the answer stage dominates)")
    parser.add_argument("--asks", type=int, default=6, help="asks per side (default 6)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--size", default="1000x700", help="synthetic RGB raster WIDTHxHEIGHT (default 1000x700)")


def _log(msg: str) -> None:
    print(f"bench answer-server: {msg}", file=sys.stderr, flush=True)


def _raster(folder: Path, width: int, height: int, seed: int) -> str:
    import numpy as np
    from PIL import Image

    path = folder / f"r{seed}.png"
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def _sides(engines: dict[str, Any], asks: list[tuple[str, str]], options: Any) -> dict[str, dict[str, Any]]:
    """Each ask on each side in turn (local, server, local, ...): load from other work on a shared
    machine then falls on both sides alike."""
    out = {name: {"seconds": 0.0, "generate_s": 0.0, "answers": []} for name in engines}
    for raster, question in asks:
        for name, engine in engines.items():
            wall = time.perf_counter()
            doc = engine.ask(raster, question, options)
            side = out[name]
            side["seconds"] += time.perf_counter() - wall
            side["generate_s"] += float(doc["timings"].get("generate", 0.0))
            side["answers"].append(doc["answer"])
    for side in out.values():
        side["asks_per_s"] = round(len(asks) / side["seconds"], 3)
        side["seconds"], side["generate_s"] = round(side["seconds"], 3), round(side["generate_s"], 3)
    return out


def run(args) -> dict[str, Any]:
    from ..engine import AskOptions, Engine
    from ..remote_answer import AnswerServer
    from ..samples import parse_sizes

    (width, height), = parse_sizes(args.size)
    options = AskOptions(mode=args.mode, max_new_tokens=args.max_new_tokens).validate()
    local = Engine(args.model, device="cpu", dtype="float32", cache_mb=0)
    remote = Engine(args.model, device="cpu", dtype="float32", cache_mb=0,
                    answer_server=AnswerServer(args.answer_endpoint, args.answer_model))
    with tempfile.TemporaryDirectory() as tmp:
        asks = [(_raster(Path(tmp), width, height, i), QUESTIONS[i % len(QUESTIONS)]) for i in range(args.asks)]
        remote.ask(asks[0][0], asks[0][1], options)  # warm both sides (first request, lazy imports)
        local.ask(asks[0][0], asks[0][1], options)
        _log(f"{args.asks} asks in process and {args.asks} with the answer on {args.answer_endpoint}, in turn")
        sides = _sides({"local": local, "server": remote}, asks, options)
    baseline, ours = sides["local"], sides["server"]
    same = sum(a == b for a, b in zip(baseline.pop("answers"), ours.pop("answers")))
    case = {"name": f"{args.mode}, {width}x{height}, {args.max_new_tokens} new tokens", "ours": ours,
            "baseline": baseline, "ratio": round(ours["asks_per_s"] / baseline["asks_per_s"], 2),
            "same_answers": f"{same}/{len(asks)}"}
    return {"benchmark": "answer-server",
            "workload": f"{args.model}, {args.asks} asks per side, answer server {args.answer_endpoint}",
            "ratio_means": "asks per second with the answer server / in process", "cases": [case]}


def format_table(doc: dict[str, Any]) -> str:
    lines = [doc["workload"], f"{'case':<36} {'server asks/s':>14} {'local asks/s':>13} {'ratio':>6} "
                              f"{'server gen s':>13} {'local gen s':>12} {'same':>6}"]
    for c in doc["cases"]:
        lines.append(f"{c['name']:<36} {c['ours']['asks_per_s']:14.3f} {c['baseline']['asks_per_s']:13.3f} "
                     f"{c['ratio']:6.2f} {c['ours']['generate_s']:13.2f} {c['baseline']['generate_s']:12.2f} "
                     f"{c['same_answers']:>6}")
    return "\n".join(lines)
