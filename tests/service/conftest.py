"""Fixtures of the service suite: the fake engine, in-process servers, server subprocesses."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
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
