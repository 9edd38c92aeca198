"""Fuzz: >= 10,000 malformed frames; every one gets an `error`, the server lives, RSS stays flat."""

from __future__ import annotations

import json
import random
import socket

import psutil
import pytest

from lrs_focus import protocol as P
from lrs_focus.client import Client

N_FRAMES = 10_500
BATCH = 250


def _malformed(rng: random.Random) -> list[bytes]:
    """One malformed message (a list of frames), from one of the categories of the issue."""
    kind = rng.randrange(10)
    rid = f"f{rng.randrange(10**9)}"
    if kind == 0:  # binary junk
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))]
    if kind == 1:  # not JSON / truncated JSON
        good = P.encode(P.ask("/a.tif", "q"))
        return [good[: rng.randrange(1, len(good))]]
    if kind == 2:  # JSON but not an object
        return [json.dumps(rng.choice([[1, 2], "ping", 3, None, True, [{"v": 1}]])).encode()]
    if kind == 3:  # wrong types
        msg = P.ask("/a.tif", "q", {"alpha": 0.5})
        field = rng.choice(["v", "type", "id", "raster", "question", "options"])
        msg[field] = rng.choice([None, 3.5, [1], {"x": {}}, True, -1]) if field != "id" else rng.choice([3, [1], {}])
        return [json.dumps(msg).encode()]
    if kind == 4:  # missing fields
        msg = rng.choice([P.ask("/a.tif", "q"), P.cancel("j"), P.ping()])
        msg.pop(rng.choice([k for k in ("v", "type", "raster", "question", "job_id") if k in msg]))
        if "v" in msg and "type" in msg and msg["type"] == "ping":
            msg.pop("id")
        return [json.dumps(msg).encode()]
    if kind == 5:  # huge strings (below the size limit, above the field limits)
        msg = P.ask("/a.tif", "q" * rng.choice([10_000, 100_000, 400_000]), request_id=rid)
        return [json.dumps(msg).encode()]
    if kind == 6:  # deep nesting, inside and outside an object
        depth = rng.choice([1_000, 10_000, 100_000])
        if rng.random() < 0.5:
            return [b"[" * depth + b"]" * depth]
        return [b'{"v":1,"type":"ask","id":"%s","raster":"a","question":"q","options":' % rid.encode()
                + b'{"a":' * depth + b"1" + b"}" * depth + b"}"]
    if kind == 7:  # multipart junk
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30))) for _ in range(rng.randrange(2, 6))]
    if kind == 8:  # bad versions, unknown types, bad option values by type
        msg = rng.choice([
            {"v": rng.choice([0, 2, "1", 1.5, None]), "type": "ping", "id": rid},
            {"v": 1, "type": rng.choice(["pong", "result", "", "PING", "x" * 5000]), "id": rid},
            {"v": 1, "type": "ask", "id": rid, "raster": "a", "question": "q",
             "options": {rng.choice(["alpha", "n_max", "bands", "mode"]): rng.choice(["x", [None], {"a": 1}, True])}},
        ])
        return [json.dumps(msg).encode()]
    # 9: invalid UTF-8 inside otherwise JSON-looking bytes, NaN, huge numbers
    return [rng.choice([b'{"v":1,"type":"ping","id":"\xff\xfe"}', b'{"v": NaN}', b'{"v": 1e999999}',
                        b'{"v": ' + b"9" * 5000 + b"}", b"\x00" * 64])]


@pytest.mark.slow
def test_fuzz_every_malformed_frame_gets_an_error_and_memory_stays_flat(server_process):
    server = server_process()
    proc = psutil.Process(server.proc.pid)
    rng = random.Random(20250704)
    counts: dict[str, int] = {}
    rss = []
    with Client(server.endpoint, timeout_s=10) as client:
        sock = client._sock
        sent = 0
        while sent < N_FRAMES:
            if sent in (2_000, N_FRAMES - N_FRAMES % BATCH):
                rss.append(proc.memory_info().rss)
            batch = [_malformed(rng) for _ in range(BATCH)]
            for frames in batch:
                sock.send_multipart(frames)
            for _ in batch:
                reply = client.receive(10)
                assert reply is not None, f"no reply after {sent} frames (server alive: {server.alive()})"
                assert reply["type"] == "error", reply
                counts[reply["code"]] = counts.get(reply["code"], 0) + 1
            sent += len(batch)
        assert client.receive(0.3) is None, "more replies than frames"
        # raw TCP garbage without a ZMTP handshake: no identity, no reply, and no harm
        host, port = "127.0.0.1", server.port
        for i in range(20):
            with socket.create_connection((host, port), timeout=2) as raw:
                raw.sendall(bytes(random.Random(i).randrange(256) for _ in range(512)))
        assert client.ping()["type"] == "pong"
        assert client.ask("/a.tif", "still fine?")["answer"]
    assert server.alive()
    assert sum(counts.values()) == sent >= 10_000
    assert {P.BAD_JSON, P.BAD_REQUEST, P.BAD_FRAMES, P.UNSUPPORTED_VERSION, P.UNKNOWN_TYPE} <= set(counts), counts
    grown_mb = (rss[-1] - rss[0]) / 2**20
    print(f"fuzz: {sent} frames, replies by code {counts}, RSS {rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB")
    assert grown_mb < 16, f"server RSS grew by {grown_mb:.1f} MiB over {sent} malformed frames"
