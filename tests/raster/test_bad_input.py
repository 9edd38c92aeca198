"""Each kind of bad input raises its own error, and the message names the path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lrs_focus.errors import BandError, EmptyRaster, NotARaster, RasterNotFound, RasterUnreadable
from lrs_focus.raster import RasterSource
from lrs_focus.samples import write_synthetic_raster


def test_missing_path(tmp_path):
    path = tmp_path / "nope.tif"
    with pytest.raises(RasterNotFound, match="nope.tif: no such file"):
        RasterSource.open(path)


def test_missing_vsi_path():
    with pytest.raises(RasterNotFound, match="/vsimem/absent.tif"):
        RasterSource.open("/vsimem/absent.tif")


def test_directory(tmp_path):
    with pytest.raises(NotARaster, match=f"{tmp_path}: is a directory"):
        RasterSource.open(tmp_path)


def test_non_raster_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a raster\n")
    with pytest.raises(NotARaster, match="notes.txt: GDAL cannot open it as a raster"):
        RasterSource.open(path)


def test_truncated_tiff(tmp_path):
    path = write_synthetic_raster(tmp_path / "cut.tif", 1024, 1024, compress=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    with pytest.raises(RasterUnreadable, match="cut.tif: reading pixels failed"):
        RasterSource.open(path)


def test_zero_size(tmp_path):
    path = tmp_path / "empty.vrt"
    path.write_text('<VRTDataset rasterXSize="0" rasterYSize="10">'
                    '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>')
    with pytest.raises(EmptyRaster, match="empty.vrt: raster has zero size"):
        RasterSource.open(path)


def test_fewer_bands_than_asked(tmp_path):
    path = write_synthetic_raster(tmp_path / "two.tif", 64, 64, bands=2, rgb=False)
    with pytest.raises(BandError, match=r"two.tif: has 2 band\(s\), cannot read band\(s\) \[3\]"):
        RasterSource.open(path, bands=[1, 2, 3])
    with pytest.raises(BandError, match="two.tif: give 1 or 3 bands"):
        RasterSource.open(path, bands=[1, 2])


def test_cli_reports_error_code_and_path(tmp_path):
    missing = tmp_path / "gone.tif"
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "pyramid", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error [raster_not_found]" in proc.stderr and "gone.tif" in proc.stderr
