"""The cache key sees every file GDAL reads (through nested VRTs) and every rewrite (inode change
time); declared block sizes and FIFOs are refused before GDAL reads (issue 20)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from osgeo import gdal

from lrs_focus.errors import NotARaster, RasterTooLarge
from lrs_focus.raster import RasterSource

gdal.UseExceptions()


def _tif(path, value: int, size: int = 16):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 1, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(np.full((size, size), value, dtype=np.uint8))
    ds = None
    return str(path)


def _vrt(path, source: str, size: int = 16):
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="Byte" band="1">'
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
                    '<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    return str(path)


def _key(path):
    with RasterSource.open(path) as src:
        return src.identity()


def test_the_leaf_of_a_nested_vrt_is_in_the_key(tmp_path):
    leaf = _tif(tmp_path / "leaf.tif", 10)
    middle = _vrt(tmp_path / "middle.vrt", leaf)
    top = _vrt(tmp_path / "top.vrt", middle)
    names = [entry[0] for entry in _key(top)[1]]
    assert leaf in names and middle in names
    before = _key(top)
    time.sleep(0.01)
    _tif(leaf, 20)  # same size, new pixels
    assert _key(top) != before


def test_a_same_size_rewrite_with_the_mtime_put_back_changes_the_key(tmp_path):
    path = _tif(tmp_path / "a.tif", 10)
    st = os.stat(path)
    before = _key(path)
    time.sleep(0.01)
    _tif(path, 99)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # what the old key saw
    assert _key(path) != before


def test_a_dag_of_vrts_is_listed_once_per_file(tmp_path):
    below = _tif(tmp_path / "leaf.tif", 1)
    for k in range(8):
        text = '<VRTDataset rasterXSize="16" rasterYSize="16"><VRTRasterBand dataType="Byte" band="1">'
        text += "".join(f'<SimpleSource><SourceFilename relativeToVRT="0">{below}</SourceFilename>'
                        '<SourceBand>1</SourceBand></SimpleSource>' for _ in range(20))
        below = tmp_path / f"l{k}.vrt"
        below.write_text(text + "</VRTRasterBand></VRTDataset>")
    t0 = time.monotonic()
    ds = gdal.OpenEx(str(below), gdal.OF_RASTER)
    from lrs_focus.raster import dataset_files

    assert len(dataset_files(ds)) == 9
    assert time.monotonic() - t0 < 5


def test_a_block_larger_than_the_limit_is_refused_at_open(tmp_path):
    path = tmp_path / "bigtile.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 65536, 65536, 1, gdal.GDT_Byte,
                                              ["TILED=YES", "BLOCKXSIZE=65536", "BLOCKYSIZE=65536", "SPARSE_OK=TRUE"])
    ds = None
    assert path.stat().st_size < 1000
    with pytest.raises(RasterTooLarge, match="65536 x 65536"):
        RasterSource.open(str(path))


def test_a_fifo_given_as_the_raster_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.tif")
    with pytest.raises(NotARaster, match="FIFO"):
        RasterSource.open(str(tmp_path / "pipe.tif"))


def test_ask_with_a_fifo_as_the_raster_ends_instead_of_hanging(tmp_path):
    """`lrs-focus ask FIFO --out x.geojson` used to block in the --out check's GDAL open."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "pipe.tif")
    done = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "ask", str(tmp_path / "pipe.tif"), "q", "--model",
                           "tiny", "--out", str(tmp_path / "x.geojson")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2 and "not_a_raster" in done.stderr, done.stderr
