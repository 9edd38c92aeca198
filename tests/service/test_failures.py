"""Peers dying: a client killed mid-job, the server killed mid-job, then restarted."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError, ServiceTimeout

CLIENT_SCRIPT = """
import sys
from lrs_focus.client import Client
c = Client(sys.argv[1], timeout_s=10)
acc = c.submit("/a.tif", "sleep:0.15")
print(acc["job_id"], flush=True)
c.wait(acc)
"""


@pytest.mark.slow
def test_killed_client_does_not_wedge_the_server_and_its_job_is_cancelled(make_server, until, fake):
    engine = fake.FakeEngine(stage_s=0.15)
    server = make_server(engine=engine)
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.endpoint], stdout=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip()
    assert job_id
    proc.kill()
    proc.wait(10)
    with Client(server.endpoint, timeout_s=5) as c:
        t0 = time.monotonic()
        assert c.ping()["type"] == "pong"
        assert time.monotonic() - t0 < 0.5, "ping must not wait for the orphaned job"
        assert c.status(job_id)["job"]["state"] == "unknown", "another client must not see the job"
        # the next progress message to the vanished peer fails (ROUTER_MANDATORY): the orphan is
        # cancelled at its next stage boundary instead of running its 5 stages to the end
        assert until(lambda: c.status()["jobs_done"] == 1, 10)
        assert time.monotonic() - t0 < 5 * 0.15, "the orphan must be cancelled, not run to the end"
        assert c.health()["dropped_replies"] >= 1
        assert c.ask("/a.tif", "next")["answer"]
        assert c.status()["jobs_done"] == 2


@pytest.mark.slow
def test_killed_server_gives_a_timeout_then_a_restart_serves_again(server_process):
    server = server_process()
    with Client(server.endpoint, timeout_s=0.5) as c:
        acc = c.submit("/a.tif", "sleep:1.0")
        seen = []
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(ServiceTimeout):
            c.wait(acc, progress=lambda *a: seen.append(a))
        assert time.monotonic() - t0 < 3, "the client must give up within about two timeouts"
        with pytest.raises(ServiceTimeout):
            c.ping()
        # restart on the same endpoint: the same client reconnects by itself
        restarted = server_process(port=server.port)
        c.timeout_s = 5
        assert c.ping()["type"] == "pong"
        assert c.status(acc["job_id"])["job"]["state"] == "unknown"
        assert c.ask("/a.tif", "after restart")["answer"]
    assert restarted.alive()


@pytest.mark.slow
def test_wait_notices_a_restarted_server_forgot_the_job(server_process):
    server = server_process()
    with Client(server.endpoint, timeout_s=0.5) as c:
        acc = c.submit("/a.tif", "sleep:1.0")
        server.kill()
        server_process(port=server.port)
        with pytest.raises(ServiceError) as info:
            c.wait(acc)
        assert info.value.code in (P.UNKNOWN_JOB, P.TIMEOUT)
