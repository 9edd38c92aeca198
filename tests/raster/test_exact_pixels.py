"""The lazy exact pixel path equals the released preprocessing: the whole image to float, CLIP
Normalize, `F.interpolate(bilinear, align_corners=False)` per level and for the thumbnail, zero
padding. Checked on real GeoTIFFs read through GDAL, over odd aspect ratios and the released
truncation quirk; and its reads stay small on a huge raster."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from osgeo import gdal
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from lrs_focus.exact_pixels import STRIP_BYTES, ExactPyramid, _runs, source_index, torch_fuses_index
from lrs_focus.pyramid import PyramidConfig
from lrs_focus.raster import RasterSource, RasterWindow

TINY = PyramidConfig(tile_size=56, base_long_side=168, tokens_per_tile=4)
REAL = PyramidConfig(tile_size=336, base_long_side=1008, tokens_per_tile=12)


def _write(path, image: np.ndarray):
    h, w, _ = image.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, gdal.GDT_Byte, options=["TILED=YES"])
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(image[:, :, b])
        ds.GetRasterBand(b + 1).SetColorInterpretation([gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand][b])
    ds = None
    return path


def _official(image: np.ndarray) -> torch.Tensor:
    """mm_utils 'pyramid_crop': Preprocess = ToTensor + Normalize(CLIP) on the whole image."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("cfg, height, width", [
    (TINY, 300, 420), (TINY, 500, 190), (TINY, 1947, 1933), (TINY, 61, 997),
    (REAL, 1500, 2000),  # released truncation quirk: 26 token rows, not 27
    (REAL, 777, 3001),
])
def test_every_tile_and_the_thumbnail_equal_f_interpolate(tmp_path, cfg, height, width):
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    src = RasterSource.open(_write(tmp_path / "img.tif", image))
    pyr = ExactPyramid(src, cfg)
    x = _official(image)
    b = cfg.tile_size
    worst = 0.0
    for lv in pyr.geometry.levels:
        rh, rw = lv.resized
        padded = torch.zeros(3, lv.grid[0] * b, lv.grid[1] * b)
        padded[:, :rh, :rw] = F.interpolate(x, size=(rh, rw), mode="bilinear")[0]
        for r in range(lv.grid[0]):
            for c in range(lv.grid[1]):
                tile = torch.from_numpy(np.array(pyr.tile(lv.index, r, c))).permute(2, 0, 1)
                worst = max(worst, float((tile - padded[:, r * b:(r + 1) * b, c * b:(c + 1) * b]).abs().max()))
    th, tw = pyr.geometry.thumbnail_size
    thumb = torch.zeros(3, b, b)
    thumb[:, :th, :tw] = F.interpolate(x, size=(th, tw), mode="bilinear")[0]
    got = torch.from_numpy(np.array(pyr.thumbnail())).permute(2, 0, 1)
    worst = max(worst, float((got - thumb).abs().max()))
    assert worst < 2e-6  # float32 rounding of values up to ~2.6
    pad = np.array(pyr.thumbnail())
    pad[:th, :tw] = 0
    assert not pad.any()  # padding is exactly 0, as released
    src.close()


def test_index_rule_is_this_torch_builds(tmp_path):
    """Up- and downscaling by ratios where a double-rounded index differs from a fused one."""
    fused = torch_fuses_index()
    for n_in, n_out in [(20000, 13664), (3001, 1680), (1947, 2016), (27328, 1008), (4000, 4032)]:
        values = (np.arange(n_in) % 2).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(values).view(1, 1, n_in, 1), size=(n_out, 1), mode="bilinear")
        i0, i1, lam = source_index(n_in, n_out, 0, n_out)
        ours = values[i0] * (np.float32(1) - lam) + values[i1] * lam
        np.testing.assert_allclose(ours, ref[0, 0, :, 0].numpy(), atol=1e-6)
        i0, i1, lam = source_index(n_in, n_out, 0, n_out, fused=not fused)
        other = values[i0] * (np.float32(1) - lam) + values[i1] * lam
        if (n_in, n_out) == (20000, 13664):
            assert np.abs(other - ref[0, 0, :, 0].numpy()).max() > 1e-5  # the other rule is detectably wrong


class _HugeSource:
    """A 40,000 x 30,000 raster computed on demand; records every read."""

    height, width = 30000, 40000

    def __init__(self):
        self.reads = []

    def read_rgb(self, window, out_size, pad_rgb=(0, 0, 0)):
        x0, y0, x1, y1 = (int(v) for v in window)
        assert (y1 - y0, x1 - x0) == tuple(out_size)  # native resolution only
        self.reads.append((x1 - x0) * (y1 - y0))
        yy, xx = np.arange(y0, y1, dtype=np.int32)[:, None], np.arange(x0, x1, dtype=np.int32)[None, :]
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        out[..., 0], out[..., 1], out[..., 2] = (xx * 7 + yy * 3) % 256, (xx ^ yy) % 256, (yy * 5) % 256
        return out


def test_the_clip_constants_are_transformers_own():
    from lrs_focus import exact_pixels

    assert exact_pixels.OPENAI_CLIP_MEAN == tuple(OPENAI_CLIP_MEAN)
    assert exact_pixels.OPENAI_CLIP_STD == tuple(OPENAI_CLIP_STD)


def test_reads_stay_bounded_on_a_huge_raster():
    src = _HugeSource()
    checks = []
    pyr = ExactPyramid(src, REAL, check=lambda: checks.append(1))
    pyr.thumbnail()
    assert max(src.reads) * 3 <= STRIP_BYTES
    gathered = sum(g.nbytes for g in pyr.grids.values())
    assert pyr.grids and gathered <= ExactPyramid.GRID_BYTES  # coarse levels' samples, bounded
    _, _, rows, cols, _ = pyr._base_pass_plan()
    needed = functools.reduce(np.union1d, [rows] + [g.rows for g in pyr.grids.values()])
    cols = functools.reduce(np.union1d, [cols] + [g.cols for g in pyr.grids.values()])
    rows_read = pyr.source_pixels / (int(cols[-1]) + 1 - int(cols[0]))
    # the rows samples need, at most with the gaps under MERGE_GAP rows read through
    assert needed.size <= rows_read <= sum(b - a for a, b in _runs(needed, src.height))
    assert needed.size < src.height / 2
    before = pyr.source_pixels
    coarse = pyr.geometry.levels[min(pyr.grids)]
    pyr.tile(coarse.index, coarse.grid[0] // 2, coarse.grid[1] // 2)
    assert pyr.source_pixels == before  # a gridded level's tile reads nothing
    finest = pyr.geometry.levels[-1]
    pyr.tile(finest.index, 40, 50)
    assert pyr.source_pixels - before <= 337 * 337  # a full-resolution tile reads its own window
    assert len(checks) == len(src.reads)  # a cancel can interrupt between any two reads


def test_window_view_reads_only_its_window(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    src = RasterSource.open(_write(tmp_path / "img.tif", image))
    view = RasterWindow(src, [100.4, 50, 420, 330.2])
    assert view.window == (100, 50, 420, 331) and (view.height, view.width) == (281, 320)
    pyr = ExactPyramid(view, TINY)
    x = _official(np.ascontiguousarray(image[50:331, 100:420]))
    th, tw = pyr.geometry.thumbnail_size
    ref = F.interpolate(x, size=(th, tw), mode="bilinear")[0]
    got = torch.from_numpy(np.array(pyr.thumbnail())).permute(2, 0, 1)[:, :th, :tw]
    assert float((got - ref).abs().max()) < 2e-6
    from lrs_focus.errors import BadOptions

    with pytest.raises(BadOptions, match="does not overlap"):
        RasterWindow(src, [700, 0, 800, 10])
    src.close()


def test_a_process_without_torch_gets_torchs_index_rule_from_a_probe_then_its_cache(tmp_path):
    """The pixel path learns ATen's rule without importing torch (~220 MB): a child probes torch once,
    the answer is cached per torch build and CPU (key: torch version, CPU flags, ATEN_CPU_CAPABILITY)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys; from lrs_focus.index_rule import torch_fuses_index; "
            "print(int(torch_fuses_index()), int('torch' in sys.modules))")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: E731
                                 check=True, timeout=120).stdout.split()
    assert run() == [str(int(torch_fuses_index())), "0"]  # torch's answer, torch never loaded here
    cache = tmp_path / "lrs-focus" / "index_rule.json"
    doc = json.loads(cache.read_text())
    cache.write_text(json.dumps({"key": doc["key"], "fused": not doc["fused"]}))
    assert run()[0] == str(int(not doc["fused"]))  # the cache is what answered



class _HugeGatherSource(_HugeSource):
    """The same raster read as RasterSource and the confined readers read it: `gather` in block-aligned
    strips (pixels not computed: only what the pyramid counts matters here)."""

    block_size = (256, 256)

    def gather(self, rows, cols, pad_rgb=(0, 0, 0), check=None, sink=None, workers=None, max_bytes=None):
        self.reads.append(len(rows) * len(cols))
        if sink is None:
            return np.zeros((len(rows), len(cols), 3), dtype=np.uint8)
        for part in np.array_split(np.asarray(rows), 3):  # streamed in pieces, as the base pass reads
            if part.size:
                sink(part, np.asarray(cols), np.zeros((part.size, len(cols), 3), dtype=np.uint8))
        return None


def test_base_pass_plan_counts_what_the_pass_reads(tmp_path):
    """The work meter prices the base pass with `base_pass_pixels()` and measures it with `source_pixels`:
    they must be the same count. A large raster's sample rows are sparse, and a read through `gather`
    spans every row between them: a plan of only the sample runs was 6x short here (and on a 48000 x
    36000 VRT), so `overall` ran ahead, then stalled, in the plugin's bar."""
    gdal.GetDriverByName("GTiff").Create(str(tmp_path / "tall.tif"), 3000, 6000, 3, gdal.GDT_Byte,
                                         options=["TILED=YES", "SPARSE_OK=TRUE"])  # closed at once: empty, sparse
    src = RasterSource.open(str(tmp_path / "tall.tif"), percentiles=None)
    for source in (_HugeGatherSource(), src, _HugeSource()):  # gather strips; strips of sample runs read here
        pyr = ExactPyramid(source, TINY)
        planned = pyr.base_pass_pixels()
        pyr.base_image()
        assert planned == pyr.source_pixels > 0, type(source).__name__
        assert pyr.base_pass_pixels() == 0
    src.close()
