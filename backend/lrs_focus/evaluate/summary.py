"""Cost and focus figures shared by both scorers: what accuracy was bought with."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

from .answers import STATUS_OK

COUNT_KEYS = ("llm_vision_tokens", "vit_tokens", "tiles_encoded", "prefill_tflops")


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def cost_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Means over successful answers: vision tokens into the LLM, ViT tokens, tiles, seconds."""
    ok = [r for r in records if r.get("status", STATUS_OK) == STATUS_OK]
    out: dict[str, Any] = {"n": len(ok)}
    for key in COUNT_KEYS:
        out[f"mean_{key}"] = _mean([float(r["counts"][key]) for r in ok if key in (r.get("counts") or {})])
    out["mean_seconds"] = _mean([float(r["seconds"]) for r in ok if r.get("seconds") is not None])
    return out


def focus_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Focus recall: share of answered questions with a box whose box meets a kept tile (percent).

    Records whose run kept no tiles (thumbnail mode) have `covers_hbox` None and are not counted.
    """
    flags = [r.get("covers_hbox") for r in records if r.get("status", STATUS_OK) == STATUS_OK]
    judged = [f for f in flags if f is not None]
    return {
        "recall": 100.0 * sum(bool(f) for f in judged) / len(judged) if judged else None,
        "n_with_hbox": len(judged),
        "n_covered": sum(bool(f) for f in judged),
    }


def run_label(records: Iterable[dict[str, Any]], default: str) -> str:
    """The mode most records of a file were answered in (a file holds one mode), else `default`."""
    modes = Counter(r.get("mode") for r in records if r.get("mode"))
    return modes.most_common(1)[0][0] if modes else default
