"""LRS-VQA scoring, as the official `Script/evaluation_LRSVQA.py` does it, offline.

Correct = lower-cased exact match, or some WordNet synset pair of the two strings has
path_similarity > 0.8 (in practice: they share a synset, e.g. grey/gray, 2/two). Per sub-dataset
(the id's prefix before '_'): per-category accuracy, AA = unweighted mean of the category
accuracies (the paper's "Avg. Acc"), OA = correct/total. `mean_AA` is the mean of the subsets' AA.

Decisions the official script leaves open, made explicit here:
* a failed record (status "failed": missing or unreadable image...) counts as a wrong answer;
* a question id answered twice is scored once (the last successful line) and counted in
  `n_duplicates`;
* with a question file, ground truth and category come from it, ids it does not hold are
  excluded and counted in `n_unknown`, and its unanswered questions in `n_missing`; without one,
  records lacking ground truth, category or a known sub-dataset are `n_unknown`.
All percentages are 0-100.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from .answers import STATUS_FAILED, read_answers
from .records import LRS_SUBSETS, lrs_subset, read_lrs
from .summary import cost_summary, focus_summary, run_label
from .wordnet import are_synonyms


def match_kind(prediction: Optional[str], ground_truth: str, wordnet=None) -> Optional[str]:
    """"exact", "synonym" or None (wrong). Numbers (`"text": 2` from other tools) compare as their
    text; the official script would stop with an AttributeError."""
    gt = ("" if ground_truth is None else str(ground_truth)).lower()
    pred = ("" if prediction is None else str(prediction)).lower()
    if pred == gt:
        return "exact"
    return "synonym" if are_synonyms(gt, pred, wordnet) else None


def is_correct(prediction: Optional[str], ground_truth: str, wordnet=None) -> bool:
    return match_kind(prediction, ground_truth, wordnet) is not None


def score_records(
    records: dict[str, dict[str, Any]],
    questions: Optional[dict[str, dict[str, Any]]] = None,
    wordnet=None,
) -> dict[str, Any]:
    """Score deduplicated answer records (question id -> record)."""
    correct: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unknown, failed, synonyms, scored = [], 0, 0, []
    for qid, rec in records.items():
        reference = questions.get(qid) if questions is not None else rec
        subset = lrs_subset(qid)
        if (
            reference is None
            or not reference.get("ground_truth")
            or not reference.get("category")
            or subset not in LRS_SUBSETS
        ):
            unknown.append(qid)
            continue
        category = str(reference["category"])
        answered = rec.get("status") != STATUS_FAILED
        failed += not answered
        kind = match_kind(rec.get("text"), reference["ground_truth"], wordnet) if answered else None
        ok = kind is not None
        synonyms += kind == "synonym"
        total[subset][category] += 1
        correct[subset][category] += ok
        scored.append(rec)

    subsets = {}
    for subset in LRS_SUBSETS:
        if subset not in total:
            continue
        cats = sorted(total[subset])
        acc = {c: 100.0 * correct[subset][c] / total[subset][c] for c in cats}
        n = sum(total[subset].values())
        n_correct = sum(correct[subset].values())
        subsets[subset] = {
            "AA": sum(acc.values()) / len(acc),
            "OA": 100.0 * n_correct / n,
            "n": n,
            "correct": n_correct,
            "categories": acc,
            "category_counts": {c: total[subset][c] for c in cats},
        }
    n_all = sum(s["n"] for s in subsets.values())
    doc = {
        "benchmark": "lrs",
        "subsets": subsets,
        "mean_AA": sum(s["AA"] for s in subsets.values()) / len(subsets) if subsets else None,
        "OA": 100.0 * sum(s["correct"] for s in subsets.values()) / n_all if n_all else None,
        "n": n_all,
        "n_failed": failed,
        "n_synonym_matches": synonyms,
        "n_unknown": len(unknown),
        "unknown_ids": unknown[:20],
        "focus": focus_summary(scored),
        "cost": cost_summary(scored),
    }
    if questions is not None:
        doc["n_missing"] = sum(1 for q in questions if q not in records)
    return doc


def load_questions(path: Path) -> dict[str, dict[str, Any]]:
    return {item.question_id: item.record for item in read_lrs(path) if item.error is None}


def score_file(answers: Path, questions: Optional[Path] = None, wordnet=None) -> dict[str, Any]:
    """Score one answers JSONL; adds file-level counts (duplicates, malformed lines) and the mode."""
    data = read_answers(answers)
    doc = score_records(data.records, load_questions(questions) if questions else None, wordnet)
    doc["answers"] = str(answers)
    doc["mode"] = run_label(data.records.values(), Path(answers).stem)
    doc["n_lines"] = data.n_lines
    doc["n_duplicates"] = data.n_duplicates
    doc["n_malformed"] = len(data.malformed)
    doc["malformed"] = data.malformed[:20]
    return doc


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(doc: dict[str, Any]) -> str:
    """Markdown: one table of per-category accuracy per subset, then the summary lines."""
    lines = [f"LRS-VQA ({doc.get('mode', '')}): {doc.get('answers', '')}", ""]
    lines += ["| subset | category | n | acc % |", "|---|---|---:|---:|"]
    for subset, s in doc["subsets"].items():
        for cat, acc in s["categories"].items():
            lines.append(f"| {subset} | {cat} | {s['category_counts'][cat]} | {acc:.2f} |")
    lines += ["", "| subset | n | AA % | OA % |", "|---|---:|---:|---:|"]
    for subset, s in doc["subsets"].items():
        lines.append(f"| {subset} | {s['n']} | {s['AA']:.2f} | {s['OA']:.2f} |")
    lines.append(f"| mean | {doc['n']} | {_pct(doc['mean_AA'])} | {_pct(doc['OA'])} |")
    focus, cost = doc["focus"], doc["cost"]
    lines += [
        "",
        f"focus recall: {_pct(focus['recall'])} % of {focus['n_with_hbox']} boxed questions; "
        f"mean LLM vision tokens: {_fmt(cost['mean_llm_vision_tokens'])}; "
        f"mean seconds: {_fmt(cost['mean_seconds'], 3)}",
        _counts_line(doc),
    ]
    return "\n".join(lines)


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _counts_line(doc: dict[str, Any]) -> str:
    keys = ("n_failed", "n_unknown", "n_duplicates", "n_malformed", "n_missing")
    return "records: " + ", ".join(f"{k[2:]} {doc[k]}" for k in keys if k in doc)
