"""The server's own bounds (fake engine, real sockets): ownership, limits, OOM, open timeout,
stuck jobs at shutdown, the access policy in front of the engine, frames that used to kill it."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from lrs_focus import protocol as P
from lrs_focus.access import AccessPolicy
from lrs_focus.client import Client, ServiceError
from lrs_focus.errors import RasterForbidden
from lrs_focus.service import ServiceLimits

from .conftest import small_geotiff


@pytest.fixture
def clients():
    made = []

    def make(server, timeout_s=5.0, **kw):
        c = Client(server.endpoint, timeout_s=timeout_s, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def raw_socket(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    return sock


def replies(sock, timeout=2.0, until_terminal=True):
    """Decoded replies until a terminal one (or silence)."""
    out = []
    while sock.poll(int(timeout * 1000)):
        out.append(P.validate_reply(P.decode(sock.recv(), P.MAX_REPLY_BYTES)))
        if until_terminal and P.is_terminal(out[-1]):
            break
    return out


# -- frames that used to stop the loop --------------------------------------------------------
ISSUE_FRAMES = [
    b'{"v":1,"type":"ping","id":"\\ud800"}',
    b'{"v":1,"type":"ask","id":"a1","raster":"\\udfff.tif","question":"q"}',
    b'{"v":1,"type":"ask","id":"a2","raster":"/a.tif","question":"\\ud800?"}',
    b'{"v":1,"type":"status","id":"s","job_id":"\\ud800"}',
    b'{"v":1,"type":"cancel","id":"c","job_id":"\\udc80x"}',
    b'{"v":1,"type":"ask","id":"a3","raster":"/a.tif","question":"q","options":{"mode":"\\ud800"}}',
    b'{"v":1,"type":"ping","id":"ok","\\ud800":1}',
]


def test_lone_surrogates_get_one_bad_json_each_and_the_loop_lives(make_server, fake):
    engine = fake.FakeEngine()
    server = make_server(engine=engine)
    sock = raw_socket(server)
    for frame in ISSUE_FRAMES:
        sock.send(frame)
        got = replies(sock, 2.0)
        assert [(r["type"], r["code"], r["id"]) for r in got] == [("error", P.BAD_JSON, None)], (frame, got)
    assert replies(sock, 0.3, until_terminal=False) == [], "one reply per frame"
    sock.close()
    assert engine.calls == 0
    with Client(server.endpoint, timeout_s=5) as c:
        assert c.ask("/a.tif", "still serving?")["answer"]
    assert not server.stopped


def test_replies_that_cannot_be_encoded_become_one_internal_error(make_server, fake):
    class NanEngine(fake.FakeEngine):
        def ask(self, *a, **kw):
            doc = super().ask(*a, **kw)
            doc["score"] = float("nan")
            return doc

    server = make_server(engine=NanEngine())
    sock = raw_socket(server)
    sock.send(P.encode(P.ask("/a.tif", "q", request_id="r1")))
    got = replies(sock)
    terminal = [r for r in got if P.is_terminal(r)]
    assert len(terminal) == 1 and terminal[0]["code"] == P.INTERNAL and terminal[0]["job_id"]
    assert replies(sock, 0.3) == []
    sock.close()


def test_integers_too_large_for_a_float_are_bad_requests_not_internal_errors(make_server, fake, caplog):
    """JSON integers have no size limit: 1e400 written out used to raise OverflowError in the
    validators and the engine (answered `internal`, logged with a traceback per frame)."""
    engine = fake.FakeEngine()
    server = make_server(engine=engine)
    sock = raw_socket(server)
    huge = "1" + "0" * 400
    for i, options in enumerate([f'{{"alpha":{huge}}}', f'{{"window":[0,0,{huge},5]}}',
                                 f'{{"stretch":[[0,{huge}]]}}', f'{{"alpha":-{huge}}}']):
        sock.send(f'{{"v":1,"type":"ask","id":"h{i}","raster":"/a.tif","question":"q","options":{options}}}'.encode())
        got = replies(sock, 2.0)
        assert [(r["type"], r.get("code"), r["id"]) for r in got] == [("error", P.BAD_REQUEST, f"h{i}")], (options, got)
    sock.close()
    assert engine.calls == 0
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


# -- jobs belong to their client ---------------------------------------------------------------
def test_status_and_cancel_only_for_the_callers_own_jobs(make_server, clients, fake):
    server = make_server(engine=fake.FakeEngine(stage_s=0.1))
    alice, mallory = clients(server), clients(server)
    first = alice.submit("/a.tif", "alice 1")
    second = alice.submit("/a.tif", "alice 2")
    time.sleep(0.05)
    mine = alice.status()
    assert mine["running"]["job_id"] == first["job_id"] and mine["queued"] == [second["job_id"]]
    theirs = mallory.status()
    assert theirs["running"] is None and theirs["queued"] == [], "status lists only the caller's jobs"
    for job_id in (first["job_id"], second["job_id"]):
        assert mallory.status(job_id)["job"]["state"] == "unknown"
        with pytest.raises(ServiceError) as other:
            mallory.cancel(job_id)
        with pytest.raises(ServiceError) as none:
            mallory.cancel("0" * 32)
        assert other.value.code == none.value.code == P.UNKNOWN_JOB
        assert other.value.reply["message"].replace(job_id, "X") == none.value.reply["message"].replace("0" * 32, "X")
    assert alice.wait(first)["answer"] and alice.wait(second)["answer"], "refused cancels changed nothing"
    assert mallory.status(first["job_id"])["job"]["state"] == "unknown", "finished jobs stay private too"
    assert alice.status(first["job_id"])["job"]["state"] == "finished"


def test_with_curve_a_job_belongs_to_the_client_key(make_server, clients, fake, tmp_path):
    import zmq.auth

    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    for name in ("alice", "bob"):
        zmq.auth.create_certificates(str(tmp_path), name)
        (keys / "clients" / f"{name}.key").write_bytes((tmp_path / f"{name}.key").read_bytes())
    server = make_server(engine=fake.FakeEngine(stage_s=0.1), keys_dir=str(keys), force_curve=True)
    key = str(keys / "server.key")
    alice = clients(server, server_public_key=key, client_key_file=str(tmp_path / "alice.key_secret"))
    alice_again = clients(server, server_public_key=key, client_key_file=str(tmp_path / "alice.key_secret"))
    bob = clients(server, server_public_key=key, client_key_file=str(tmp_path / "bob.key_secret"))
    acc = alice.submit("/a.tif", "q")
    assert alice_again.status(acc["job_id"])["job"]["state"] in ("queued", "running"), "same key, new connection"
    assert bob.status(acc["job_id"])["job"]["state"] == "unknown"
    with pytest.raises(ServiceError) as info:
        bob.cancel(acc["job_id"])
    assert info.value.code == P.UNKNOWN_JOB
    assert alice.wait(acc)["answer"]


# -- limits --------------------------------------------------------------------------------------
def test_server_maximum_for_max_new_tokens(make_server, clients):
    c = clients(make_server(limits=ServiceLimits(max_new_tokens=100)))
    with pytest.raises(ServiceError) as info:
        c.submit("/a.tif", "q", {"max_new_tokens": 101})
    assert info.value.code == "bad_options" and "100" in str(info.value)
    assert c.ask("/a.tif", "q", {"max_new_tokens": 100})["answer"]
    assert c.status()["jobs_done"] == 1, "the refused ask never became a job"


def test_question_limit_in_tokens(make_server, clients, fake):
    engine = fake.FakeEngine(tokenizer=True)
    c = clients(make_server(engine=engine, limits=ServiceLimits(max_question_tokens=5)))
    assert c.ask("/a.tif", "one two three four five")["answer"]
    with pytest.raises(ServiceError) as info:
        c.ask("/a.tif", "one two three four five six")
    assert info.value.code == P.BAD_REQUEST and "6 tokens" in str(info.value)
    assert engine.calls == 1, "the engine never saw the long question"
    with pytest.raises(ServiceError) as info:  # the cheap character limit still comes first
        c.submit("/a.tif", "x" * (P.MAX_QUESTION_CHARS + 1))
    assert info.value.code == P.BAD_REQUEST


@pytest.mark.parametrize("question", ["fail:out_of_memory", "fail:cuda_out_of_memory"])
def test_out_of_memory_is_its_own_code_and_the_server_stays_healthy(make_server, clients, question):
    c = clients(make_server())
    with pytest.raises(ServiceError) as info:
        c.ask("/a.tif", question)
    assert info.value.code == P.OUT_OF_MEMORY and info.value.reply["job_id"]
    h = c.health()
    assert h["running"] is False and h["queue_length"] == 0
    assert c.ask("/a.tif", "after the OOM")["answer"]


# -- the access policy and the bounded open ----------------------------------------------------
def test_the_engine_gets_only_what_the_policy_admits(make_server, clients, fake, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    small_geotiff(root / "ok.tif")
    engine = fake.FakeEngine()
    c = clients(make_server(engine=engine, access=AccessPolicy(roots=(str(root),))))
    assert c.ask(str(root / "sub" / ".." / "ok.tif"), "q")["answer"]
    assert engine.rasters == [str(root / "ok.tif")], "the engine gets the resolved path"
    for path in ("/etc/passwd", "/vsistdin/", "/vsicurl/http://127.0.0.1:9/x.tif", str(root)):
        acc = c.submit(path, "q")
        with pytest.raises(ServiceError) as info:
            c.wait(acc)
        assert info.value.code == "raster_forbidden" and info.value.reply["job_id"] == acc["job_id"]
    assert engine.rasters == [str(root / "ok.tif")]


class SlowPolicy:
    """A policy check that takes `seconds` (a hung mount, a slow server) unless the path is fast."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.running = 0
        self.lock = threading.Lock()

    def check(self, path: str) -> str:
        if path == "fast":
            return path
        with self.lock:
            self.running += 1
        try:
            time.sleep(self.seconds)
            if path == "forbidden":
                raise RasterForbidden("no")
            return path
        finally:
            with self.lock:
                self.running -= 1


def test_a_slow_open_is_abandoned_and_the_worker_moves_on(make_server, clients, fake):
    policy = SlowPolicy(1.5)
    limits = ServiceLimits(open_timeout_s=0.3, max_stuck_opens=2)
    c = clients(make_server(engine=fake.FakeEngine(), access=policy, limits=limits), timeout_s=10)
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as info:
        c.ask("hung-mount.tif", "q")
    assert info.value.code == "raster_unreadable" and "0.3 s" in str(info.value)
    assert time.monotonic() - t0 < 1.5
    assert c.ask("fast", "the next job runs at once")["answer"]
    # a cancel during a slow open ends the job at once
    acc = c.submit("slow.tif", "q")
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as info:
        c.wait(acc, should_cancel=lambda: time.monotonic() - t0 > 0.1)
    assert info.value.code == P.CANCELLED and time.monotonic() - t0 < 1.0
    # two abandoned opens still run: the next slow ask is refused at once instead of piling up threads
    assert policy.running == 2
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as info:
        c.ask("third.tif", "q")
    assert info.value.code == "raster_unreadable" and "stuck" in str(info.value)
    assert time.monotonic() - t0 < 0.5
    time.sleep(1.5)  # the stuck ones end by themselves: asks work again
    assert c.ask("fast", "q")["answer"]


def test_shutdown_ends_even_when_the_job_never_checks_for_cancel(make_server, fake):
    server = make_server(engine=fake.FakeEngine(), limits=ServiceLimits(shutdown_timeout_s=0.5))
    sock = raw_socket(server)
    sock.send(P.encode(P.ask("/a.tif", "stuck:1.5", request_id="stuck")))
    sock.send(P.encode(P.ask("/a.tif", "queued behind it", request_id="queued")))
    got = [P.decode(sock.recv()) for _ in range(2) if sock.poll(2000)]
    assert [r["type"] for r in got] == ["accepted", "accepted"]
    t0 = time.monotonic()
    server.stop()
    assert server.stopped and time.monotonic() - t0 < 2.5, "shutdown must not wait for the stuck job"
    got = replies(sock, 1.0, until_terminal=False)
    terminals = sorted((r["id"], r["code"]) for r in got if P.is_terminal(r))
    assert terminals == [("queued", P.SHUTTING_DOWN), ("stuck", P.SHUTTING_DOWN)]
    time.sleep(1.0)  # the stuck engine call returns: nothing more may be sent (and nothing may crash)
    assert replies(sock, 0.3) == []
    sock.close()
