"""What a raster costs and which files it is made of, from what GDAL reports, before reading.

`refuse_special_file`: a FIFO/device given as the raster is refused before GDAL blocks on it.
`check_blocks`: a block larger than MAX_BLOCK_BYTES is refused at open (`raster_too_large`).
`dataset_files` / `file_entry`: the cache key's view of a raster (RasterSource.identity), every
file GDAL reads for it, through nested VRTs and VRT sources given as inline XML text, with the
inode change time (docs/raster.md).
"""

from __future__ import annotations

import hashlib
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
#: What GDAL's VRT driver looks for in a name to open it as inline XML (VRTDriverIdentify).
INLINE_VRT = "<VRTDataset"


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
    """(name, size, mtime ns, ctime ns, inode) of a local file; (name, size, mtime) of a /vsi one;
    ("inline VRT", sha256) of a VRT source given as XML text (two texts never share a key).
    The inode change time moves on every write and cannot be set back (utime sets it to now)."""
    name = os.fsdecode(raw)
    if INLINE_VRT in name:
        return ("inline VRT", hashlib.sha256(os.fsencode(name)).hexdigest())
    try:
        st = os.stat(raw)
        return (name, int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))
    except (OSError, ValueError):
        vsi = _vsi_stat(raw)
        return (name, int(vsi.size), int(vsi.mtime)) if vsi is not None else (name,)


def dataset_files(ds: Any) -> list:
    """Every file GDAL reads for an open dataset: its GetFileList(), and recursively that of
    every listed file that is itself a VRT (GDAL's list names a VRT's direct sources only) and of
    every VRT source given as inline `<VRTDataset>` text (listed as the text; GDAL's list skips it)."""
    found: dict = {}
    stack: list = [(raw, None) for raw in ds.GetFileList() or []]
    while stack and len(found) < MAX_IDENTITY_FILES:
        raw, root = stack.pop()
        key = os.fsdecode(raw)
        if key in found:
            continue
        found[key] = raw
        try:
            if INLINE_VRT in key:  # opened as GDAL opens it: relative names from the outer VRT's folder
                options = [f"ROOT_PATH={root}"] if root else []
                inner = gdal.OpenEx(key, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=["VRT"],
                                    open_options=options)
            elif ((key.startswith("/vsi") or stat_module.S_ISREG(os.stat(raw).st_mode))
                  and gdal.IdentifyDriverEx(key, gdal.OF_RASTER, allowed_drivers=["VRT"]) is not None):
                inner = gdal.OpenEx(key, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=["VRT"])
                root = os.path.dirname(key)
            else:
                continue
            stack.extend((r, None) for r in inner.GetFileList() or [])
            stack.extend((text, root) for text in inline_sources(inner))
            inner = None
        except (OSError, RuntimeError, ValueError):
            continue  # a file GDAL cannot open as a VRT is a leaf
    return [found[k] for k in sorted(found)]


def inline_sources(vrt: Any) -> list[str]:
    """The source names of an open VRT that are inline `<VRTDataset>` text, read from the XML
    GDAL itself serialises for the dataset (its own parser's view, not a re-parse of the file)."""
    xml = vrt.GetMetadata("xml:VRT") if vrt is not None else None
    if not xml:
        return []
    text = xml[0]  # bytes (or surrogates) where a name is not UTF-8; GDAL's bindings take UTF-8 only
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "replace")  # such a name inside inline text is not followed
    found, stack = [], [gdal.ParseXMLString(text)]
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or len(node) < 2 or node[0] != gdal.CXT_Element:
            continue
        for child in node[2:]:
            if isinstance(child, list) and len(child) == 2 and child[0] == gdal.CXT_Text and INLINE_VRT in child[1]:
                found.append(child[1])
            else:
                stack.append(child)
    return found
