"""Issue 23's service edges: result/status order, no cross-client counts, ipc paths, limits,
a fair and bounded proxy, and the layout (no import circle, no module over about 450 lines)."""

from __future__ import annotations

import ast
import math
import os
import socket
import time
from pathlib import Path

import pytest
import zmq

from lrs_focus import protocol as P
from lrs_focus.client import Client

PACKAGE = Path(__file__).resolve().parents[2] / "backend" / "lrs_focus"
#: The QGIS plugin (its symlinks to backend modules count as its own modules here, as in the zip).
PLUGIN = Path(__file__).resolve().parents[2] / "qgis_plugin"


class SlowItems(dict):
    """A dict whose JSON encoding takes `delay` seconds (json calls items() on dict subclasses)."""

    delay = 1.2

    def items(self):
        time.sleep(self.delay)
        return super().items()


class SlowResultEngine:
    """Answers at once with a result whose encoding is slow, and with a cache count."""

    def describe(self):
        return {"model": "fake", "device": "cpu", "dtype": "float32", "random_weights": True}

    def ask(self, raster, question, options=None, progress=None, should_stop=None, job_id=""):
        slow = question == "slow"
        return {"answer": "ok", "job_id": job_id, "trace": SlowItems(levels=[]) if slow else {"levels": []},
                "counts": {"tiles_encoded": 3, "tiles_from_cache": 2, "vit_tokens": 0, "llm_vision_tokens": 0,
                           "prefill_tflops": 0.0},
                "features": {"type": "FeatureCollection", "features": []}, "crs_wkt": ""}


def test_status_never_says_finished_before_the_result_is_sent(make_server):
    """The job shows as running while its (big, slow) result is encoded; "finished" only after it."""
    server = make_server(engine=SlowResultEngine())
    with Client(server.endpoint, timeout_s=5) as c:
        acc = c.submit("/a.tif", "slow")
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            c.send(P.status(acc["job_id"]))
            reply = c.receive(0.2)
            while reply is not None:
                seen.append(reply)
                reply = c.receive(0.01)
            if any(m["type"] == "result" for m in seen):
                break
            time.sleep(0.05)
    kinds = [(m["type"], (m.get("job") or {}).get("state")) for m in seen]
    assert ("result", None) in kinds, kinds
    before = kinds[:kinds.index(("result", None))]
    assert ("status", "running") in before, "the probe must have run during the encoding"
    assert ("status", "finished") not in before, f"'finished' came before the result: {kinds}"


def test_results_over_the_service_carry_no_cache_counts(make_server):
    """tiles_from_cache would tell a client what others asked about; the service strips it."""
    server = make_server(engine=SlowResultEngine())
    with Client(server.endpoint, timeout_s=5) as c:
        result = c.ask("/a.tif", "fast")
    assert "tiles_from_cache" not in result["counts"] and result["counts"]["tiles_encoded"] == 3


# -- ipc endpoints -------------------------------------------------------------------------------------
def test_ipc_endpoint_in_use_is_refused_not_taken_over(fake, tmp_path):
    from lrs_focus.service import Server, ServiceConfigError

    path = tmp_path / "lrs.sock"
    first = Server(fake.FakeEngine(), f"ipc://{path}").start()
    try:
        with pytest.raises(ServiceConfigError, match="in use"):
            Server(fake.FakeEngine(), f"ipc://{path}")
        with Client(f"ipc://{path}", timeout_s=5) as c:  # the first server still owns it
            assert c.health()["model"] == "fake"
    finally:
        first.stop()


@pytest.mark.parametrize("kind", ["file", "symlink", "folder"])
def test_ipc_endpoint_naming_a_file_is_refused_and_the_file_kept(fake, tmp_path, kind):
    from lrs_focus.service import Server, ServiceConfigError, check_endpoint_free

    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    path = tmp_path / "endpoint"
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "symlink":
        path.symlink_to(victim)
    else:
        path.mkdir()
    for attempt in (lambda: check_endpoint_free(f"ipc://{path}"), lambda: Server(fake.FakeEngine(), f"ipc://{path}")):
        with pytest.raises(ServiceConfigError, match="not a socket"):
            attempt()
    assert os.path.lexists(path) and victim.read_text() == "precious\n"


def test_stale_ipc_socket_is_reused(fake, tmp_path):
    from lrs_focus.service import Server

    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    server = Server(fake.FakeEngine(), f"ipc://{path}").start()
    try:
        with Client(f"ipc://{path}", timeout_s=5) as c:
            assert c.ping()["type"] == "pong"
    finally:
        server.stop()


# -- limits ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("stalled_peer_timeout_s", 1e300), ("stalled_peer_timeout_s", math.inf),
                                          ("open_timeout_s", math.nan), ("open_timeout_s", math.inf),
                                          ("shutdown_timeout_s", -1.0), ("max_new_tokens", 0),
                                          ("max_question_tokens", 2.5)])
def test_service_limits_refuse_values_that_fail_later(field, value):
    from lrs_focus.service import ServiceConfigError, ServiceLimits

    with pytest.raises(ServiceConfigError):
        ServiceLimits(**{field: value})


@pytest.mark.parametrize("size", [0, -1, True, 2.0])
def test_queue_size_is_checked(fake, size):
    from lrs_focus.service import ServiceConfigError, check_queue_size

    with pytest.raises(ServiceConfigError):
        check_queue_size(size)


# -- the proxy -------------------------------------------------------------------------------------------
FLOOD_FRAME = P.encode({"v": 1, "type": "ping", "id": "flood", "pad": [0] * 400_000})  # ~1 MiB, slow to decode


def test_one_flooding_client_does_not_starve_others_behind_the_proxy(fake):
    """A client sends 1 MiB frames without reading; another client's ping still answers quickly,
    and what the proxy holds stays bounded."""
    from lrs_focus.service import serve_workers

    assert len(FLOOD_FRAME) < P.MAX_MESSAGE_BYTES
    proxy, workers = serve_workers([fake.FakeEngine()], "tcp://127.0.0.1:*")
    ctx = zmq.Context.instance()
    flood = ctx.socket(zmq.DEALER)
    flood.linger = 0
    flood.sndhwm = 0
    flood.connect(proxy.endpoint)
    try:
        with Client(proxy.endpoint, timeout_s=10) as other:
            assert other.ping()["type"] == "pong"
            for _ in range(150):
                flood.send(FLOOD_FRAME)
            time.sleep(0.5)  # the flood reaches the proxy and the worker
            t0 = time.monotonic()
            other.ping()
            took = time.monotonic() - t0
        assert took < 1.5, f"a ping behind a flood took {took:.2f} s"
        assert proxy.peak_queued_bytes <= proxy.per_client * len(FLOOD_FRAME) + 4096
        assert proxy.refused > 0, "the flood's overflow must be answered busy, not queued"
    finally:
        flood.close()
        for w in workers:
            w.stop()
        proxy.stop()


def test_proxy_answers_busy_with_the_request_id_when_a_client_has_too_much_waiting(fake):
    from lrs_focus.service import ProxyFrontend, Server

    proxy = ProxyFrontend("tcp://127.0.0.1:*", per_client=2).start()  # no worker yet: requests wait
    ctx = zmq.Context.instance()
    c = ctx.socket(zmq.DEALER)
    c.linger = 0
    c.connect(proxy.endpoint)
    worker = None
    try:
        for i in range(3):
            c.send(P.encode(P.ping(f"r{i}")))
        assert c.poll(5000)
        reply = P.validate_reply(P.decode(c.recv(), P.MAX_REPLY_BYTES))
        assert (reply["type"], reply["code"], reply["id"]) == ("error", P.BUSY, "r2")
        worker = Server(fake.FakeEngine(), proxy.backend_endpoint, connect=True, worker_name="w0",
                        frontend_is_loopback=True, context=ctx).start()
        got = set()
        while len(got) < 2 and c.poll(5000):
            got.add(P.decode(c.recv(), P.MAX_REPLY_BYTES)["id"])
        assert got == {"r0", "r1"}, "the waiting requests are served once a worker comes"
    finally:
        c.close()
        if worker is not None:
            worker.stop()
        proxy.stop()


# -- layout -----------------------------------------------------------------------------------------------
def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules `name` imports, at module level and inside functions (a lazy import still makes
    a circle: it only moves the failure to run time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()

    def nodes(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):  # never runs
                continue
            yield node
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from nodes([child])

    for node in nodes(tree.body):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _circle(graph: dict[str, set[str]]):
    """One import circle of `graph` as a list of modules, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node):
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        trail.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", [PACKAGE, PLUGIN], ids=["backend", "qgis_plugin"])
def test_package_has_no_import_circle_and_no_module_over_450_lines(package):
    """Every import counts, lazy ones inside functions too (engine.py imports answer.py lazily; answer.py
    takes the options from options.py, not from the engine)."""
    modules = _modules(package)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its rooms is not a circle; a room importing its package is
    rooms = {n: {m for m in deps if not (n.startswith(m + ".") and modules[m].name == "__init__.py")}
             for n, deps in graph.items()}
    assert _circle(rooms) is None, f"import circle: {' -> '.join(_circle(rooms))}"
    sizes = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in modules.items()}
    assert len(sizes) > 10 and not {n: s for n, s in sizes.items() if s > 450}
    assert not [n for n, deps in graph.items() if n.startswith("lrs_focus.service.") and "lrs_focus.service" in deps]
