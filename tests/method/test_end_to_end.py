"""Greedy generation end to end from the real Sentinel-2 raster with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_focus import errors
from lrs_focus.engine import AskOptions

QUESTION = "How many ships are docked at the northern pier?"


@pytest.mark.parametrize("mode", ["paper", "released", "thumbnail"])
def test_ask_sentinel2(tiny_engine, sentinel2_vrt, mode):
    stages = []
    res = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode=mode, max_new_tokens=8),
                          progress=lambda stage, level, frac, msg: stages.append(stage), job_id="j1")
    assert isinstance(res["answer"], str)
    assert res["model"]["random_weights"] is True and res["model"]["name"] == "tiny"
    assert stages[0] == "open" and stages[-1] == "done" and "generate" in stages
    levels = res["trace"]["levels"]
    assert res["trace"]["mode"] == mode and len(levels) >= 2
    encoded = sum(t["encoded"] for lv in levels for t in lv["tiles"])
    counts = res["counts"]
    assert counts["tiles_encoded"] == encoded
    assert counts["vit_tokens"] == (encoded + 1) * 64
    assert counts["llm_vision_tokens"] >= 64 and counts["prefill_tflops"] > 0
    feats = res["features"]["features"]
    assert len(feats) == encoded  # features = the focused (encoded) tiles
    for lv in levels:  # a level lists the tiles it encoded, and only when the run reached it
        assert bool(lv["tiles"]) == lv["reached"] and all(t["encoded"] for t in lv["tiles"])
    assert "UTM zone 18N" in res["crs_wkt"]
    assert all(f["properties"]["job_id"] == "j1" for f in feats)
    if mode == "thumbnail":
        assert encoded == 0 and counts["llm_vision_tokens"] == 64 and feats == []
    else:
        assert "focus" in stages and "encode" in stages
        kept = [t for lv in levels for t in lv["tiles"] if t["kept"]]
        assert kept and all(t["encoded"] for t in kept)
    if mode == "released":
        assert res["trace"]["stopped_at"] == 1


@pytest.mark.slow
def test_greedy_is_deterministic_and_all_tiles_keeps_everything(tiny_engine, sentinel2_vrt):
    opts = AskOptions(mode="paper", max_new_tokens=6)
    a = tiny_engine.ask(str(sentinel2_vrt), QUESTION, opts)
    b = tiny_engine.ask(str(sentinel2_vrt), QUESTION, opts)
    assert a["answer"] == b["answer"] and a["trace"] == b["trace"]
    full = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="all-tiles", max_new_tokens=2, max_levels=2))
    lv = full["trace"]["levels"][1]
    assert full["counts"]["tiles_encoded"] == lv["grid"][0] * lv["grid"][1]
    assert all(t["kept"] for t in lv["tiles"])


def test_should_stop_cancels_at_a_stage_boundary(tiny_engine, sentinel2_vrt):
    polls = []

    def stop():
        polls.append(1)
        return len(polls) >= 3  # let open and pyramid pass, stop before encoding

    stages, messages = [], []

    def progress(stage, level, fraction, message):
        stages.append(stage)
        messages.append(message)

    with pytest.raises(errors.Cancelled):
        tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(), progress=progress, should_stop=stop)
    assert stages == ["open", "pyramid"]
    assert messages[1] == "pyramid of a 1933 x 1947 px raster"  # width first, as everywhere else


def test_bad_options_and_missing_raster(tiny_engine, tmp_path):
    with pytest.raises(errors.BadOptions):
        tiny_engine.ask("x.tif", QUESTION, AskOptions(mode="zoom"))
    with pytest.raises(errors.RasterNotFound):
        tiny_engine.ask(str(tmp_path / "missing.tif"), QUESTION)


def test_released_mode_from_a_checkpoint_in_the_released_layout(tiny_engine, sentinel2_vrt, tmp_path):
    """The project writes the released key layout; loading it back answers exactly as in memory."""
    import json

    from lrs_focus.engine import Engine
    from lrs_focus.model.loading import save_released

    ckpt = save_released(tiny_engine.model, tiny_engine.tokenizer, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["mm_projector_type"] == "mlp2x_gelu_after_distillpruner"
    loaded = Engine(str(ckpt), device="cpu", dtype="float32", cache_mb=0)
    assert loaded.info["random_weights"] is False
    opts = AskOptions(mode="released", max_new_tokens=8)
    a = tiny_engine.ask(str(sentinel2_vrt), QUESTION, opts)
    b = loaded.ask(str(sentinel2_vrt), QUESTION, opts)
    a["counts"].pop("tiles_from_cache"), b["counts"].pop("tiles_from_cache")  # tiny_engine's cache is warm
    assert a["answer"] == b["answer"] and a["trace"] == b["trace"] and a["counts"] == b["counts"]
    assert b["options"]["pixels"] == "exact"


def test_released_mode_in_float32_rounds_the_rotary_tables_to_float16(tiny_models):
    import torch

    model, _ = tiny_models["qwen2"]
    x = torch.zeros(1, 5, model.config.hidden_size)
    pos = torch.tensor([[0, 1, 700, 5000, 31000]])
    cos, sin = model.llm.model.rotary_emb(x, pos)
    with model.float16_rotary(True):
        cos16, sin16 = model.llm.model.rotary_emb(x, pos)
        rcos, _ = model.rfm.rotary_emb(x, pos)
    assert torch.equal(cos16, cos.half().float()) and torch.equal(sin16, sin.half().float())
    assert torch.equal(rcos, model.rfm.rotary_emb(x, pos)[0].half().float())
    assert not torch.equal(cos16, cos)
    assert torch.equal(model.llm.model.rotary_emb(x, pos)[0], cos)  # hooks removed afterwards


def test_cli_all_tiles_past_max_length_keeps_the_question_and_reports_drops(sentinel2_vrt):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lrs_focus.cli", "ask", str(sentinel2_vrt), QUESTION, "--model", "tiny",
         "--mode", "all-tiles", "--max-length", "600", "--max-new-tokens", "4", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    doc = json.loads(out.stdout)
    counts, budget = doc["counts"], doc["trace"]["budget"]
    assert counts["llm_sequence_tokens"] <= 600 and counts["vision_tokens_dropped"] > 0
    # every text token is in: sequence = text + thumbnail + ':' + the vision tokens that were kept
    assert counts["llm_sequence_tokens"] == budget["text_tokens"] + 64 + 1 + (counts["llm_vision_tokens"] - 64)
    assert doc["question"] == QUESTION and budget["vision_tokens_dropped"] == counts["vision_tokens_dropped"]
    assert doc["trace"]["all_tiles_capped"]["limit"] == 320


def test_the_suffix_is_the_last_thing_the_llm_reads(tiny_engine, sentinel2_vrt, monkeypatch):
    """Whatever is dropped, the sequence ends with the question and the assistant prefix."""
    from lrs_focus.model.prompts import encode_prompt

    seen = {}
    original = tiny_engine.model.generate

    def spy(seq, tokenizer, max_new_tokens, **kw):
        seen["seq"] = seq
        return original(seq, tokenizer, max_new_tokens, **kw)

    monkeypatch.setattr(tiny_engine.model, "generate", spy)
    tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="paper", max_length=300, max_new_tokens=2))
    seq = seen["seq"]
    suffix = encode_prompt(tiny_engine.tokenizer, "chatml", QUESTION).suffix
    emb = tiny_engine.model.text_embeds(suffix)
    assert seq.length <= 300
    import torch

    assert torch.equal(seq.embeds[0, -len(suffix):], emb)


def test_window_keeps_raster_pixel_coordinates(tiny_engine, sentinel2_vrt):
    res = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(window=[900, 300, 1700, 1100], max_new_tokens=2))
    assert res["trace"]["window"] == [900, 300, 1700, 1100]
    for lv in res["trace"]["levels"]:
        for t in lv["tiles"]:
            x0, y0, x1, y1 = t["window"]
            assert 900 <= x0 < x1 <= 1700 and 300 <= y0 < y1 <= 1100
    hx0, hy0, hx1, hy1 = res["heatmap"]["window"]
    assert [hx0, hy0, hx1, hy1] == [900, 300, 1700, 1100]


@pytest.mark.parametrize("window, seen", [([0, 0, 800, 600], [0, 0, 800, 600]), ([0, 0, 1e6, 1e6], [0, 0, 1933, 1947])])
def test_a_window_at_the_raster_origin_is_named_in_the_trace(tiny_engine, sentinel2_vrt, window, seen):
    """The trace named the window only when it did not start at (0, 0)."""
    res = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="thumbnail", window=window, max_new_tokens=1))
    assert res["trace"]["window"] == seen
    assert "window" not in tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="thumbnail", max_new_tokens=1))["trace"]


@pytest.mark.parametrize("window", [[0, 0, 64, 6], [0, 0, 10, 1], [0, 0, 1, 10], [0, 0, 1933, 3]])
@pytest.mark.parametrize("mode", ["paper", "released"])
def test_strips_thinner_than_a_token_are_answered(tiny_engine, sentinel2_vrt, window, mode):
    """A 40:1 window truncated its token grid to zero rows: the RFM failed on an empty canvas."""
    res = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode=mode, window=window, max_new_tokens=1))
    assert res["counts"]["llm_vision_tokens"] > 64 and res["trace"]["levels"][0]["tiles"]
    assert res["heatmap"]["window"] == window  # not drawn past the strip


def test_heatmap_follows_the_kept_tiles(tiny_engine, sentinel2_vrt):
    from lrs_focus.score_map import decode_heatmap

    res = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(max_new_tokens=2))
    hm = res["heatmap"]
    grid = decode_heatmap(hm)
    assert list(grid.shape) == hm["shape"] and hm["level"] == res["trace"]["stopped_at"]
    x0, y0, x1, y1 = hm["window"]
    assert (x0, y0, x1, y1) == (0, 0, 1933, 1947)  # the whole raster, edge to edge, never past it
    assert np.isfinite(grid).all()  # the base level covers every cell
    rows, cols = grid.shape
    final = res["trace"]["levels"][hm["level"]]
    best = min((t for t in final["tiles"] if t["kept"]), key=lambda t: t["rank"])
    bx0, by0, bx1, by1 = best["window"]
    cells = grid[int((by0 - y0) / (y1 - y0) * rows):int(np.ceil((by1 - y0) / (y1 - y0) * rows)),
                 int((bx0 - x0) / (x1 - x0) * cols):int(np.ceil((bx1 - x0) / (x1 - x0) * cols))]
    assert np.nanmax(cells) >= np.nanpercentile(grid, 90)  # the top-ranked kept tile is hot


def test_cancel_during_generation_stops_within_a_token(tiny_engine, sentinel2_vrt):
    state = {"generating": False, "polls_after": 0}

    def progress(stage, level, frac, msg):
        state["generating"] = stage == "generate"

    def stop():
        if state["generating"]:
            state["polls_after"] += 1
            return state["polls_after"] >= 3  # stage boundary, then the first generated tokens
        return False

    with pytest.raises(errors.Cancelled, match="forward pass"):
        tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="thumbnail", max_new_tokens=4000),
                        progress=progress, should_stop=stop)
    # the cancel is polled before every block of the prefill and of each decoding step: decoding ended
    # at the block where the cancel came (the third poll), not after 4,000 tokens
    assert state["polls_after"] == 3
