"""Issue 23: `ask --heatmap/--out` never write over the input, nor through a planted link; `--json`
is strict JSON. In process (cli.main), tiny model: each run takes about a second."""

from __future__ import annotations

import json
import os

import pytest

from lrs_focus import cli
from lrs_focus.samples import write_synthetic_raster


@pytest.fixture
def raster(tmp_path):
    return write_synthetic_raster(tmp_path / "input.tif", 160, 120, geotransform=None)


def _ask(raster, *args):
    return cli.main(["ask", str(raster), "What is there?", "--model", "tiny", *map(str, args)])


def test_heatmap_naming_the_input_raster_is_refused(raster, capsys):
    before = raster.read_bytes()
    assert _ask(raster, "--heatmap", raster) == 2
    assert "error [output_error]" in capsys.readouterr().err
    assert raster.read_bytes() == before


def test_heatmap_naming_the_input_through_another_spelling_or_a_link_is_refused(raster, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path)
    before = raster.read_bytes()
    for spelling in (tmp_path / "sub" / ".." / "input.tif", tmp_path / "alias" / "input.tif"):
        assert _ask(raster, "--heatmap", spelling) == 2
        assert "would overwrite the raster" in capsys.readouterr().err
    assert raster.read_bytes() == before


def test_out_naming_a_file_the_raster_reads_is_refused(tmp_path, capsys):
    """A VRT's source is an input too."""
    from osgeo import gdal

    source = write_synthetic_raster(tmp_path / "source.tif", 160, 120, geotransform=None)
    gdal.Translate(str(tmp_path / "mosaic.vrt"), str(source), format="VRT")
    before = source.read_bytes()
    assert _ask(tmp_path / "mosaic.vrt", "--heatmap", source) == 2
    assert "would overwrite" in capsys.readouterr().err and source.read_bytes() == before


def test_the_same_file_named_twice_is_refused(raster, tmp_path, capsys):
    assert _ask(raster, "--out", tmp_path / "t.gpkg", "--out", tmp_path / "t.gpkg") == 2
    assert "named twice" in capsys.readouterr().err


def test_a_symlink_planted_at_the_heatmap_path_is_replaced_not_followed(raster, tmp_path, capsys):
    victim = tmp_path / "victim.tif"
    victim.write_bytes(b"precious")
    link = tmp_path / "heat.tif"
    link.symlink_to(victim)
    assert _ask(raster, "--heatmap", link, "--out", tmp_path / "t.gpkg") == 0, capsys.readouterr().err
    assert victim.read_bytes() == b"precious"
    from osgeo import gdal

    assert not link.is_symlink() and gdal.Open(str(link)).RasterCount == 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary file left behind"


def test_a_symlink_planted_at_the_out_path_is_replaced_not_followed(raster, tmp_path, capsys):
    victim = tmp_path / "victim.gpkg"
    victim.write_bytes(b"precious")
    link = tmp_path / "t.gpkg"
    link.symlink_to(victim)
    assert _ask(raster, "--out", link) == 0, capsys.readouterr().err
    assert victim.read_bytes() == b"precious" and not link.is_symlink()


@pytest.mark.parametrize("option, value", [("--window", "0,0,inf,100"), ("--stretch", "0,nan"),
                                           ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "1e300"),
                                           ("--timeout", "0")])
def test_non_finite_numbers_are_usage_errors(raster, capsys, option, value):
    with pytest.raises(SystemExit) as info:
        _ask(raster, option, value, "--endpoint", "tcp://127.0.0.1:9")
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_json_never_prints_nan_or_infinity(capsys):
    from argparse import Namespace

    from lrs_focus.commands._output import emit

    emit(Namespace(json=True), {"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": -float("inf")}}, str)
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} printed")) == \
        {"a": None, "b": [None, 1.5], "c": {"d": None}}
