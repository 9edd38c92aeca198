"""What a raster costs and which files it is made of, from what GDAL reports, before reading.

`refuse_special_file`: a FIFO/device given as the raster is refused before GDAL blocks on it.
`check_blocks`: a block larger than MAX_BLOCK_BYTES is refused at open (`raster_too_large`).
`dataset_files` / `file_entry`: the cache key's view of a raster (RasterSource.identity), every
file GDAL reads for it, through nested VRTs, with the inode change time (docs/raster.md).
"""

from __future__ import annotations

import os
import stat as stat_module
from typing import Any

from osgeo import gdal

from .errors import NotARaster, RasterTooLarge

gdal.UseExceptions()

#: Largest block GDAL may decode at once (all bands of a pixel-interleaved block): a 272-byte
#: GeoTIFF declaring one 65536 x 65536 tile would otherwise allocate 4 GiB on its first read.
MAX_BLOCK_BYTES = 256 << 20
#: Files followed through nested VRTs for the cache key (identity): a bound, not a policy.
MAX_IDENTITY_FILES = 10000


def _vsi_stat(path):
    try:
        return gdal.VSIStatL(path, gdal.VSI_STAT_EXISTS_FLAG | gdal.VSI_STAT_NATURE_FLAG)
    except RuntimeError:
        return None


def refuse_special_file(path: str) -> None:
    """A FIFO, device or socket given as the raster: GDAL would block on it (a FIFO waits for a
    writer for ever), so it is refused before GDAL sees it."""
    if path.startswith("/vsi"):
        return
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return  # GDAL reports a missing file
    if not (stat_module.S_ISREG(mode) or stat_module.S_ISDIR(mode)):
        raise NotARaster(f"{path}: is not a regular file (a FIFO, device or socket), not a raster")


def check_blocks(path: str, ds: Any) -> None:
    """Refuse blocks larger than MAX_BLOCK_BYTES, from what GDAL reports (bands and overviews),
    before any pixel is read."""
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    levels = [b for band in bands[:1] for b in [band] + [band.GetOverview(i) for i in range(band.GetOverviewCount())]]
    for band in levels:
        if band is None:
            continue
        bw, bh = band.GetBlockSize()
        size = gdal.GetDataTypeSize(band.DataType) // 8 or 1
        block = int(bw) * int(bh) * size * max(1, len(bands))
        if block > MAX_BLOCK_BYTES:
            raise RasterTooLarge(f"{path}: GDAL reports blocks of {bw} x {bh} pixels ({block / 2**20:.0f} MiB with "
                                 f"{len(bands)} band(s) of {gdal.GetDataTypeName(band.DataType)}); this engine decodes "
                                 f"blocks of at most {MAX_BLOCK_BYTES >> 20} MiB")


def file_entry(raw) -> tuple:
    """(name, size, mtime ns, ctime ns, inode) of a local file; (name, size, mtime) of a /vsi one.
    The inode change time moves on every write and cannot be set back (utime sets it to now)."""
    name = os.fsdecode(raw)
    try:
        st = os.stat(raw)
        return (name, int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))
    except (OSError, ValueError):
        vsi = _vsi_stat(raw)
        return (name, int(vsi.size), int(vsi.mtime)) if vsi is not None else (name,)


def dataset_files(ds: Any) -> list:
    """Every file GDAL reads for an open dataset: its GetFileList(), and recursively that of
    every listed file that is itself a VRT (GDAL's list names a VRT's direct sources only)."""
    found: dict = {}
    stack = list(ds.GetFileList() or [])
    while stack and len(found) < MAX_IDENTITY_FILES:
        raw = stack.pop()
        key = os.fsdecode(raw)
        if key in found:
            continue
        found[key] = raw
        try:
            regular = key.startswith("/vsi") or stat_module.S_ISREG(os.stat(raw).st_mode)
            if regular and gdal.IdentifyDriverEx(key, gdal.OF_RASTER, allowed_drivers=["VRT"]) is not None:
                inner = gdal.OpenEx(key, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=["VRT"])
                stack.extend(inner.GetFileList() or [])
                inner = None
        except (OSError, RuntimeError, ValueError):
            continue  # a file GDAL cannot open as a VRT is a leaf
    return [found[k] for k in sorted(found)]
