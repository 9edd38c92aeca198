"""`lrs-focus pyramid`, `lrs-focus sample` and `lrs-focus bench pyramid` end to end (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lrs_focus.pyramid import PyramidGeometry


def _cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_pyramid_json_on_sentinel2(sentinel2_vrt):
    doc = json.loads(_cli("pyramid", sentinel2_vrt, "--json", "--read").stdout)
    geo = PyramidGeometry(1947, 1933)
    assert doc["thumbnail"]["size"] == list(geo.thumbnail_size)
    assert [lv["grid"] for lv in doc["levels"]] == [list(lv.grid) for lv in geo.levels]
    assert [lv["scale"] for lv in doc["levels"]] == [lv.scale for lv in geo.levels]
    assert all({"scale", "size", "grid", "resized", "overview"} <= set(lv) for lv in doc["levels"])
    assert "UTM zone 18N" in doc["crs_wkt"] and doc["raster"]["data_type"] == "UInt16"
    assert doc["timings"]["thumbnail_and_base"] > 0


def test_pyramid_text_and_small_tiles(sentinel2_vrt):
    out = _cli("pyramid", sentinel2_vrt, "--tile-size", "28", "--tokens-per-tile", "1").stdout
    assert "thumbnail: 28 x 28" in out and "level" in out


def test_sample_commands(tmp_path):
    doc = json.loads(_cli("sample", "synthetic", "--size", "700x300", "--overviews", "--json",
                          "--out", tmp_path / "s.tif").stdout)
    pyr = json.loads(_cli("pyramid", doc["path"], "--json").stdout)
    assert pyr["image"]["size"] == [300, 700] and len(pyr["raster"]["overviews"]) == 1
    vrt = json.loads(_cli("sample", "sentinel2", "--json", "--out", tmp_path / "s2.vrt").stdout)
    assert json.loads(_cli("pyramid", vrt["path"], "--json").stdout)["image"]["size"] == [1947, 1933]


@pytest.mark.slow
def test_bench_pyramid_quick(tmp_path):
    doc = json.loads(_cli("bench", "pyramid", "--json", "--sizes", "1200x900,2400x1800", "--tiles", "5",
                          "--cache-dir", tmp_path).stdout)
    names = [c["name"] for c in doc["cases"]]
    assert names == [f"{size} {path} {ovr}" for size in ("1200x900", "2400x1800") for path in ("gdal", "exact")
                     for ovr in ("overviews", "no-overviews")]
    for case in doc["cases"]:
        assert case["ours"]["peak_mb"] > 0 and case["ours"]["seconds"] > 0
        assert case["baseline"]["peak_mb"] > 0 and case["ratio"] > 0
        assert case["ours"]["peak_mb"] < 500  # the target, even for small rasters
    assert doc["cases"][0]["ours"]["overviews_seen"] >= 1 and doc["cases"][1]["ours"]["overviews_seen"] == 0
    assert all(c["pixels"] == "exact" for c in doc["cases"][2:4])


def test_bench_pyramid_reports_the_floor_and_the_ratio(tmp_path):
    """The exact path against one full-resolution read of every block with the same workers."""
    doc = json.loads(_cli("bench", "pyramid", "--quick", "--json", "--sizes", "900x700", "--paths", "exact",
                          "--no-baseline", "--workers", "2", "--repeat", "2", "--cache-dir", tmp_path).stdout)
    assert [c["name"] for c in doc["cases"]] == ["900x700 exact overviews", "900x700 exact no-overviews"]
    assert doc["repeat"] == 2
    for case in doc["cases"]:
        floor, ours = case["floor"], case["ours"]
        assert floor["seconds"] > 0 and floor["peak_mb"] > 0 and floor["workers"] == 2 and ours["workers"] == 2
        assert case["floor_ratio"] == round(ours["seconds"] / floor["seconds"], 2)
        for side in (floor, ours):  # the best of two runs
            assert len(side["runs_seconds"]) == 2 and side["seconds"] == min(side["runs_seconds"])
        # each run against the floor run just before it, and their median
        pairs = [round(o / f, 3) for o, f in zip(ours["runs_seconds"], floor["runs_seconds"])]
        assert case["paired_floor_ratios"] == pairs
        assert case["paired_floor_ratio"] == round(sum(pairs) / 2, 2)
        assert ours["tiles_per_level"][0] == 9 and len(ours["seconds_per_level"]) == len(ours["tiles_per_level"]) - 1


SIDES = "width and height must be 1..200,000"
SYNTHETIC = ["sample", "synthetic", "--out", "{tmp}/x.tif", "--size"]


@pytest.mark.parametrize("args, message", [
    (SYNTHETIC + ["0x0"], SIDES),
    (SYNTHETIC + ["1000000x1000000"], SIDES),
    (SYNTHETIC + ["150000x150000", "--bands", "64"], "GiB free"),
    (SYNTHETIC + ["100x100", "--dtype", "Foo"], "data type must be one of"),
    (SYNTHETIC + ["100x100", "--bands", "0"], "bands must be 1..64"),
    (["bench", "pyramid", "--sizes", "0x0", "--no-baseline", "--cache-dir", "{tmp}"], SIDES),
    (["bench", "memory", "--sizes", "5x5x5"], "size must be WIDTHxHEIGHT"),
    (["bench", "pyramid", "--quick", "--tiles", "-1", "--no-baseline", "--cache-dir", "{tmp}"], "--tiles must be >= 1"),
    (["bench", "pyramid", "--quick", "--repeat", "0", "--no-baseline", "--cache-dir", "{tmp}"], "--repeat must be >= 1"),
])
def test_sizes_and_sample_options_are_checked_before_any_write(tmp_path, args, message):
    """A typo in a size used to start a terabyte write or end in a GDAL traceback."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_synthetic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from lrs_focus import samples

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(samples, "_pattern_rows", boom)
    with pytest.raises(KeyboardInterrupt):
        samples.write_synthetic_raster(tmp_path / "x.tif", 300, 200)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, code", [
    (["sample", "sentinel2", "--out", "{tmp}/file.txt/s2.vrt"], "output_error"),
    (["sample", "synthetic", "--size", "64x64", "--out", "{tmp}/file.txt/x.tif"], "output_error"),
    (["keys", "{tmp}/file.txt/keys"], "io_error"),
])
def test_unwritable_outputs_are_errors_with_a_code_not_tracebacks(tmp_path, args, code):
    (tmp_path / "file.txt").write_text("a file where a folder is expected")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error [{code}]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
