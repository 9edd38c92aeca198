"""MME-RealWorld(-RS) scoring, as the official `evaluation/eval_your_results.py`.

The letter extraction is reproduced as published, quirks included, so that our numbers compare
with the leaderboard: the prefix list misses two commas (Python joins "The best option is" with
"The correct option is", and "Best answer:" with "Best option:"), and an output with no A-E
letter is matched to the first choice that *contains* it, so an empty output maps to choice A.
Accuracy is micro (correct / all questions); per-category accuracy uses the lower-cased category,
with ".../attribute" categories folded as the official script does. Failed records count as wrong.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from .answers import STATUS_FAILED, AnswerFile, read_answers
from .summary import cost_summary, focus_summary, run_label

_ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is" "The correct option is",  # noqa: ISC001 - the official missing comma
    "Best answer:" "Best option:",  # noqa: ISC001 - idem
)


def extract_letter(output: Any, choices: Sequence[str]) -> str:
    """The official extraction: the chosen letter A-E, or "" when none can be read."""
    s = output if isinstance(output, str) else ""
    s = s.strip()
    for prefix in _ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return ""
    match = re.search(r"[ABCDE]", s)
    if match is None:
        for choice in choices:
            if s.lower() in choice.lower():
                return choice[1]
        return ""
    return match[0]


def category_of(record: dict[str, Any]) -> str:
    category = str(record.get("Category", "")).lower()
    if "attribute" in category:
        category = category.split("/")[0] + "/attribute"
    return category


def score_records(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    unknown, failed, scored, n_e = [], 0, [], 0
    for qid, rec in records.items():
        if not rec.get("Ground truth") or not rec.get("Answer choices"):
            unknown.append(qid)
            continue
        answered = rec.get("status") != STATUS_FAILED
        failed += not answered
        letter = extract_letter(rec.get("Output"), rec["Answer choices"]) if answered else ""
        n_e += letter == "E"
        category = category_of(rec)
        total[category] += 1
        correct[category] += answered and letter == rec["Ground truth"]
        scored.append(rec)
    n = sum(total.values())
    return {
        "benchmark": "mme",
        "accuracy": 100.0 * sum(correct.values()) / n if n else None,
        "n": n,
        "correct": sum(correct.values()),
        "categories": {c: 100.0 * correct[c] / total[c] for c in sorted(total)},
        "category_counts": {c: total[c] for c in sorted(total)},
        "n_answer_e": n_e,
        "n_failed": failed,
        "n_unknown": len(unknown),
        "unknown_ids": unknown[:20],
        "focus": focus_summary(scored),
        "cost": cost_summary(scored),
    }


def score_file(answers: Path, questions: Optional[Path] = None) -> dict[str, Any]:
    """Score one answers file (JSONL, or the official JSON list); `questions` is unused here
    (MME answer records carry their ground truth) and accepted for a uniform interface."""
    path = Path(answers)
    if path.suffix == ".json":  # the official runners' merged output
        data = AnswerFile()
        for rec in json.loads(path.read_text(encoding="utf-8")):
            data.n_lines += 1
            data.add(rec)
    else:
        data = read_answers(path)
    doc = score_records(data.records)
    doc.update(
        answers=str(answers),
        mode=run_label(data.records.values(), path.stem),
        n_lines=data.n_lines,
        n_duplicates=data.n_duplicates,
        n_malformed=len(data.malformed),
        malformed=data.malformed[:20],
    )
    return doc


def format_table(doc: dict[str, Any]) -> str:
    lines = [f"MME-RealWorld ({doc.get('mode', '')}): {doc.get('answers', '')}", ""]
    lines += ["| category | n | acc % |", "|---|---:|---:|"]
    for cat, acc in doc["categories"].items():
        lines.append(f"| {cat} | {doc['category_counts'][cat]} | {acc:.2f} |")
    acc = doc["accuracy"]
    lines.append(f"| all (micro) | {doc['n']} | {'-' if acc is None else f'{acc:.2f}'} |")
    cost = doc["cost"]
    tokens = cost["mean_llm_vision_tokens"]
    seconds = cost["mean_seconds"]
    lines += [
        "",
        f"mean LLM vision tokens: {'-' if tokens is None else f'{tokens:.1f}'}; "
        f"mean seconds: {'-' if seconds is None else f'{seconds:.3f}'}",
        f"records: failed {doc['n_failed']}, unknown {doc['n_unknown']}, "
        f"duplicates {doc['n_duplicates']}, malformed {doc['n_malformed']}"
        + (f", missing {doc['n_missing']}" if "n_missing" in doc else ""),
    ]
    return "\n".join(lines)
