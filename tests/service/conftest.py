"""Fixtures of the service suite: the fake engine, in-process servers, server subprocesses."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_SERVER = HERE / "fake_server.py"


def _load_fake():
    spec = importlib.util.spec_from_file_location("lrs_service_fake_server", FAKE_SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake():
    """The fake_server module: `fake.FakeEngine(stage_s)`."""
    return _load_fake()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_server(fake):
    """make_server(stage_s=0.0, **Server kwargs) -> a running in-process Server with a FakeEngine."""
    from lrs_focus.service import Server

    servers = []

    def make(stage_s: float = 0.0, engine=None, endpoint: str = "tcp://127.0.0.1:*", **kwargs):
        server = Server(engine or fake.FakeEngine(stage_s), endpoint, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        assert server.stopped, "the server did not stop"


class ServerProcess:
    """A fake-engine server in its own process, so it can be killed and its RSS measured."""

    def __init__(self, port: int, *args: str):
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.args = args
        self.proc = None

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), self.endpoint, *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), f"fake server did not start: {line!r} {self.proc.stderr.read()}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def server_process():
    """server_process(*args) -> a started ServerProcess on a free loopback port; killed at the end."""
    procs = []

    def start(*args: str, port: int | None = None) -> ServerProcess:
        proc = ServerProcess(port or free_port(), *args).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def until():
    return wait_until


def unconfined_if_needed() -> list[str]:
    """`--unconfined` on a kernel without Landlock (where `serve` refuses to start otherwise), so
    that the service tests run there too; test_confinement.py and test_readers.py skip there."""
    from lrs_focus.readers.confine import landlock_abi

    return [] if landlock_abi() >= 1 else ["--unconfined"]


class ServeCli:
    """`lrs-focus serve --model tiny ...` as the user runs it; `endpoint` once it listens."""

    def __init__(self, *args: str, port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "lrs_focus.cli", "serve", "--model", "tiny", "--endpoint", self.endpoint,
               *unconfined_if_needed(), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {})))
        self.stderr: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line)
            if "listening on" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.kill()
        raise AssertionError("lrs-focus serve did not start:\n" + "".join(self.stderr))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrs_focus.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


def small_geotiff(path: Path, size: int = 64) -> Path:
    """A tiny georeferenced RGB GeoTIFF (so the tiny model answers in well under a second)."""
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 4500000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for b in range(1, 4):
        ds.GetRasterBand(b).WriteArray(rng.integers(0, 255, (size, size), dtype=np.uint8))
    ds = None
    return path


class CountingHttpServer:
    """A loopback HTTP server that counts every request and serves `files` (with Range support),
    so a test can prove that the service never made a request, or that GDAL really would."""

    def __init__(self):
        import http.server

        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                data = outer.files.get(self.path.split("?", 1)[0])
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end + 1])

            def do_GET(self):  # noqa: N802
                self._answer(True)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server():
    server = CountingHttpServer()
    yield server
    server.close()



def root_and_outside(base: Path, ok_size: int = 64) -> tuple[Path, Path]:
    """An allowed root holding ok.tif and, beside it, a folder outside the roots holding secret.tif:
    what the attacks on the readers try to reach."""
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    small_geotiff(root / "ok.tif", size=ok_size)
    small_geotiff(outside / "secret.tif")
    return root, outside
