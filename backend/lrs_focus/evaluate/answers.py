"""Answers files: JSONL, one record per question, appended as answers come (resumable).

Every rank appends to its own shard file (`shards/<bench>-<mode>.rank<r>-of-<n>.jsonl`); the merge
joins the shards and any earlier merged file into `<bench>-<mode>.jsonl`, one line per question.
When a question appears more than once (a failed try, then a retry), the last successful line
wins; a question only ever failed keeps its last failure.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class AnswerFile:
    """The records of one or more answers files, deduplicated by question id."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # insertion = first-seen order
    n_lines: int = 0
    n_duplicates: int = 0  # lines whose id was already seen
    malformed: list[str] = field(default_factory=list)  # "path:line: reason"

    def add(self, record: dict[str, Any]) -> None:
        qid = str(record.get("question_id", record.get("Question_id")))
        previous = self.records.get(qid)
        if previous is not None:
            self.n_duplicates += 1
            if previous.get("status", STATUS_OK) == STATUS_OK and record.get("status") == STATUS_FAILED:
                return  # a later failure never hides an earlier answer
        self.records[qid] = record


def read_answers(paths: Iterable[Path] | Path) -> AnswerFile:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = AnswerFile()
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                out.n_lines += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    out.malformed.append(f"{path}:{number}: {exc.msg}")
                    continue
                if not isinstance(record, dict) or (
                    record.get("question_id") is None and record.get("Question_id") is None
                ):
                    out.malformed.append(f"{path}:{number}: no question_id")
                    continue
                out.add(record)
    return out


def answers_path(out_dir: Path, benchmark: str, mode: str) -> Path:
    return Path(out_dir) / f"{benchmark}-{mode}.jsonl"


def shard_path(out_dir: Path, benchmark: str, mode: str, rank: int, world_size: int) -> Path:
    return Path(out_dir) / "shards" / f"{benchmark}-{mode}.rank{rank}-of-{world_size}.jsonl"


def shard_paths(out_dir: Path, benchmark: str, mode: str) -> list[Path]:
    """Every shard of this benchmark and mode, whatever world size wrote it."""
    return sorted((Path(out_dir) / "shards").glob(f"{benchmark}-{mode}.rank*-of-*.jsonl"))


def done_ids(out_dir: Path, benchmark: str, mode: str) -> set[str]:
    """Ids answered successfully so far, in the merged file or any shard (failed ones are retried)."""
    files = [answers_path(out_dir, benchmark, mode), *shard_paths(out_dir, benchmark, mode)]
    answers = read_answers(files)
    return {qid for qid, rec in answers.records.items() if rec.get("status", STATUS_OK) == STATUS_OK}


def open_for_append(path: Path):
    """Open a shard for appending; a torn last line (a run killed mid-write, a full disk) is
    closed with a newline first, so it stays one malformed line instead of swallowing the next
    answer appended after it."""
    path = Path(path)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as raw:
            raw.seek(-1, os.SEEK_END)
            torn = raw.read(1) != b"\n"
    fh = open(path, "a", encoding="utf-8")
    if torn:
        fh.write("\n")
    return fh


def append_jsonl(fh, record: dict[str, Any]) -> None:
    """One line, flushed and synced, so a killed run loses at most the question in flight."""
    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def merge(out_dir: Path, benchmark: str, mode: str, order: Optional[list[str]] = None) -> Path:
    """Join the merged file and all shards into the merged file (atomically), in `order` if given."""
    target = answers_path(out_dir, benchmark, mode)
    answers = read_answers([target, *shard_paths(out_dir, benchmark, mode)])
    if answers.malformed:  # the merged file is rewritten clean: say what it leaves out
        log.warning("merge %s-%s: %d unreadable line(s) skipped, first: %s",
                    benchmark, mode, len(answers.malformed), answers.malformed[0])
    records = answers.records
    if order is not None:
        rank = {qid: i for i, qid in enumerate(order)}
        ids = sorted(records, key=lambda q: (rank.get(q, len(rank)), q))
    else:
        ids = list(records)
    tmp = target.with_suffix(".jsonl.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        for qid in ids:
            fh.write(json.dumps(records[qid], ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return target
