"""Where `ask` may write its files, and how: never over the input, never through a planted link.

`check_outputs` (before the model runs) refuses an output path that is the input raster or a file
GDAL reads for it (a VRT's source, a side-car), and two outputs naming one file. `write_replacing`
writes into a new temporary file beside the target and renames it over the target: a symlink (or a
hard link) planted at the path is replaced, never followed, and a failed write leaves the old file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Callable


def _entry(path: str) -> str:
    """The directory entry `path` names: its folder resolved, its last component kept (not followed)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


def _raster_files(raster: str) -> set[str]:
    """The raster and every file GDAL reads for it, resolved (the raster alone if it does not open
    here, or is not a regular file: GDAL would block on a FIFO)."""
    files = {raster}
    try:
        if not stat.S_ISREG(os.stat(raster).st_mode):
            return {os.path.realpath(raster)}
    except (OSError, ValueError):
        return {os.path.realpath(raster)} if not raster.startswith("/vsi") else set()
    try:
        from osgeo import gdal

        with contextlib.suppress(Exception):
            ds = gdal.OpenEx(raster, gdal.OF_RASTER | gdal.OF_READONLY)
            if ds is not None:
                files.update(os.fsdecode(f) for f in (ds.GetFileList() or []))
            ds = None
    except ImportError:  # pragma: no cover - GDAL is a dependency of the CLI
        pass
    return {os.path.realpath(f) for f in files if not f.startswith("/vsi")}


def check_outputs(raster: str, outputs: list[str]) -> None:
    """Raises ValueError naming the first output that would overwrite an input or another output."""
    if not outputs:
        return
    inputs = _raster_files(raster)
    seen: dict[str, str] = {}
    for out in outputs:
        entry = _entry(out)
        if entry in inputs or os.path.realpath(out) in inputs:
            raise ValueError(f"{out}: would overwrite the raster being asked about (or a file it reads); "
                             "write somewhere else")
        if entry in seen:
            raise ValueError(f"{out}: named twice (also as {seen[entry]}); give each output its own file")
        seen[entry] = out


def write_replacing(path: str, write: Callable[[str], object]) -> str:
    """Calls `write(tmp)` on a new file beside `path`, then renames it over `path`; returns `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=folder)
    os.close(fd)
    os.unlink(tmp)  # the writers create their file themselves (GDAL drivers refuse some existing ones)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".aux.xml"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return str(path)
