"""A peer that stops reading: it must not pin the server's memory or block anyone; its jobs end.

The peer is a DEALER with a receive high-water mark of 1 that never calls recv: its I/O thread
stops reading after one message, the TCP window closes, and everything the server sends it stays
queued in the server. TCP_USER_TIMEOUT (serve --stalled-peer-timeout) makes the kernel abort
that connection, which frees the queue; later messages to it fail and cancel its jobs.
"""

from __future__ import annotations

import time

import psutil
import pytest
import zmq

from lrs_focus import protocol as P
from lrs_focus.client import Client
from lrs_focus.service import ServiceLimits

RESULT_BYTES = 20_000_000


def deaf_peer(endpoint: str):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.rcvhwm = 1
    sock.linger = 0
    sock.connect(endpoint)
    return sock


@pytest.mark.slow
def test_a_peer_that_never_reads_pins_nothing_for_long_and_blocks_no_one(server_process):
    server = server_process("--stalled-peer-timeout", "2")
    proc = psutil.Process(server.proc.pid)

    def mib() -> float:
        return proc.memory_info().rss / 2**20

    with Client(server.endpoint, timeout_s=30) as other:
        for _ in range(2):  # warm up the allocator with results of the same size
            other.ask("/a.tif", f"big:{RESULT_BYTES}")
        before = mib()
        peer = deaf_peer(server.endpoint)
        for i in range(4):
            peer.send(P.encode(P.ask("/a.tif", f"big:{RESULT_BYTES}", request_id=f"deaf{i}")))
        peak, worst_ping = before, 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            t = time.monotonic()
            assert other.ping()["type"] == "pong"
            worst_ping = max(worst_ping, time.monotonic() - t)
            peak = max(peak, mib())
            time.sleep(0.1)
        after = mib()
        assert other.ask("/a.tif", "still served?")["answer"]
        peer.close()
    print(f"deaf peer, 4 asks x {RESULT_BYTES / 2**20:.0f} MiB results: server RSS {before:.1f} -> peak {peak:.1f} "
          f"-> {after:.1f} MiB 6 s later; worst ping meanwhile {worst_ping * 1000:.1f} ms")
    assert worst_ping < 1.0, "the server must never block on the peer"
    assert peak - before > RESULT_BYTES / 2**20, "the test must really make the server queue results"
    assert after - before < 10, "queued replies must be freed once the peer is cut off"


@pytest.mark.slow
def test_the_running_job_of_a_peer_that_stopped_reading_is_cancelled(make_server, fake):
    engine = fake.FakeEngine()
    server = make_server(engine=engine, limits=ServiceLimits(stalled_peer_timeout_s=1.0))
    peer = deaf_peer(server.endpoint)
    peer.send(P.encode(P.ask("/a.tif", f"big:{RESULT_BYTES}", request_id="fill")))  # closes the window
    peer.send(P.encode(P.ask("/a.tif", "sleep:1.5", request_id="long")))  # 5 stages x 1.5 s if left alone
    t0 = time.monotonic()
    with Client(server.endpoint, timeout_s=10) as other:
        deadline = time.monotonic() + 15
        while other.status()["jobs_done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert other.status()["jobs_done"] == 2
        assert other.health()["dropped_replies"] >= 1
    peer.close()
    assert took < 5 * 1.5, f"the deaf peer's job ran to its end ({took:.1f} s) instead of being cancelled"
