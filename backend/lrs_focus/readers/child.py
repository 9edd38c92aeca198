"""A reader process: `python -m lrs_focus.readers.child CONFIG_JSON` (started by `pool.Reader`).

It imports GDAL, numpy and `raster.py` (never torch or transformers: tests check), limits and
confines itself (`confine.py`) before it opens anything a client named, says "ready", and then
answers one request at a time on the socket it inherited (fd `conn_fd`): open a raster, read a
window or gather rows/columns into the shared memory (fd `shm_fd`, a memfd its parent made: no
/dev/shm access needed), the stretch, close. Pixels go through the shared memory; only small
metadata is pickled. A request that raises answers ("error", class name, message).
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import sysconfig
from multiprocessing.connection import Connection

import numpy as np
from osgeo import gdal

from .. import errors
from ..raster import RasterSource
from . import confine

gdal.UseExceptions()
MEMORY_WORDS = ("out of memory", "cannot allocate", "memory allocation")


#: GDAL threads of one reader's gather: the parallelism of `serve` is its reader processes
#: (ConfinedSource splits a large gather over them), so each reads with one handle.
READER_THREADS = 1


class ReaderLoop:
    """`policy`: the access policy, checked here rather than in the server: its own reads (a VRT's
    XML, side-cars, GDAL's identify) are then inside the confinement and killed with the reader when
    an attacker's file wedges or explodes them, never a stuck thread of the server."""

    def __init__(self, conn: Connection, shm: mmap.mmap, cpu_s: float, policy=None):
        self.conn, self.shm, self.cpu_s, self.policy = conn, shm, cpu_s, policy
        self.src: RasterSource | None = None

    def _out(self, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape))
        if n > len(self.shm):
            raise errors.RasterTooLarge(f"a read of {n} bytes is larger than the reader's shared memory "
                                        f"({len(self.shm)} bytes)")
        return np.frombuffer(self.shm, dtype=np.uint8, count=n).reshape(shape)

    def open(self, path, bands, stretch, open_options):
        self.close()
        confine.cpu_budget(self.cpu_s)
        if self.policy is not None:
            path = self.policy.check(path)
        src = RasterSource.open(path, bands=bands, stretch=stretch, open_options=open_options)
        self.src = src
        return {"height": src.height, "width": src.width, "band_count": src.band_count, "bands": list(src.bands),
                "palette": None if src.palette is None else src.palette.tolist(), "data_type": src.data_type,
                "block_size": list(src.block_size), "overview_sizes": [list(s) for s in src.overview_sizes],
                "explicit_stretch": src.explicit_stretch, "georeferenced": src.georeferenced,
                "geotransform": list(src.geotransform), "crs_wkt": src.crs_wkt,
                "driver": src.driver,
                "identity": src.identity()}

    def stretch(self):
        return [[s.low, s.high] for s in self.src.stretch]

    def set_stretch(self, values):
        from ..raster import BandStretch

        self.src.stretch = [BandStretch(float(lo), float(hi)) for lo, hi in values]

    def read(self, window, out_size, pad_rgb):
        rgb = self.src.read_rgb(window, out_size, pad_rgb=pad_rgb)
        self._out(rgb.shape)[...] = rgb
        return rgb.shape

    def gather(self, rows, cols, pad_rgb):
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = self._out((rows.size, cols.size, 3))
        out[...] = self.src.gather(rows, cols, pad_rgb, workers=READER_THREADS)
        return out.shape, int(rows.size) * (int(cols[-1]) - int(cols[0]) + 1)

    def close(self):
        if self.src is not None:
            self.src.close()
            self.src = None

    def serve(self) -> None:
        while True:
            try:
                op, kwargs = self.conn.recv()
            except EOFError:
                return
            try:
                reply = ("ok", getattr(self, op)(**kwargs))
            except errors.LrsFocusError as exc:
                name = type(exc).__name__
                if isinstance(exc, errors.RasterUnreadable) and any(w in str(exc).lower() for w in MEMORY_WORDS):
                    name = "RasterTooLarge"  # GDAL's "Cannot allocate result buffer" under RLIMIT_AS
                reply = ("error", name, str(exc))
            except MemoryError:
                reply = ("error", "RasterTooLarge", "the read needs more memory than a reader may use")
            except Exception as exc:  # GDAL's RuntimeError and friends: the parent maps the name
                text = str(exc)
                name = "RasterTooLarge" if any(w in text.lower() for w in MEMORY_WORDS) else "RasterUnreadable"
                reply = ("error", name, f"{type(exc).__name__}: {text}")
            self.conn.send(reply)


def system_paths(remote: bool = False) -> list[str]:
    """What Python, numpy and GDAL read after start-up: the standard library (its extension modules
    included), the import path (the venv's site-packages, an editable install's folder; not the
    working directory `python -m` puts first), the package, shared libraries, GDAL's and PROJ's
    data. Not the rest of the interpreter's installation: with Debian's Python `sys.prefix` and
    `sys.base_prefix` are all of /usr."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    std = sysconfig.get_paths()
    cwd = os.getcwd()
    imports = {os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)} - {cwd, "/"}
    paths = {std["stdlib"], std["platstdlib"], std["purelib"], std["platlib"], here, *imports,
             "/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/share/gdal", "/usr/share/proj"}
    if remote:  # curl's certificates and name resolution
        paths |= {"/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates", "/etc/resolv.conf", "/etc/hosts",
                  "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf"}
    for option in ("GDAL_DATA", "PROJ_DATA", "PROJ_LIB"):
        value = gdal.GetConfigOption(option) or os.environ.get(option)
        if value:
            paths.add(value)
    return sorted(p for p in paths if p)


def main(config: dict) -> int:
    conn = Connection(config["conn_fd"])
    shm = mmap.mmap(config["shm_fd"], config["shm_bytes"])
    report = {"confined": False}
    policy = None
    if not config.get("no_policy"):  # the policy and GDAL's driver/network settings; test switch only
        from ..access import AccessPolicy, harden_gdal

        policy = AccessPolicy(roots=tuple(config["roots"]), allow_remote=config["allow_remote"])
        harden_gdal(policy)
    confine.limit_resources(int(config["address_space_bytes"]))  # --unconfined too
    if config.get("confine", True):
        report = {"confined": True,
                  "seccomp": confine.seccomp_no_sockets(allow_inet=config["allow_remote"]),
                  **confine.landlock(config["roots"] or ["/"], system_paths(config["allow_remote"]),
                                     config.get("tcp_ports", ()))}
    conn.send(("ready", report))
    ReaderLoop(conn, shm, float(config["cpu_s"]), policy).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
