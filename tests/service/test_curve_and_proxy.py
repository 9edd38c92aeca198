"""CURVE (only key holders get answers) and several workers behind zmq's proxy device."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import zmq.auth

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError, ServiceTimeout
from lrs_focus.service import serve_workers


@pytest.fixture
def keys(tmp_path):
    """zmq.auth certificates: DIR/server.key(_secret), and a second, unrelated server key."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    zmq.auth.create_certificates(str(keys_dir), "server")
    other = tmp_path / "other"
    other.mkdir()
    zmq.auth.create_certificates(str(other), "server")
    return keys_dir, other / "server.key"


def test_curve_server_answers_only_clients_with_its_key(make_server, keys):
    keys_dir, wrong_key = keys
    # CURVE forced on loopback: the tests may only use 127.0.0.1, the code path is the public one's
    server = make_server(keys_dir=str(keys_dir), force_curve=True)
    with Client(server.endpoint, timeout_s=5, server_public_key=str(keys_dir / "server.key")) as good:
        assert good.ping()["type"] == "pong"
        assert good.ask("/a.tif", "over CURVE")["answer"]
    with Client(server.endpoint, timeout_s=0.5) as plain:
        with pytest.raises(ServiceTimeout):
            plain.ping()
    with Client(server.endpoint, timeout_s=0.5, server_public_key=str(wrong_key)) as wrong:
        with pytest.raises(ServiceTimeout):
            wrong.ping()


def test_curve_allow_list_of_client_keys(make_server, keys, tmp_path):
    keys_dir, _ = keys
    clients = keys_dir / "clients"
    clients.mkdir()
    zmq.auth.create_certificates(str(tmp_path), "alice")
    (clients / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
    server = make_server(keys_dir=str(keys_dir), force_curve=True)
    server_key = str(keys_dir / "server.key")
    with Client(server.endpoint, timeout_s=5, server_public_key=server_key,
                client_key_file=str(tmp_path / "alice.key_secret")) as alice:
        assert alice.ping()["type"] == "pong"
    with Client(server.endpoint, timeout_s=0.5, server_public_key=server_key) as stranger:
        with pytest.raises(ServiceTimeout):
            stranger.ping()


def test_serve_refuses_a_public_endpoint_without_keys():
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "serve", "--model", "tiny",
                           "--endpoint", "tcp://0.0.0.0:5555"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "error [service_config]" in proc.stderr and "CURVE" in proc.stderr


@pytest.fixture
def two_workers(fake):
    engines = [fake.FakeEngine(stage_s=0.02), fake.FakeEngine(stage_s=0.02)]
    proxy, workers = serve_workers(engines, "tcp://127.0.0.1:*", queue_size=4)
    yield proxy, workers, engines
    for w in workers:
        w.stop()
    proxy.stop()


def test_two_workers_share_one_endpoint(two_workers):
    proxy, workers, engines = two_workers
    results, errors = [], []

    def run(i):
        try:
            with Client(proxy.endpoint, timeout_s=10) as c:
                for j in range(4):
                    results.append(c.ask("/a.tif", f"q{i}.{j}")["job_id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(results) == 16
    assert {r.split("-")[0] for r in results} == {"w0", "w1"}, "both workers must take jobs"
    assert all(e.max_active == 1 for e in engines) and sum(e.calls for e in engines) == 16
    with Client(proxy.endpoint, timeout_s=5) as c:
        h = c.health()
        assert h["workers"] == 2 and h["worker"] in ("w0", "w1")


def test_cancel_reaches_the_owning_worker_through_the_proxy(two_workers):
    proxy, workers, engines = two_workers
    with Client(proxy.endpoint, timeout_s=5) as c:
        for i in range(4):  # the DEALER alternates workers: a ping in between lands the cancel on the owner
            acc = c.submit("/a.tif", "sleep:0.3")
            if i % 2:
                c.ping()
            t0 = time.monotonic()
            with pytest.raises(ServiceError) as info:
                c.wait(acc, should_cancel=lambda: time.monotonic() - t0 > 0.05)
            assert info.value.code == P.CANCELLED
            assert time.monotonic() - t0 < 1.0
        assert c.ask("/a.tif", "quick")["answer"]


def test_worker_behind_a_public_proxy_refuses_shutdown(fake):
    """A worker cannot see the peer address through the proxy: with a public frontend it says no."""
    from lrs_focus.service import Server

    ctx = zmq.Context.instance()
    proxy_side = ctx.socket(zmq.DEALER)
    proxy_side.linger = 0
    port = proxy_side.bind_to_random_port("tcp://127.0.0.1")
    worker = Server(fake.FakeEngine(), f"tcp://127.0.0.1:{port}", connect=True, worker_name="w0",
                    frontend_is_loopback=False, context=ctx).start()
    try:
        proxy_side.send_multipart([b"client-identity", P.encode(P.shutdown("r1"))])
        assert proxy_side.poll(5000)
        identity, payload = proxy_side.recv_multipart()
        reply = P.validate_reply(P.decode(payload))
        assert identity == b"client-identity" and reply["code"] == P.FORBIDDEN and reply["id"] == "r1"
        assert not worker.stopped
    finally:
        worker.stop()
        proxy_side.close()
