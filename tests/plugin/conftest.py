"""Fixtures of the plugin suite: the built zip, a backend on a free port, QGIS subprocesses.

QGIS-side checks run as `/usr/bin/python3 qgis_scripts/<name>.py` (QGIS's own Python, Qt5,
offscreen) with the plugin imported from the extracted zip, HOME pointed at a temporary folder
(so QgsSettings never touch the user's profile); the script's last stdout line is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "qgis_scripts"
QGIS_PYTHON = "/usr/bin/python3"
LRS_FOCUS = Path(sys.executable).parent / "lrs-focus"


def _qgis_available() -> bool:
    try:
        out = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core, zmq"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@pytest.fixture(scope="session")
def qgis_python() -> str:
    if not _qgis_available():
        pytest.skip("QGIS's Python (/usr/bin/python3 with python3-qgis and python3-zmq) is not installed")
    return QGIS_PYTHON


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["python3", str(REPO / "scripts" / "build_plugin_zip.py"), "--out-dir", str(out)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def plugin_root(plugin_zip, tmp_path_factory) -> Path:
    """A folder holding `lrs_focus_plugin/` as unpacked from the zip (what users install)."""
    root = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(root)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_endpoint() -> str:
    """A loopback endpoint where nothing listens."""
    return f"tcp://127.0.0.1:{free_port()}"


def backend_command(endpoint: str) -> list[str]:
    """The real backend with the tiny random-weight model (offline, CPU)."""
    return [str(LRS_FOCUS), "serve", "--model", "tiny", "--endpoint", endpoint]


@pytest.fixture(scope="session")
def backend_argv():
    """endpoint -> the argument list that starts the real backend there."""
    return backend_command


class Backend:
    def __init__(self, endpoint: str, process: subprocess.Popen, log: Path):
        self.endpoint, self.process, self.log = endpoint, process, log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_backend(tmp_dir: Path, plugin_root: Path, ready_timeout: float = 180.0, endpoint: str = "") -> Backend:
    """Start a backend (on a free loopback port by default); wait until it answers `health`."""
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    log = tmp_dir / f"backend-{endpoint.rsplit(':', 1)[1]}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        process = subprocess.Popen(backend_command(endpoint), stdout=out, stderr=subprocess.STDOUT, env=env)
    backend = Backend(endpoint, process, log)
    sys.path.insert(0, str(plugin_root))
    try:
        from lrs_focus_plugin.client import BackendError, Client
        from lrs_focus_plugin.params import Timeouts
    finally:
        sys.path.remove(str(plugin_root))
    deadline = time.monotonic() + ready_timeout
    with Client(endpoint, Timeouts(health=1.0)) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"backend exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                client.health(1.0)
                return backend
            except BackendError:
                if time.monotonic() > deadline:
                    backend.stop()
                    raise RuntimeError(f"backend not ready in {ready_timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def backend(tmp_path_factory, plugin_root):
    b = start_backend(tmp_path_factory.mktemp("backend"), plugin_root)
    yield b
    b.stop()


@pytest.fixture
def backend_starter(tmp_path, plugin_root):
    """start(endpoint="") -> a new Backend; all are stopped after the test."""
    started = []

    def start(endpoint: str = "") -> Backend:
        started.append(start_backend(tmp_path, plugin_root, endpoint=endpoint))
        return started[-1]

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def fresh_backend(tmp_path, plugin_root):
    """A backend of the test's own (for tests that kill it)."""
    b = start_backend(tmp_path, plugin_root)
    yield b
    b.stop()


def qgis_runner(qgis_python: str, plugin_root: Path, tmp_path: Path):
    """run("script.py", *args, timeout=...) -> the JSON document the script printed."""

    def run(script: str, *args, timeout: float = 180.0, env: dict | None = None) -> dict:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        home.chmod(0o700)
        full_env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(home), XDG_RUNTIME_DIR=str(home),
                        PYTHONPATH=os.pathsep.join([str(plugin_root), str(SCRIPTS)]), **(env or {}))
        full_env.pop("VIRTUAL_ENV", None)
        done = subprocess.run([qgis_python, str(SCRIPTS / script), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=str(tmp_path))
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        return json.loads(lines[-1])

    return run


@pytest.fixture
def run_qgis(qgis_python, plugin_root, tmp_path):
    """run_qgis("script.py", *args, timeout=...) -> the JSON document the script printed."""
    return qgis_runner(qgis_python, plugin_root, tmp_path)


@pytest.fixture(scope="module")
def run_qgis_module(qgis_python, plugin_root, tmp_path_factory):
    """run_qgis for module-scoped fixtures (one QGIS run shared by several tests)."""
    return qgis_runner(qgis_python, plugin_root, tmp_path_factory.mktemp("qgis_run"))


@pytest.fixture(scope="session")
def plugin_import(plugin_root):
    """Import the plugin's Qt-free modules (client, params, protocol) in the venv's Python."""
    sys.path.insert(0, str(plugin_root))
    import lrs_focus_plugin.client as client

    yield client
    sys.path.remove(str(plugin_root))


@pytest.fixture(scope="session")
def qgis_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qgis")


@pytest.fixture(scope="session")
def copy_tree():
    return shutil.copytree
