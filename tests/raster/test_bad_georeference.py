"""Issue 23: georeferencing and file names that used to end in `internal` get their own codes."""

from __future__ import annotations

import os

import pytest

from lrs_focus import cli, errors
from lrs_focus.raster import RasterSource
from lrs_focus.samples import write_synthetic_raster


@pytest.fixture
def small(tmp_path):
    return write_synthetic_raster(tmp_path / "small.tif", 64, 48, geotransform=None)


@pytest.mark.parametrize("side_car, text", [
    (".tfw", "inf\n0\n0\n-1\n0\n0\n"), (".tfw", "nan\n0\n0\n-1\nnan\n0\n"),
    (".tif.aux.xml", "<PAMDataset><GeoTransform>0,1,0,0,0,0</GeoTransform></PAMDataset>"),  # pixels of no area
])
def test_non_finite_or_degenerate_geotransform(small, side_car, text):
    (small.parent / ("small" + side_car)).write_text(text)
    with pytest.raises(errors.RasterError) as info:
        RasterSource.open(small)
    assert info.value.code == "bad_georeference" and "small.tif" in str(info.value)


@pytest.mark.parametrize("srs", ["/etc/passwd", "{folder}/crs.wkt"])
def test_aux_xml_srs_naming_a_file(small, srs):
    (small.parent / "crs.wkt").write_text('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                                          'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]]')
    srs = srs.format(folder=small.parent)
    (small.parent / "small.tif.aux.xml").write_text(
        f"<PAMDataset><SRS>{srs}</SRS><GeoTransform>0,1,0,0,0,-1</GeoTransform></PAMDataset>")
    with pytest.raises(errors.RasterError) as info:
        RasterSource.open(small)
    assert info.value.code == "bad_georeference" and srs in str(info.value)


def test_non_utf8_file_name_is_a_clear_error(small):
    name = os.path.join(os.fsencode(small.parent), b"caf\xe9.tif")
    os.rename(os.fsencode(small), name)
    with pytest.raises(errors.RasterError) as info:
        RasterSource.open(os.fsdecode(name))  # what argv gives: a surrogate-escaped str
    assert info.value.code == "bad_file_name" and "caf" in str(info.value)


def test_vrt_with_a_non_utf8_source_name_opens(small, tmp_path):
    """GDAL lists such a source as bytes: identity() (the feature cache's key) must not break."""
    from osgeo import gdal

    gdal.Translate(str(tmp_path / "plain.vrt"), str(small), format="VRT")
    os.rename(os.fsencode(small), os.path.join(os.fsencode(tmp_path), b"caf\xe9.tif"))
    (tmp_path / "latin.vrt").write_bytes((tmp_path / "plain.vrt").read_bytes().replace(b"small.tif", b"caf\xe9.tif"))
    src = RasterSource.open(tmp_path / "latin.vrt")
    path, files = src.identity()
    assert len(files) == 2 and all(isinstance(f[0], str) for f in files)


def test_cli_ask_reports_the_code_not_a_traceback(small, capsys):
    small.with_suffix(".tfw").write_text("inf\n0\n0\n-1\n0\n0\n")
    assert cli.main(["ask", str(small), "what is here?", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "error [bad_georeference]" in err and "Traceback" not in err
