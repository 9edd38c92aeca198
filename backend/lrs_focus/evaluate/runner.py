"""Benchmark runner: questions -> `Engine.ask` -> answers JSONL, per mode, resumable and sharded.

Per mode, each rank appends to its own shard file and skips the ids already answered by any
earlier run (merged file or shards, whatever world size wrote them); failed questions are
written with status "failed", an error code and the reason, and are retried by the next run.
When every rank is done, rank 0 merges the shards into one answers file per mode, scores them
and writes the comparison report (markdown, CSV, PNG).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..engine import DEFAULT_MODEL, MODES, AskEngine, AskOptions
from ..errors import LrsFocusError
from . import answers as answer_files
from .coverage import covers_box, kept_tiles
from .distributed import ProcessGroup, Shard, default_device, shard_from_env
from .records import READERS, EvalItem, lrs_subset

log = logging.getLogger(__name__)

BENCHMARKS = ("lrs", "mme")


@dataclass
class EvalConfig:
    benchmark: str
    questions: Path
    out_dir: Path
    image_root: Optional[Path] = None
    modes: Sequence[str] = ("paper",)
    model: str = DEFAULT_MODEL
    device: Optional[str] = None
    dtype: Optional[str] = None  # float32 | bfloat16 | float16 (default: bf16 on CUDA, float32 on CPU)
    cache_mb: Optional[float] = None  # engine feature cache (follow-up questions about one image)
    options: dict[str, Any] = field(default_factory=dict)  # AskOptions fields except mode
    limit: Optional[int] = None  # first N questions (after --subset), for quick runs
    subsets: Optional[Sequence[str]] = None  # LRS only: FAIR, GLH-Bridge, STAR
    progress: bool = True
    answer_server: Any = None  # remote_answer.AnswerServer: the answers on an OpenAI-compatible server
    report: bool = True

    def validate(self) -> "EvalConfig":
        from ..errors import BadOptions

        if self.benchmark not in BENCHMARKS:
            raise BadOptions(f"benchmark must be one of {', '.join(BENCHMARKS)}, not {self.benchmark!r}")
        if not Path(self.questions).is_file():
            raise BadOptions(f"question file not found: {self.questions}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise BadOptions(f"modes must be among {', '.join(MODES)}, not {', '.join(bad) or 'none'}")
        if self.limit is not None and int(self.limit) < 1:  # a negative slice would take almost all
            raise BadOptions(f"limit must be a number of questions >= 1, not {self.limit}")
        for mode in self.modes:  # fail before loading a model, not on the first question
            self.ask_options(mode)
        return self

    def ask_options(self, mode: str) -> AskOptions:
        """The options of one mode; released mode always reads the released pixels (no `pixels`)."""
        options = {**self.options, "mode": mode}
        if mode == "released":
            options.pop("pixels", None)
        return AskOptions.from_dict(options)


def select_items(config: EvalConfig) -> list[EvalItem]:
    items = READERS[config.benchmark](Path(config.questions), config.image_root)
    if config.subsets:
        wanted = set(config.subsets)
        items = [it for it in items if lrs_subset(it.question_id) in wanted]
    if config.limit is not None:
        items = items[: config.limit]
    return items


def answer_record(
    benchmark: str,
    item: EvalItem,
    mode: str,
    model_id: str,
    result: Optional[dict[str, Any]] = None,
    error: Optional[tuple[str, str]] = None,
    seconds: Optional[float] = None,
) -> dict[str, Any]:
    """One answers-file line: the official fields, then ours (mode, status, cost, focus)."""
    rec = item.record
    answer = (result or {}).get("answer", "") if error is None else ""
    if benchmark == "lrs":
        out: dict[str, Any] = {
            "question_id": item.question_id,
            "prompt": item.prompt,
            "text": answer,
            "category": rec.get("category"),
            "ground_truth": rec.get("ground_truth"),
            "answer_id": uuid.uuid4().hex,
            "model_id": model_id,
            "ori_hbox": rec.get("hbox"),
            "ori_rbox": rec.get("rbox"),
            "metadata": {k: rec.get(k) for k in ("image", "image_size", "abs_size", "size_bin") if k in rec},
        }
    else:
        out = {**rec, "Output": answer, "question_id": item.question_id, "prompt": item.prompt,
               "answer_id": uuid.uuid4().hex, "model_id": model_id}
    out["mode"] = mode
    out["status"] = answer_files.STATUS_OK if error is None else answer_files.STATUS_FAILED
    if error is not None:
        out["error"] = {"code": error[0], "message": error[1]}
        return out
    trace = result.get("trace") or {}
    out["kept_tiles"] = kept_tiles(trace)
    out["stopped_at"] = trace.get("stopped_at")
    hbox = rec.get("hbox")
    out["covers_hbox"] = covers_box(trace, hbox, rec.get("image_size")) if hbox else None
    out["counts"] = result.get("counts", {})
    out["timings"] = result.get("timings", {})
    out["seconds"] = seconds
    return out


def ask_one(engine: AskEngine, item: EvalItem, options: AskOptions) -> tuple[Optional[dict], Optional[tuple[str, str]], float]:
    """(result, None, seconds) or (None, (code, reason), seconds); never raises for bad input."""
    start = time.perf_counter()
    if item.error is not None:
        return None, ("malformed_record", item.error), 0.0
    if item.image is None or not item.image.exists():
        return None, ("raster_not_found", f"image not found: {item.image}"), 0.0
    try:
        result = engine.ask(str(item.image), item.prompt, options, job_id=item.question_id)
    except LrsFocusError as exc:
        return None, (exc.code, str(exc)), time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - one broken question must not end a 7,000-question run
        log.warning("question %s failed", item.question_id, exc_info=True)
        return None, ("internal", f"{type(exc).__name__}: {exc}"), time.perf_counter() - start
    return result, None, time.perf_counter() - start


def run_shard(
    engine: AskEngine,
    items: Sequence[EvalItem],
    config: EvalConfig,
    mode: str,
    shard: Shard,
    model_id: str,
) -> dict[str, int]:
    """Answer this rank's share of `items` in one mode; returns answered/failed/skipped counts."""
    from tqdm import tqdm

    out_dir = Path(config.out_dir)
    done = answer_files.done_ids(out_dir, config.benchmark, mode)
    mine = shard.take_groups(items, key=lambda it: str(it.image))  # one image's questions together
    todo = [it for it in mine if it.question_id not in done]
    options = config.ask_options(mode)
    path = answer_files.shard_path(out_dir, config.benchmark, mode, shard.rank, shard.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"answered": 0, "failed": 0, "skipped": len(mine) - len(todo)}
    bar = tqdm(
        total=len(todo),
        desc=f"{config.benchmark}/{mode} rank {shard.rank}/{shard.world_size}",
        position=shard.rank,
        file=sys.stderr,
        disable=not config.progress,
        dynamic_ncols=True,
    )
    with answer_files.open_for_append(path) as fh, bar:
        for item in todo:
            result, error, seconds = ask_one(engine, item, options)
            record = answer_record(config.benchmark, item, mode, model_id, result, error, seconds)
            answer_files.append_jsonl(fh, record)
            counts["failed" if error else "answered"] += 1
            if error:
                bar.write(f"failed {item.question_id}: [{error[0]}] {error[1]}", file=sys.stderr)
            bar.set_postfix(failed=counts["failed"], refresh=False)
            bar.update(1)
    return counts


def load_engine(config: EvalConfig, shard: Shard) -> AskEngine:
    from ..engine import Engine  # the real model: only imported when no engine is given

    return Engine(config.model, device=default_device(shard, config.device), dtype=config.dtype,
                  cache_mb=config.cache_mb, answer_server=config.answer_server)


def score(benchmark: str, path: Path) -> dict[str, Any]:
    if benchmark == "lrs":
        from .score_lrs import score_file
    else:
        from .score_mme import score_file
    return score_file(path)


def merge_and_report(config: EvalConfig, items: Optional[Sequence[EvalItem]] = None) -> dict[str, Any]:
    """Join each mode's shards into its answers file, score it, and write the comparison report."""
    items = select_items(config) if items is None else items
    order = [it.question_id for it in items]
    doc: dict[str, Any] = {"answers": {}, "modes": {}}
    for mode in config.modes:
        path = answer_files.merge(config.out_dir, config.benchmark, mode, order)
        doc["answers"][mode] = str(path)
        doc["modes"][mode] = score(config.benchmark, path)
        # ranks without a process group (RANK/WORLD_SIZE set by hand) do not wait for each other
        answered = answer_files.read_answers(path).records
        missing = sum(1 for qid in dict.fromkeys(order) if qid not in answered)
        doc["modes"][mode]["n_missing"] = missing
        if missing:
            log.warning("%s-%s: %d of the %d selected questions have no answer line yet "
                        "(other ranks still running? merge again with --merge-only)",
                        config.benchmark, mode, missing, len(order))
    if config.report:
        from .report import write_report

        doc["report"] = write_report(config.benchmark, list(doc["modes"].values()), Path(config.out_dir))
    return doc


def run_eval(config: EvalConfig, engine: Optional[AskEngine] = None, shard: Optional[Shard] = None) -> dict[str, Any]:
    """Run every mode on this rank's share; on rank 0, merge, score and report once all are done."""
    config.validate()
    shard = shard or shard_from_env()
    items = select_items(config)
    # refused before a model loads (minutes for a 7B checkpoint), not after
    if not items:
        from ..errors import BadOptions

        raise BadOptions(f"no questions selected from {config.questions} "
                         f"(--subset {', '.join(config.subsets or ['all'])}, --limit {config.limit})")
    (Path(config.out_dir) / "shards").mkdir(parents=True, exist_ok=True)  # OSError -> io_error
    group = ProcessGroup(shard)
    try:
        engine = engine or load_engine(config, shard)
        described = engine.describe() if hasattr(engine, "describe") else {}
        model_id = str(described.get("model") or config.model)
        per_mode = {mode: run_shard(engine, items, config, mode, shard, model_id) for mode in config.modes}
        group.barrier()
        all_counts = group.gather(per_mode)
        doc: dict[str, Any] = {
            "benchmark": config.benchmark,
            "model": described or {"model": config.model},
            "rank": shard.rank,
            "world_size": shard.world_size,
            "n_selected": len(items),
            "shard_counts": per_mode,
            "rank_counts": all_counts,  # every rank's answered/failed/skipped per mode
        }
        if shard.is_main:
            doc.update(merge_and_report(config, items))
        return doc
    finally:
        group.close()
