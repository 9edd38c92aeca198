"""Greedy generation end to end from the real Sentinel-2 raster with the tiny model."""

from __future__ import annotations

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

    stages = []
    with pytest.raises(errors.Cancelled):
        tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(), progress=lambda s, *a: stages.append(s), should_stop=stop)
    assert stages == ["open", "pyramid"]


def test_bad_options_and_missing_raster(tiny_engine, tmp_path):
    with pytest.raises(errors.BadOptions):
        tiny_engine.ask("x.tif", QUESTION, AskOptions(mode="zoom"))
    with pytest.raises(errors.RasterNotFound):
        tiny_engine.ask(str(tmp_path / "missing.tif"), QUESTION)
