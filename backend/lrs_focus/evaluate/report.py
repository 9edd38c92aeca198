"""Comparison of runs (one per mode): markdown table, CSV, and accuracy vs vision tokens (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

from .records import LRS_SUBSETS


def comparison_rows(benchmark: str, docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per scored run; the headline number is "mean AA" (LRS) or "accuracy" (MME)."""
    rows = []
    for doc in docs:
        row: dict[str, Any] = {"mode": doc.get("mode", "")}
        if benchmark == "lrs":
            for subset in LRS_SUBSETS:
                row[f"{subset} AA"] = doc["subsets"].get(subset, {}).get("AA")
            row["mean AA"] = doc.get("mean_AA")
            row["OA"] = doc.get("OA")
        else:
            for cat, acc in doc.get("categories", {}).items():
                row[cat] = acc
            row["accuracy"] = doc.get("accuracy")
        row["focus recall"] = doc["focus"]["recall"]
        row["LLM vision tokens"] = doc["cost"]["mean_llm_vision_tokens"]
        row["tiles encoded"] = doc["cost"]["mean_tiles_encoded"]
        row["seconds"] = doc["cost"]["mean_seconds"]
        row["n"] = doc["n"]
        row["failed"] = doc["n_failed"]
        rows.append(row)
    return rows


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    columns = _columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: ("" if r.get(c) is None else r.get(c)) for c in columns} for r in rows])
    return path


def plot_accuracy_vs_tokens(benchmark: str, rows: Sequence[dict[str, Any]], path: Path) -> Optional[Path]:
    """One point per mode; None when no run has both numbers."""
    key = "mean AA" if benchmark == "lrs" else "accuracy"
    points = [r for r in rows if r.get(key) is not None and r.get("LLM vision tokens") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in points:
        ax.scatter(r["LLM vision tokens"], r[key], s=45, label=r["mode"])
    values = [r[key] for r in points]
    low, high = min(values), max(values)
    if high - low < 2.0:  # identical accuracies: show a readable band instead of +-0.05
        ax.set_ylim(max(0.0, low - 1.0), high + 1.0)
    ax.legend(title="mode", fontsize=8)
    ax.set_xlabel("mean vision tokens into the LLM per question")
    ax.set_ylabel("mean AA (%)" if benchmark == "lrs" else "accuracy (%)")
    ax.set_title({"lrs": "LRS-VQA", "mme": "MME-RealWorld-RS"}.get(benchmark, benchmark))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(benchmark: str, docs: Sequence[dict[str, Any]], out_dir: Path, stem: Optional[str] = None) -> dict[str, Any]:
    """Write <stem>.md, .csv and .png into out_dir; returns their paths and the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{benchmark}-report"
    rows = comparison_rows(benchmark, docs)
    table = markdown_table(rows)
    md = out_dir / f"{stem}.md"
    md.write_text(table + "\n", encoding="utf-8")
    csv_path = write_csv(rows, out_dir / f"{stem}.csv")
    png = plot_accuracy_vs_tokens(benchmark, rows, out_dir / f"{stem}.png")
    return {"markdown": str(md), "csv": str(csv_path), "plot": str(png) if png else None, "table": table}
