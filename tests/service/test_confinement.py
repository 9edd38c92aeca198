"""Issue 20: a running `serve` (loopback) attacked with the access policy switched OFF
(LRS_FOCUS_TEST_NO_ACCESS_POLICY=1): the kernel confinement of the raster readers alone must
hold. Nothing outside the root reaches a result, no job outlives its deadline, the readers'
memory is bounded, and the server keeps answering another client meanwhile.

Each attack is also shown to work on GDAL unconfined (`test_the_attacks_are_real`), so that
these tests fail if the confinement goes.
"""

from __future__ import annotations

import socket
import threading
import time

import psutil
import pytest

from lrs_focus.client import Client, ServiceError
from lrs_focus.raster import RasterSource

from . import attack_rasters as A
from .conftest import ServeCli, root_and_outside, small_geotiff

pytestmark = pytest.mark.skipif(__import__("lrs_focus.readers.confine", fromlist=["x"]).landlock_abi() < 4,
                                reason="needs a kernel with Landlock ABI >= 4")
JOB_TIMEOUT_S = 3.0
SLACK_S = 4.0  # a killed reader, the reply, a loaded 2-core machine
REFUSED = {"raster_unreadable", "not_a_raster", "raster_not_found", "raster_too_large", "job_timeout"}


class Listener:
    """A loopback TCP port that counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root, outside = root_and_outside(tmp_path_factory.mktemp("confined"))
    listener = Listener()
    rasters = {**A.source_escapes(root, outside), "aux_overview_outside": A.overview_escape(root, outside),
               "outside_by_link": str(root / "link.tif"), "passwd_direct": "/etc/passwd",
               "url_in_vrt": A.loopback_url_vrt(root, listener.port)}
    (root / "link.tif").symlink_to(outside / "secret.tif")
    server = ServeCli("--allow-root", str(root), "--workers", "2", "--readers", "3", "--job-timeout", str(JOB_TIMEOUT_S),
                      "--max-new-tokens-limit", "4", "--queue-size", "8",
                      env={"LRS_FOCUS_TEST_NO_ACCESS_POLICY": "1"})
    yield server, root, outside, rasters, listener
    listener.stop.set()
    server.kill()


def ask(server, raster: str, timeout_s: float = 60.0) -> tuple[str, float, dict | None]:
    """(code or "result", seconds, result)."""
    t0 = time.monotonic()
    with Client(server.endpoint, timeout_s=timeout_s) as c:
        try:
            doc = c.ask(raster, "what is here?", {"max_new_tokens": 2})
            return "result", time.monotonic() - t0, doc
        except ServiceError as exc:
            return exc.code, time.monotonic() - t0, None


def test_health_reports_the_confinement_and_the_policy_is_off(attacked):
    server = attacked[0]
    assert any("ACCESS_POLICY=1" in line for line in server.stderr)
    with Client(server.endpoint, timeout_s=30) as c:
        conf = c.health()["confinement"]
    assert conf["confined"] is True and conf["landlock_abi"] >= 4 and conf["tcp"] == "none"
    assert conf["read_roots"] == [str(attacked[1].resolve())]
    code, seconds, doc = ask(server, str(attacked[1] / "ok.tif"))
    assert code == "result" and doc["answer"] is not None


@pytest.mark.parametrize("name", ["relative_true", "prefixed_attribute", "driver_prefix", "inline_vrt_passwd",
                                  "passwd_raw_band", "carriage_return", "outside_by_link", "passwd_direct",
                                  "url_in_vrt"])
def test_sources_outside_the_roots_never_reach_a_result(attacked, name):
    server, _, _, rasters, listener = attacked
    code, seconds, _ = ask(server, rasters[name])
    assert code in REFUSED, f"{name}: {code}"
    assert seconds < JOB_TIMEOUT_S + SLACK_S
    assert listener.connections == 0  # /vsicurl/ to loopback never connected


def test_the_attacks_are_real(attacked):
    """Unconfined GDAL (this process) reads every one of them: the tests above can fail."""
    _, _, outside, rasters, _ = attacked
    for name in ("relative_true", "prefixed_attribute", "driver_prefix", "inline_vrt_passwd", "passwd_raw_band",
                 "carriage_return", "outside_by_link"):
        src = RasterSource.open(rasters[name])
        assert src.read_rgb((0, 0, src.width, src.height), (src.height, src.width)).any(), name
    assert RasterSource.open(rasters["aux_overview_outside"]).overview_sizes == [(32, 32)]


def test_an_overview_file_outside_the_roots_is_not_read(attacked):
    """The .aux.xml's OVERVIEW_&#70;ILE names a file outside: the reader cannot open it, so the
    question reads the raster's own pixels (and the confined source shows no overview)."""
    server, root, _, rasters, _ = attacked
    from lrs_focus.readers.pool import ReaderPool

    pool = ReaderPool(size=1, roots=[str(root)], no_policy=True).start()
    try:
        assert pool.open(rasters["aux_overview_outside"]).overview_sizes == []
    finally:
        pool.close()
    code, _, doc = ask(server, rasters["aux_overview_outside"])
    assert code == "result"


def _ask_in_thread(server, raster):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(zip(("code", "seconds", "doc"), ask(server, raster))))
    thread.start()
    return thread, box


@pytest.mark.parametrize("builder", ["fifo", "dag"])
def test_wedged_readers_end_by_the_deadline_and_others_are_answered(attacked, builder):
    server, root, _, _, _ = attacked
    if builder == "fifo":
        targets = list(A.fifo_sidecars(root).values())
    else:
        targets = [A.vrt_dag(root)]
    threads = [_ask_in_thread(server, t) for t in targets]
    time.sleep(0.5)
    t0 = time.monotonic()
    with Client(server.endpoint, timeout_s=30) as c:  # another client, while they hang
        assert c.ping()["type"] == "pong"
        assert time.monotonic() - t0 < 1.0
    code, seconds, doc = ask(server, str(root / "ok.tif"))
    assert code == "result", code
    for thread, box in threads:
        thread.join(JOB_TIMEOUT_S + SLACK_S + 30)
        assert box["code"] in REFUSED | {"result"}, box["code"]
        assert box["seconds"] < 2 * JOB_TIMEOUT_S + SLACK_S  # at most one deadline queued behind another
    if builder == "fifo":
        assert {box["code"] for _, box in threads} == {"job_timeout"}


def test_device_links_cost_nothing(attacked):
    server, root, _, _, _ = attacked
    for name, raster in A.device_links(root).items():
        code, seconds, _ = ask(server, raster)
        assert code in REFUSED | {"result"}, name
        assert seconds < JOB_TIMEOUT_S + SLACK_S, name
    assert ask(server, str(root / "zero.tif"))[0] in REFUSED


def test_declared_sizes_are_refused_before_reading(attacked):
    server, root, _, _, _ = attacked
    code, seconds, _ = ask(server, A.one_huge_tile(root))
    assert code == "raster_too_large" and seconds < JOB_TIMEOUT_S
    code, seconds, _ = ask(server, A.huge_vrt(root))
    assert code == "raster_too_large" and seconds < JOB_TIMEOUT_S


def test_reader_memory_is_bounded_and_the_server_is_still_well(attacked):
    """Runs after the attacks (file order): every reader has its RLIMIT_AS, none came near it."""
    server, root, _, _, _ = attacked
    deadline = time.monotonic() + 20
    while True:  # killed readers are replaced in the background: wait until all three are limited
        readers = [p for p in psutil.Process(server.proc.pid).children()
                   if "lrs_focus.readers.child" in " ".join(p.cmdline())]
        limits = [reader.rlimit(psutil.RLIMIT_AS)[0] for reader in readers]
        if (len(readers) == 3 and all(limit > 0 for limit in limits)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(readers) == 3
    for reader, limit in zip(readers, limits):
        assert 0 < limit <= 4 << 30
        with open(f"/proc/{reader.pid}/status") as f:
            hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        assert hwm_kb * 1024 < 512 << 20, f"a reader peaked at {hwm_kb / 1024:.0f} MiB"
    assert psutil.Process(server.proc.pid).memory_info().rss < 1 << 30
    assert ask(server, str(root / "ok.tif"))[0] == "result"


def test_the_policy_itself_runs_in_the_readers(tmp_path):
    """With the policy ON, the check and the open run in the readers, which the deadline kills: a
    DAG of VRTs passes the check at once (it visits each file once) and then GDAL's own open
    spins (its probe read decodes 20^8 sources); more such asks than the server's stuck-open
    slots (4) leave it answering others. Had the open run in the server process, the fifth would
    find every slot held (raster_unreadable: "earlier raster opens ... stuck")."""
    root = tmp_path / "root"
    root.mkdir()
    small_geotiff(root / "ok.tif")
    dag = A.vrt_dag(root)
    server = ServeCli("--allow-root", str(root), "--readers", "2", "--job-timeout", str(JOB_TIMEOUT_S),
                      "--max-new-tokens-limit", "4", "--queue-size", "8")  # one worker: one set of slots
    try:
        threads = [_ask_in_thread(server, dag) for _ in range(5)]
        for thread, box in threads:
            thread.join(5 * JOB_TIMEOUT_S + 30)
            assert box["code"] == "job_timeout", box["code"]
        code, seconds, doc = ask(server, str(root / "ok.tif"))
        assert code == "result", code
    finally:
        server.kill()
