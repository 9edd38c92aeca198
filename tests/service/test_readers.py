"""The reader pool and its confinement, without a server: what the kernel denies, what a killed
reader costs, what comes back through shared memory, and what a reader imports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lrs_focus.errors import Cancelled, NotARaster, RasterTooLarge, RasterUnreadable
from lrs_focus.raster import RasterSource
from lrs_focus.readers.confine import landlock_abi
from lrs_focus.readers.pool import ReaderPool

from .conftest import root_and_outside, small_geotiff

pytestmark = pytest.mark.skipif(landlock_abi() < 4, reason="needs a kernel with Landlock ABI >= 4")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root, outside = root_and_outside(tmp_path_factory.mktemp("readers"), ok_size=200)
    os.mkfifo(root / "pipe_metadata.txt")
    small_geotiff(root / "pipe.tif")
    return root, outside


@pytest.fixture(scope="module")
def pool(files):
    pool = ReaderPool(size=2, roots=[str(files[0])], no_policy=True, timeout_s=20).start()
    yield pool
    pool.close()


def _run_confined(code: str, root: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter after confine.landlock (roots = root) only, or seccomp only."""
    prelude = ("import sys, socket; from lrs_focus.readers import confine, child\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, ROOT=str(root)))


@pytest.fixture
def loopback_port():
    """A listening TCP port on 127.0.0.1 (what a confined reader must not reach), closed afterwards."""
    server = __import__("socket").socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    yield server.getsockname()[1]
    server.close()


def test_landlock_alone_denies_files_outside_and_tcp(files, loopback_port):
    root, outside = files
    port = loopback_port
    done = _run_confined(
        "import os\n"
        "confine.landlock([os.environ['ROOT']], child.system_paths())\n"
        "open(os.environ['ROOT'] + '/ok.tif', 'rb').read(4)\n"
        "for path in [" + repr(str(outside / "secret.tif")) + ", '/etc/passwd', '/dev/zero']:\n"
        "    try: open(path, 'rb'); print('READ', path)\n"
        "    except PermissionError: print('denied')\n"
        "try: open(os.environ['ROOT'] + '/new', 'w'); print('WROTE')\n"
        "except PermissionError: print('denied')\n"
        f"try: socket.create_connection(('127.0.0.1', {port}), timeout=5); print('CONNECTED')\n"
        "except PermissionError: print('denied')\n", root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["denied"] * 5


def test_seccomp_alone_denies_every_socket(files):
    done = _run_confined(
        "print(confine.seccomp_no_sockets())\n"
        "for family, kind in [(socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_DGRAM),"
        " (socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_UNIX, socket.SOCK_STREAM),"
        " (socket.AF_UNIX, socket.SOCK_DGRAM)]:\n"
        "    try: socket.socket(family, kind); print('OPENED')\n"
        "    except PermissionError: print('denied')\n"
        "try: socket.socketpair(); print('OPENED')\n"
        "except PermissionError: print('denied')\n", files[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-6:] == ["denied"] * 6


def test_a_confined_reader_cannot_reach_a_path_unix_socket_and_still_reads(files):
    """A UNIX socket bound to a file inside the root (Landlock before ABI 9 does not check connect()
    on it): with the reader's whole confinement (child.main's calls) neither a stream nor a datagram
    socket reaches it, and GDAL still reads the root's rasters afterwards."""
    root = files[0]
    listener = __import__("socket").socket(__import__("socket").AF_UNIX)
    listener.bind(str(root / "service.sock"))
    listener.listen(1)
    listener.setblocking(False)
    try:
        done = _run_confined(
            "import os\n"
            "from lrs_focus.raster import RasterSource\n"
            "print(confine.seccomp_no_sockets())\n"
            "confine.landlock([os.environ['ROOT']], child.system_paths())\n"
            "for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n"
            "    try:\n"
            "        s = socket.socket(socket.AF_UNIX, kind); s.connect(os.environ['ROOT'] + '/service.sock')\n"
            "        print('CONNECTED')\n"
            "    except PermissionError: print('denied')\n"
            "    except OSError as exc: print('REACHED', exc)\n"
            "src = RasterSource.open(os.environ['ROOT'] + '/ok.tif')\n"
            "print('read', src.read_rgb((0, 0, 200, 200), (20, 20)).shape)\n", root)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1:] == ["denied", "denied", "read (20, 20, 3)"], done.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    finally:
        listener.close()
        (root / "service.sock").unlink()


def test_a_reader_cannot_open_what_the_policy_never_saw(pool, files):
    """No policy runs here: the path goes straight to a reader, and the kernel refuses it."""
    root, outside = files
    with pytest.raises((NotARaster, RasterUnreadable)) as info:
        pool.open(str(outside / "secret.tif"))
    assert "Permission denied" in str(info.value)
    assert RasterSource.open(str(outside / "secret.tif")).width == 64  # readable without confinement


def test_pixels_through_shared_memory_equal_gdal_in_process(pool, files):
    path = str(files[0] / "ok.tif")
    ref = RasterSource.open(path)
    full = ref.read_rgb((0, 0, 200, 200), (200, 200))
    with pool.open(path) as src:
        assert src.identity() == ref.identity()
        assert np.array_equal(src.read_rgb((10.5, 3, 150, 190), (40, 33)), ref.read_rgb((10.5, 3, 150, 190), (40, 33)))
        rows, cols = np.array([0, 1, 7, 50, 51, 199]), np.arange(0, 200, 7)
        assert np.array_equal(src.gather(rows, cols), full[rows][:, cols])
        results = {}

        def read(i):  # several threads at once on one source
            results[i] = src.read_rgb((0, 0, 200, 200), (20 + i, 30))

        threads = [threading.Thread(target=read, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(6):
            assert np.array_equal(results[i], ref.read_rgb((0, 0, 200, 200), (20 + i, 30)))


def test_a_cancelled_read_kills_the_reader_and_the_pool_replaces_it(pool, files):
    """A FIFO beside a GeoTIFF (<stem>_metadata.txt) blocks GDAL's metadata reader for good."""
    stop = threading.Event()

    def check():
        if stop.is_set():
            raise Cancelled("cancelled while reading pixels")

    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        pool.open(str(files[0] / "pipe.tif"), check=check)
    assert time.monotonic() - t0 < 5
    replaced = pool.replaced
    assert replaced >= 1
    with pool.open(str(files[0] / "ok.tif")) as src:  # a fresh reader serves the next question
        assert src.read_rgb((0, 0, 200, 200), (8, 8)).shape == (8, 8, 3)


def test_silence_past_the_timeout_kills_the_reader(files):
    pool = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, timeout_s=1.5).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RasterUnreadable, match="no answer"):
            pool.open(str(files[0] / "pipe.tif"))
        assert time.monotonic() - t0 < 5
    finally:
        pool.close()


def test_the_pixel_budget_refuses_with_the_figures(files):
    pool = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, max_source_pixels=30000).start()
    try:
        with pool.open(str(files[0] / "ok.tif")) as src:
            src.read_rgb((0, 0, 100, 100), (10, 10))  # 10,000 px
            with pytest.raises(RasterTooLarge, match="0 Mpx a question"):
                src.read_rgb((0, 0, 200, 200), (10, 10))  # 40,000 more
            with pytest.raises(RasterTooLarge, match="200 x 200 px"):
                src.expect_full_read(200, 200)
    finally:
        pool.close()


def test_a_reader_imports_neither_torch_nor_transformers():
    code = ("import sys; import lrs_focus.readers.child, lrs_focus.readers.pool, lrs_focus.readers.source; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_refuses_a_kernel_without_landlock_unless_unconfined(monkeypatch):
    from lrs_focus.commands import serve
    from lrs_focus.readers import confine
    from lrs_focus.service import ServiceConfigError

    monkeypatch.setattr(confine, "landlock_abi", lambda: 0)
    args = serve_args(serve, unconfined=False)
    with pytest.raises(ServiceConfigError, match="--unconfined"):
        serve._readers(args, *serve._policy_and_limits(args), False)
    pool = serve._readers(serve_args(serve, unconfined=True), *serve._policy_and_limits(args), False)
    try:
        assert pool.describe()["confined"] is False
    finally:
        pool.close()


def serve_args(serve, **over):
    import argparse

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--readers", "1"])
    vars(args).update(over)
    return args


def test_a_read_past_the_address_space_limit_is_raster_too_large(pool, files):
    """A 200 x 200 window asked as 40000 x 40000 px (a 4.8 GB answer) is refused before anything is
    allocated (MAX_READ_BYTES); a 432 MB one in one piece (512 MiB of shared memory) is refused by the
    reader's RLIMIT_AS (1000 MB, the shared memory's mapping included), and that reader reads on."""
    with pool.open(str(files[0] / "ok.tif")) as src:
        with pytest.raises(RasterTooLarge, match="MiB a read"):
            src.read_rgb((0, 0, 200, 200), (40000, 40000))
    small = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, shm_mb=512, address_space_mb=1000).start()
    try:
        with small.open(str(files[0] / "ok.tif")) as src:
            with pytest.raises(RasterTooLarge, match="allocate"):
                src.read_rgb((0, 0, 200, 200), (12000, 12000))
            assert src.read_rgb((0, 0, 200, 200), (4, 4)).shape == (4, 4, 3)  # the same reader reads on
            assert small.replaced == 0
    finally:
        small.close()


def test_a_reader_past_its_cpu_seconds_is_raster_too_large(files, tmp_path):
    """A DAG of VRTs (20^6 source reads) spins until RLIMIT_CPU's SIGXCPU ends the reader."""
    from .attack_rasters import vrt_dag

    (files[0] / "cpu").mkdir()
    top = vrt_dag(files[0] / "cpu", levels=6)
    pool = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, cpu_s=1.0, timeout_s=30).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RasterTooLarge, match="CPU seconds"):
            with pool.open(top) as src:
                src.read_rgb((0, 0, 16, 16), (16, 16))
        assert time.monotonic() - t0 < 15
    finally:
        pool.close()


def test_a_large_gather_splits_rows_over_the_free_readers(pool, files, monkeypatch):
    from lrs_focus.readers import source as source_module

    monkeypatch.setattr(source_module, "PARALLEL_MIN_PIXELS", 0)
    path = str(files[0] / "ok.tif")
    full = RasterSource.open(path).read_rgb((0, 0, 200, 200), (200, 200))
    deadline = time.monotonic() + 20
    while len(pool._idle) < 2 and time.monotonic() < deadline:  # replacements of killed readers
        time.sleep(0.1)
    with pool.open(path) as src:
        used = []
        real = src._gather_into

        def spy(*args, **kwargs):
            used.append(len(src._readers))
            return real(*args, **kwargs)

        monkeypatch.setattr(src, "_gather_into", spy)
        rows, cols = np.arange(0, 200, 2), np.arange(3, 190)
        assert np.array_equal(src.gather(rows, cols), full[rows][:, cols])
        assert used == [2] and len(src._readers) == 1  # the helper went back to the pool
        got, seen = np.zeros((rows.size, cols.size, 3), np.uint8), np.zeros((rows.size, cols.size), int)

        def sink(r, c, pixels):  # streamed (the exact path's base pass): pieces land once each
            ri, ci = np.searchsorted(rows, r), np.searchsorted(cols, c)
            got[np.ix_(ri, ci)] = pixels
            seen[np.ix_(ri, ci)] += 1

        assert src.gather(rows, cols, sink=sink) is None
        assert (seen == 1).all() and np.array_equal(got, full[rows][:, cols])


def test_with_remote_access_readers_may_connect_to_the_web_ports_only(files, loopback_port):
    """--allow-remote: Landlock lets TCP connect reach ports 80 and 443 only (hosts are the policy's)."""
    port = loopback_port
    done = _run_confined(
        "import os\n"
        "confine.landlock([os.environ['ROOT']], child.system_paths(True), tcp_ports=[80, 443])\n"
        f"try: socket.create_connection(('127.0.0.1', {port}), timeout=5); print('CONNECTED')\n"
        "except PermissionError: print('denied')\n"
        "try: socket.create_connection(('127.0.0.1', 443), timeout=5); print('CONNECTED')\n"
        "except PermissionError: print('denied')\n"
        "except OSError: print('allowed')\n", files[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["denied", "allowed"]  # 443: refused by no listener, not by the kernel


@pytest.fixture(scope="module")
def noisy(files):
    """A 2400 x 2000 RGB GeoTIFF of noise in the root (14.4 MB of RGB at full resolution)."""
    from osgeo import gdal

    path = files[0] / "noisy.tif"
    data = np.random.default_rng(7).integers(0, 256, size=(3, 2000, 2400), dtype=np.uint8)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 2400, 2000, 3, gdal.GDT_Byte, ["TILED=YES"])
    ds.WriteRaster(0, 0, 2400, 2000, data.tobytes())
    ds = None
    return str(path)


def _peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def test_a_read_larger_than_the_shared_memory_comes_in_pieces(files, noisy, monkeypatch):
    """A 14.4 MB full-resolution read through 2 MiB of shared memory (refused before: "larger than
    the reader's shared memory") equals in-process GDAL's, and the reader's peak memory grows by
    about a piece, not by the answer (GDAL's block cache held at 1 MB for the measure)."""
    monkeypatch.setenv("GDAL_CACHEMAX", "1")
    ref = RasterSource.open(noisy)
    pool = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, shm_mb=2, timeout_s=30).start()
    try:
        with pool.open(noisy) as src:
            reader = src._readers[0]
            before = _peak_kb(reader.pid)
            full = src.read_rgb((0, 0, 2400, 2000), (2000, 2400))
            grown_mb = (_peak_kb(reader.pid) - before) / 1024
            assert np.array_equal(full, ref.read_rgb((0, 0, 2400, 2000), (2000, 2400)))
            assert grown_mb < 10, f"the reader grew by {grown_mb:.1f} MB for a 14.4 MB answer"
            # a window past the edges is clamped before it is cut, as RasterSource clamps it
            edges = src.read_rgb((-40, -30, 2600, 2100), (1900, 1300))
            assert np.array_equal(edges, ref.read_rgb((-40, -30, 2600, 2100), (1900, 1300)))
            # rows wider than the shared memory: columns are cut too (read and gather)
            pool.shm_bytes = 3 * 256
            part = src.read_rgb((100, 200, 1100, 230), (30, 1000))
            assert np.array_equal(part, full[200:230, 100:1100])
            rows, cols = np.arange(5, 1900, 97), np.arange(3, 2400, 3)
            assert np.array_equal(src.gather(rows, cols), full[rows][:, cols])
    finally:
        pool.close()


def test_a_resampled_read_in_pieces_matches_gdal(files, noisy):
    """Bilinear, overview-free, fractional window: each piece is GDAL's read at the same scale."""
    ref = RasterSource.open(noisy)
    pool = ReaderPool(size=1, roots=[str(files[0])], no_policy=True, shm_mb=1, timeout_s=30).start()
    try:
        with pool.open(noisy) as src:
            for window, size in [((10.5, 3.25, 2393.0, 1998.5), (1500, 1700)), ((0, 0, 2400, 2000), (700, 900))]:
                got, want = src.read_rgb(window, size), ref.read_rgb(window, size)
                assert got.nbytes > pool.shm_bytes
                assert np.array_equal(got, want), (window, int((got != want).any(axis=2).sum()))
    finally:
        pool.close()


def test_with_remote_access_seccomp_leaves_inet_sockets_only(files):
    """--allow-remote: socket() for AF_INET/AF_INET6 (curl's TCP, DNS over UDP) and socketpair()
    (curl's resolver thread) stay; AF_UNIX (a path socket: Landlock before ABI 9 does not see its
    connect()), netlink and packet sockets do not; names still resolve (/etc/hosts)."""
    done = _run_confined(
        "import os\n"
        "print(confine.seccomp_no_sockets(allow_inet=True))\n"
        "confine.landlock([os.environ['ROOT']], child.system_paths(True), tcp_ports=[80, 443])\n"
        "for family, kind in [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_DGRAM),"
        " (socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_STREAM),"
        " (socket.AF_UNIX, socket.SOCK_DGRAM), (socket.AF_NETLINK, socket.SOCK_RAW)]:\n"
        "    try: socket.socket(family, kind).close(); print('opened')\n"
        "    except PermissionError: print('denied')\n"
        "a, b = socket.socketpair(); print('pair')\n"
        "print('resolved' if socket.getaddrinfo('localhost', 443) else 'NONE')\n", files[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[1:-1] == ["opened"] * 3 + ["denied"] * 3 + ["pair", "resolved"], done.stdout
