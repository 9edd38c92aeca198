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


def _vrt_text(source: str, relative: int = 0, size: int = 16) -> str:
    return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="Byte" band="1">'
            f'<SimpleSource><SourceFilename relativeToVRT="{relative}">{source}</SourceFilename>'
            '<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')


def _vrt(path, source: str, size: int = 16):
    path.write_text(_vrt_text(source, size=size))
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


def test_the_leaves_of_an_inline_vrt_source_are_in_the_key(tmp_path):
    """A VRT source given as inline <VRTDataset> text is no file (GDAL's list skips it): the key
    holds a hash of the text and, through it, the files it reads (relative to the outer VRT, as
    GDAL opens it), so rewriting such a leaf is seen and two inline texts never share a key."""
    from xml.sax.saxutils import escape

    (tmp_path / "sub").mkdir()
    leaf = _tif(tmp_path / "sub" / "leaf.tif", 10)
    other = _tif(tmp_path / "sub" / "leag.tif", 10)  # a name as long as the leaf's

    def inline(source: str, relative: int = 0) -> str:
        return escape(_vrt_text(source, relative))

    outer = _vrt(tmp_path / "outer.vrt", inline("sub/leaf.tif", relative=1))
    entries = _key(outer)[1]
    assert leaf in [e[0] for e in entries]
    assert [e[0] for e in entries].count("inline VRT") == 1
    before = _key(outer)
    time.sleep(0.01)
    _tif(leaf, 20)  # same size, new pixels, behind the inline text
    assert _key(outer) != before
    # two outer VRTs of the same size and name, inline texts naming different leaves
    a = _key(_vrt(tmp_path / "outer.vrt", inline(leaf)))
    b = _key(_vrt(tmp_path / "outer.vrt", inline(other)))
    assert {e for e in a[1] if e[0] == "inline VRT"} != {e for e in b[1] if e[0] == "inline VRT"}


def test_inline_vrt_text_as_the_raster_itself_is_refused(tmp_path):
    """The asked path is never opened as inline XML: RasterSource.open stats it first (no such
    file), and the access policy resolves it as a file name."""
    from lrs_focus.access import AccessPolicy
    from lrs_focus.errors import RasterError, RasterNotFound

    text = _vrt_text(_tif(tmp_path / "leaf.tif", 10))
    assert gdal.Open(text).RasterXSize == 16  # GDAL alone would open it
    with pytest.raises(RasterNotFound):
        RasterSource.open(text)
    with pytest.raises(RasterError):
        AccessPolicy(roots=(str(tmp_path),)).check(text)
