"""Qwen2.5-VL / Qwen3-VL passes bounded by memory as LLaVA's are (pass_memory.vl_memory_limits), and
the estimate per token against what our code's passes hold at Qwen2.5-VL-7B's real widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrs_focus import errors, pass_memory
from lrs_focus.engine import AskOptions, Engine

QUESTION = "How many ships are docked at the northern pier?"


@pytest.fixture(scope="module")
def vl_engine():
    return Engine("tiny-qwen2.5-vl", device="cpu", cache_mb=64)


def test_focus_passes_and_the_answer_fit_the_memory_budget(vl_engine, sentinel2_vrt, monkeypatch):
    """With 14 MB (LRS_FOCUS_PASS_MEMORY_MB), all-tiles takes the base level (its finest level's focus
    pass would not fit), scores it within the limit to drop tiles, paper mode stops zooming, the
    answer is bounded by llm_pass_tokens; the trace gives every figure."""
    monkeypatch.setenv(pass_memory.ENV, "14")
    doc = vl_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="all-tiles", max_new_tokens=2, max_length=2000))
    budget, counts, trace = doc["trace"]["budget"], doc["counts"], doc["trace"]
    assert budget["memory_budget_bytes"] == 14 << 20
    assert 0 < budget["rfm_pass_tokens"] < budget["positions"] and 0 < budget["llm_pass_tokens"] < 8192
    capped = trace["all_tiles_capped"]
    assert capped["level_used"] < capped["finest_level"]
    assert capped["tiles"] * 256 > budget["rfm_pass_tokens"] > capped["pass_limit"]  # the finest level would not fit
    assert counts["rfm_passes"] == 1 and 0 < counts["rfm_max_pass_tokens"] <= budget["rfm_pass_tokens"]
    assert counts["vision_tokens_dropped"] > 0 and counts["llm_sequence_tokens"] <= 2000

    doc = vl_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="paper", max_new_tokens=2))
    budget, counts, trace = doc["trace"]["budget"], doc["counts"], doc["trace"]
    stop = trace["zoom_stopped"]
    assert stop["pass_entries"] > stop["pass_limit"] and trace["stopped_at"] < stop["level"]
    assert 0 < counts["rfm_max_pass_tokens"] <= budget["rfm_pass_tokens"]
    # the answer's room is what the memory holds, less the text and the thumbnail
    assert 0 < budget["llm_pass_tokens"] - budget["text_tokens"] - budget["vision_budget"] <= 256
    assert counts["llm_sequence_tokens"] <= budget["llm_pass_tokens"]


def test_questions_that_cannot_fit_are_refused_with_the_figures(vl_engine, sentinel2_vrt, monkeypatch):
    monkeypatch.setenv(pass_memory.ENV, "8")  # the answer fits its text and thumbnail, not the base focus pass
    with pytest.raises(errors.BadOptions, match=r"focus pass over 9 tiles of level 0 needs \d+ tokens, but 8 MB "
                                                r"of memory hold \d+ tokens of this model"):
        vl_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="paper", max_new_tokens=2))
    assert vl_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="thumbnail", max_new_tokens=2))["answer"] is not None
    monkeypatch.setenv(pass_memory.ENV, "1")
    with pytest.raises(errors.BadOptions, match=r"answer pass for the text and thumbnail needs \d+ tokens, but 1 MB"):
        vl_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="thumbnail", max_new_tokens=2))


def test_the_estimate_bounds_what_our_passes_hold_at_7b_widths():
    """One decoder layer of Qwen2.5-VL-7B's text config in bf16 on the CPU (pass_memory_probe.py):
    the focus pass (focus layer 0: its attention and our hook) and the answer's prefill, each at two
    lengths; the bytes per token they hold (slope of the peak resident memory) are at most
    pass_memory's estimate, and the estimate at most 3x them."""
    probe = Path(__file__).with_name("pass_memory_probe.py")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # the probe's docstring says why
    proc = subprocess.run([sys.executable, str(probe), "focus", "128", "640", "answer", "32", "128"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["phase"] for r in rows] == ["focus", "answer"]
    for r in rows:
        assert 0 < r["measured_per_token"] <= r["estimate_per_token"] <= 3 * r["measured_per_token"], r
