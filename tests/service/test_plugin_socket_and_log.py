"""The two service concerns inside the plugin, run in QGIS's own Python (/usr/bin/python3) when it
has pyzmq, else in the venv's: the client socket's MAXMSGSIZE and the backend launcher's private
log. The plugin is imported from the source tree under another package name, and must not pull
in the backend package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

REPO = Path(__file__).resolve().parents[2]


def _python() -> str:
    qgis_python = "/usr/bin/python3"
    try:
        ok = subprocess.run([qgis_python, "-c", "import zmq"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return qgis_python if ok else sys.executable


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """plugin_run(code, env) -> the JSON its last stdout line prints; `P` is the plugin package."""
    where = tmp_path_factory.mktemp("plugin_src")
    (where / "lrs_focus_plugin_src").symlink_to(REPO / "qgis_plugin")
    python = _python()

    def run(code: str, env: dict | None = None) -> dict:
        prelude = (f"import sys, json\nsys.path.insert(0, {str(where)!r})\n"
                   "import lrs_focus_plugin_src as P\n")
        done = subprocess.run([python, "-c", prelude + code + "\nassert 'lrs_focus' not in sys.modules, "
                               "'the plugin imported the backend'\n"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


CLIENT_CODE = """
from lrs_focus_plugin_src import protocol, client
protocol.MAX_REPLY_BYTES = int(sys.argv[1]) if len(sys.argv) > 1 else {limit}
c = client.Client({endpoint!r})
try:
    print(json.dumps({{"ok": True, "reply": c.health(timeout=3)["model"]}}))
except client.BackendError as exc:
    print(json.dumps({{"ok": False, "code": exc.code}}))
"""


@pytest.mark.parametrize("limit, received", [(1 << 20, False), (8 << 20, True)])
def test_plugin_client_refuses_replies_over_its_limit(plugin_run, limit, received):
    """A 2 MiB reply: dropped unread (timeout) under a 1 MiB limit, received under 8 MiB."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    from lrs_focus import protocol as P

    stop = threading.Event()

    def answer():
        while not stop.is_set():
            if not router.poll(50):
                continue
            identity, frame = router.recv_multipart()
            msg = P.decode(frame)
            reply = P.health_reply(msg["id"], version="x", model="m" * (2 << 20), device="cpu", dtype="f",
                                   random_weights=True, queue_length=0, queue_size=1, running=False, uptime_s=0.0)
            router.send_multipart([identity, P.encode(reply)])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        out = plugin_run(CLIENT_CODE.format(limit=limit, endpoint=f"tcp://127.0.0.1:{port}"))
    finally:
        stop.set()
        thread.join(5)
        router.close()
    if received:
        assert out["ok"] and len(out["reply"]) == 2 << 20
    else:
        assert out == {"ok": False, "code": "timeout"}


def test_backend_client_socket_has_the_same_limit():
    from lrs_focus import protocol as P
    from lrs_focus.client import Client

    with Client("tcp://127.0.0.1:9", timeout_s=0.1) as c:
        assert c._sock.maxmsgsize == P.MAX_REPLY_BYTES


LAUNCH_CODE = """
import os, stat
from lrs_focus_plugin_src.backend_process import BackendLauncher
launcher = BackendLauncher()
out = {"log": launcher.log_path}
try:
    launcher.start(sys.executable + " -c \\"print('backend says hi')\\"")
    launcher._process.wait(30)
    out["tail"] = launcher.log_tail()
    out["dir_mode"] = oct(stat.S_IMODE(os.stat(os.path.dirname(launcher.log_path)).st_mode))
    out["file_mode"] = oct(stat.S_IMODE(os.stat(launcher.log_path).st_mode))
except OSError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def test_launcher_log_is_private_and_per_user(plugin_run, tmp_path):
    cache = tmp_path / "cache"
    out = plugin_run(LAUNCH_CODE, env={"XDG_CACHE_HOME": str(cache)})
    assert out["log"] == str(cache / "lrs_focus" / "backend.log"), "not a fixed name in the shared temp folder"
    assert "backend says hi" in out["tail"]
    assert (out["dir_mode"], out["file_mode"]) == ("0o700", "0o600")


def test_launcher_does_not_follow_a_planted_symlink(plugin_run, tmp_path):
    cache = tmp_path / "cache"
    (cache / "lrs_focus").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (cache / "lrs_focus" / "backend.log").symlink_to(victim)
    out = plugin_run(LAUNCH_CODE, env={"XDG_CACHE_HOME": str(cache)})
    assert "error" in out and "tail" not in out
    assert victim.read_text() == "precious\n"
    # a folder planted as a symlink is refused too
    cache2 = tmp_path / "cache2"
    cache2.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache2 / "lrs_focus").symlink_to(elsewhere)
    out = plugin_run(LAUNCH_CODE, env={"XDG_CACHE_HOME": str(cache2)})
    assert "not a plain folder" in out["error"] and not list(elsewhere.iterdir())
