"""RasterSource: band choice, stretch, masks, resampled windowed reads, no full-resolution reads."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from lrs_focus.pyramid import ImagePyramid, PyramidConfig
from lrs_focus.raster import STATS_LONG_SIDE, RasterSource

gdal.UseExceptions()


def test_sentinel2_vrt(sentinel2_vrt):
    src = RasterSource.open(sentinel2_vrt)
    assert (src.height, src.width) == (1947, 1933)
    assert src.bands == (1, 2, 3) and src.data_type == "UInt16"
    assert "UTM zone 18N" in src.crs_wkt
    assert src.geotransform[1] == 10.0 and src.geotransform[5] == -10.0
    ds = gdal.Open(str(sentinel2_vrt))
    full = ds.ReadAsArray().astype(np.float64)  # small scene: a full read is fine in a test
    for i, stretch in enumerate(src.stretch):
        lo, hi = np.percentile(full[i], [2, 98])
        assert abs(stretch.low - lo) < 0.05 * (hi - lo) and abs(stretch.high - hi) < 0.05 * (hi - lo)
    tile = src.read_rgb((0, 0, 336, 336), (336, 336))
    assert tile.dtype == np.uint8 and tile.shape == (336, 336, 3)
    assert 20 < tile.mean() < 235 and tile.std() > 10  # stretched, not black or saturated


def test_native_size_read_is_exact(rasters):
    src = RasterSource.open(rasters["rgb8"])
    ds = gdal.Open(str(rasters["rgb8"]))
    got = src.read_rgb((672, 336, 1008, 672), (336, 336))
    want = ds.ReadAsArray(672, 336, 336, 336).transpose(1, 2, 0)
    np.testing.assert_array_equal(got, want)


def test_finest_tile_equals_gdal_window(rasters):
    # 1344 x 1344: the s=1 level is exactly 4 x 4 tiles of 336, no resize: tiles are raw windows
    src = RasterSource.open(rasters["rgb8"])
    pyr = ImagePyramid(src)
    fine = pyr.geometry.levels[-1]
    assert fine.resized == (1344, 1344) and fine.grid == (4, 4)
    ds = gdal.Open(str(rasters["rgb8"]))
    np.testing.assert_array_equal(pyr.tile(fine, 2, 1), ds.ReadAsArray(336, 672, 336, 336).transpose(1, 2, 0))


def test_downsampled_tile_matches_gdal_resampling(rasters):
    src = RasterSource.open(rasters["rgb8"])
    pyr = ImagePyramid(src)
    base = pyr.geometry.levels[0]  # 1008 px: 4/3 source px per tile px
    ds = gdal.Open(str(rasters["rgb8"]))
    want = ds.ReadAsArray(448, 0, 448, 448, buf_xsize=336, buf_ysize=336,
                          resample_alg=gdal.GRIORA_Bilinear).transpose(1, 2, 0)
    got = pyr.tile(base, 0, 1)
    assert pyr.geometry.tile_window(base, 0, 1) == (448, 0, 896, 448)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_padding_and_thumbnail(rasters):
    src = RasterSource.open(rasters["rgb8_ovr"])  # 3000 wide x 2000 high
    cfg = PyramidConfig(pad_rgb=(7, 8, 9))
    pyr = ImagePyramid(src, cfg)
    th = pyr.thumbnail()
    assert pyr.geometry.thumbnail_size == (224, 336)
    assert (th[224:] == (7, 8, 9)).all() and not (th[:224] == (7, 8, 9)).all(axis=-1).any()
    level = pyr.geometry.levels[1]  # 1008 x 1512, grid 3 x 5: right column partly padding
    ch, cw = pyr.geometry.tile_content(level, 0, 4)
    assert (ch, cw) == (336, 1512 - 4 * 336)
    tile = pyr.tile(level, 0, 4)
    assert (tile[:, cw:] == (7, 8, 9)).all()


def test_grey_palette_and_explicit_bands(rasters):
    grey = RasterSource.open(rasters["grey"])
    g = grey.read_rgb((0, 0, 100, 100), (50, 50))
    assert grey.bands == (1,) and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()

    pal = RasterSource.open(rasters["palette"])
    p = pal.read_rgb((0, 0, 300, 200), (20, 30))
    assert pal.palette is not None
    assert tuple(p[10, 2]) == (255, 0, 0) and tuple(p[10, 10]) == (0, 255, 0)
    assert tuple(p[10, 17]) == (0, 0, 255) and tuple(p[10, 28]) == (255, 255, 0)

    rgb = RasterSource.open(rasters["rgb8"])
    swapped = RasterSource.open(rasters["rgb8"], bands=[3, 2, 1])
    a = rgb.read_rgb((0, 0, 64, 64), (64, 64))
    b = swapped.read_rgb((0, 0, 64, 64), (64, 64))
    np.testing.assert_array_equal(a[..., ::-1], b)

    four = RasterSource.open(rasters["four"])  # no colour interpretation: bands 1-2-3
    assert four.bands == (1, 2, 3)
    assert RasterSource.open(rasters["four"], bands=[4]).bands == (4,)


def test_nodata_excluded_and_painted(rasters):
    src = RasterSource.open(rasters["nodata"])
    for stretch in src.stretch:
        assert stretch.high < 3000  # 65535 nodata pixels would push the 98th percentile up
    out = src.read_rgb((0, 0, 400, 400), (100, 100), pad_rgb=(1, 2, 3))
    assert (out[:50, :50] == (1, 2, 3)).all()
    assert out[60:, 60:].std() > 10


def test_nan_float_raster_reads_without_warnings(tmp_path):
    """NaN pixels went through the 8-bit cast: a RuntimeWarning on every read of a float raster."""
    import warnings

    path = str(tmp_path / "nan.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 64, 48, 1, gdal.GDT_Float32)
    data = np.linspace(0, 100, 64 * 48, dtype=np.float32).reshape(48, 64)
    data[:10] = np.nan
    ds.GetRasterBand(1).WriteArray(data)
    ds = None
    src = RasterSource.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = src.read_rgb((0, 0, 64, 48), (48, 64), pad_rgb=(1, 2, 3))
    assert (out[:10] == (1, 2, 3)).all() and out[10:].std() > 10


def test_vsimem_path(rasters):
    data = rasters["grey"].read_bytes()
    gdal.FileFromMemBuffer("/vsimem/lrs_grey.tif", data)
    try:
        src = RasterSource.open("/vsimem/lrs_grey.tif")
        assert (src.height, src.width) == (500, 700)
        assert src.read_rgb((0, 0, 700, 500), (50, 70)).shape == (50, 70, 3)
    finally:
        gdal.Unlink("/vsimem/lrs_grey.tif")


def test_overview_choice_matches_gdal(rasters):
    src = RasterSource.open(rasters["rgb8_ovr"])
    assert src.overview_sizes[0] == (1000, 1500)
    assert src.overview_for(1.0) is None and src.overview_for(1.5) is None
    assert src.overview_for(1.7) == 0 and src.overview_for(2.5) == 0 and src.overview_for(4.0) == 1
    ds = gdal.Open(str(rasters["rgb8_ovr"]))
    band = ds.GetRasterBand(1)
    # make GDAL's choice visible: a read through overview 0 equals that overview's own pixels
    ov = band.GetOverview(0).ReadAsArray()
    via = band.ReadAsArray(0, 0, 3000, 2000, buf_xsize=1500, buf_ysize=1000,
                           resample_alg=gdal.GRIORA_Bilinear)
    np.testing.assert_array_equal(via, ov)


def test_reads_are_windowed_and_small(rasters, monkeypatch):
    """Spy on every raster read (all GDAL reads go through _read_raw): buffers stay small."""
    buffers = []
    real = RasterSource._read_raw

    def spy(self, window, out_size, resampling=None):
        buffers.append(tuple(out_size))
        return real(self, window, out_size, resampling)

    monkeypatch.setattr(RasterSource, "_read_raw", spy)
    src = RasterSource.open(rasters["u16"])
    pyr = ImagePyramid(src, cache_tiles=4)
    pyr.thumbnail()
    for lv in pyr.geometry.levels:
        pyr.tile(lv, lv.grid[0] - 1, lv.grid[1] - 1)
    assert len(buffers) == 2 + 1 + (len(pyr.geometry.levels) - 1)  # probe, stats, base, finer tiles
    assert max(max(b) for b in buffers) <= STATS_LONG_SIDE
    assert all(h * w <= 1008 * 1008 for h, w in buffers[2:])  # the base level, then single tiles
    assert all(h * w <= 336 * 336 for h, w in buffers[3:])


def test_lru_cache_is_bounded(rasters):
    pyr = ImagePyramid(RasterSource.open(rasters["rgb8"]), cache_tiles=3)
    fine = pyr.geometry.levels[-1]
    for c in range(4):
        pyr.tile(fine, 0, c)
    assert pyr.cache_info()["cached"] == 3 and pyr.reads == 4
    pyr.tile(fine, 0, 3)
    assert pyr.reads == 4  # hit
    pyr.tile(fine, 0, 0)
    assert pyr.reads == 5  # evicted earlier, read again
    t = pyr.tile(fine, 0, 0)
    assert not t.flags.writeable  # cached arrays are shared: read-only


def test_thumbnail_from_base_level_matches_direct_read(sentinel2_vrt):
    src = RasterSource.open(sentinel2_vrt)
    pyr = ImagePyramid(src)
    th, tw = pyr.geometry.thumbnail_size
    direct = src.read_rgb((0, 0, src.width, src.height), (th, tw))
    got = pyr.thumbnail()[:th, :tw]
    assert np.abs(got.astype(int) - direct.astype(int)).mean() < 3.0
    assert pyr.reads == 1  # one base-level read served the thumbnail
    base = pyr.geometry.levels[0]
    for r in range(base.grid[0]):
        for c in range(base.grid[1]):
            pyr.tile(base, r, c)
    assert pyr.reads == 1  # ... and every base tile


def test_plain_source_without_pad_keyword():
    """ImagePyramid needs only height, width and read_rgb(window, out_size) from its source."""

    class Flat:
        height, width = 700, 900

        def read_rgb(self, window, out_size):
            return np.full((*out_size, 3), 200, dtype=np.uint8)

    pyr = ImagePyramid(Flat())
    assert pyr.thumbnail()[0, 0].tolist() == [200, 200, 200] and pyr.thumbnail()[-1, -1].tolist() == [0, 0, 0]
    fine = pyr.geometry.levels[-1]
    assert pyr.tile(fine, fine.grid[0] - 1, fine.grid[1] - 1)[-1, -1].tolist() == [0, 0, 0]


def test_explicit_stretch_is_what_the_display_shows(rasters):
    """A renderer's min/max applies to 8-bit data too (QGIS stretches it), per chosen band."""
    src = RasterSource.open(rasters["rgb8"])
    raw = src.read_rgb((0, 0, 64, 64), (64, 64))
    src.close()
    src = RasterSource.open(rasters["rgb8"], stretch=[[0, 127], [0, 255], [64, 191]])
    out = src.read_rgb((0, 0, 64, 64), (64, 64))
    assert src.explicit_stretch and [(s.low, s.high) for s in src.stretch] == [(0, 127), (0, 255), (64, 191)]
    expect_r = np.clip(np.round(raw[..., 0].astype(np.float32) * 255 / 127), 0, 255)
    expect_b = np.clip(np.round((raw[..., 2].astype(np.float32) - 64) * 255 / 127), 0, 255)
    assert np.abs(out[..., 0].astype(int) - expect_r).max() <= 1
    assert np.array_equal(out[..., 1], raw[..., 1])
    assert np.abs(out[..., 2].astype(int) - expect_b).max() <= 1
    src.close()


def test_explicit_stretch_replaces_the_percentiles_of_16_bit_data(rasters):
    auto = RasterSource.open(rasters["u16"])
    fixed = RasterSource.open(rasters["u16"], stretch=[[0, 65535]] * 3)
    assert [(s.low, s.high) for s in fixed.stretch] == [(0.0, 65535.0)] * 3
    assert auto.stretch[0].high < 65535  # the percentiles, not the full range
    a, b = auto.read_rgb((0, 0, 200, 200), (50, 50)), fixed.read_rgb((0, 0, 200, 200), (50, 50))
    assert not np.array_equal(a, b)


def test_stretch_pairs_must_match_the_bands(rasters):
    from lrs_focus.errors import BandError

    with pytest.raises(BandError, match="stretch pair"):
        RasterSource.open(rasters["rgb8"], stretch=[[0, 100]])
    grey = RasterSource.open(rasters["grey"], stretch=[[10, 20]])
    assert len(grey.stretch) == 1
    pal = RasterSource.open(rasters["palette"], stretch=[[0, 1]])  # palettes ignore a stretch
    assert not pal.explicit_stretch


def test_identity_changes_when_the_file_changes(rasters, tmp_path):
    import os
    import shutil

    copy = tmp_path / "copy.tif"
    shutil.copyfile(rasters["grey"], copy)
    first = RasterSource.open(copy).identity()
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert RasterSource.open(copy).identity() != first
    assert first[0] == str(copy) and first[1] and first[1][0][0] == str(copy)


def test_a_vrt_rewritten_while_it_is_opened_is_read_once_it_settles(sentinel2_vrt, tmp_path, monkeypatch):
    """QGIS computes a VRT's statistics and GDAL writes them into the .vrt in place: an open at that
    moment fails on a truncated file. The open is tried again once the file stops changing; a file that
    does not change is refused at once as before."""
    import shutil

    from osgeo import gdal

    from lrs_focus import raster as raster_module
    from lrs_focus.errors import NotARaster
    from lrs_focus.raster import RasterSource

    vrt = tmp_path / "scene.vrt"
    shutil.copyfile(sentinel2_vrt, vrt)
    whole = vrt.read_bytes()
    real_open = gdal.OpenEx
    calls = []

    def rewriting_open(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # another program is half-way through rewriting the file
            vrt.write_bytes(whole[: len(whole) // 3])
            try:
                return real_open(path, *args, **kwargs)
            finally:
                vrt.write_bytes(whole)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(raster_module.gdal, "OpenEx", rewriting_open)
    src = RasterSource.open(str(vrt))
    assert (src.width, src.height) == (1933, 1947) and len(calls) == 2
    src.close()
    junk = tmp_path / "junk.vrt"
    junk.write_text("<VRTDataset")
    calls.clear()
    with pytest.raises(NotARaster):
        RasterSource.open(str(junk))
    assert len(calls) == 1
