"""protocol.py: builders produce valid messages, validators refuse everything else, stdlib only."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

from lrs_focus import protocol as P

PROTOCOL_FILE = Path(P.__file__)


def test_protocol_imports_only_the_standard_library():
    tree = ast.parse(PROTOCOL_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "protocol.py must not import from its package (the plugin copies it)"
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


@pytest.mark.parametrize("msg", [P.ping(), P.health(), P.status(), P.status("j1"), P.cancel("j1"), P.shutdown(),
                                 P.ask("/data/a.tif", "how many ships?", {"mode": "paper", "alpha": 0.25, "n_max": 80,
                                                                          "bands": [4, 3, 2], "max_levels": None})])
def test_every_request_builder_validates_and_round_trips(msg):
    assert msg["v"] == P.PROTOCOL_VERSION and msg["type"] in P.REQUEST_TYPES and msg["id"]
    assert P.validate_request(P.decode(P.encode(msg))) == msg


@pytest.mark.parametrize("msg", [
    P.pong("r", 1.0),
    P.health_reply("r", version="0.1", model="tiny", device="cpu", dtype="float32", random_weights=True,
                   queue_length=0, queue_size=8, running=False, uptime_s=1.5),
    P.status_reply("r", running=None, queued=[], queue_size=8, jobs_done=0, job={"job_id": "j", "state": "unknown"}),
    P.accepted("r", "j", 0), P.progress("r", "j", "encode", 1, 0.5, "tiles"), P.result("r", "j", {"answer": "2"}),
    P.error("r", P.BUSY, "full"), P.error(None, P.BAD_JSON, "junk"), P.cancelling("r", "j", "running"), P.bye("r"),
])
def test_every_reply_builder_validates(msg):
    assert msg["type"] in P.REPLY_TYPES
    assert P.validate_reply(P.decode(P.encode(msg))) == msg


@pytest.mark.parametrize("frame", [b"", b"\xff\xfe", b"not json", b"[1, 2]", b"42", b'"s"', b"null", b"NaN",
                                   b'{"a": NaN}', b"[" * 100000, b"{" * 5000, b"9" * 10000])
def test_decode_refuses_non_objects_with_bad_json(frame):
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frame)
    assert info.value.code == P.BAD_JSON


@pytest.mark.parametrize("msg, code", [
    ({}, P.UNSUPPORTED_VERSION),
    ({"v": 2, "type": "ping", "id": "a"}, P.UNSUPPORTED_VERSION),
    ({"v": True, "type": "ping", "id": "a"}, P.UNSUPPORTED_VERSION),
    ({"v": 1, "type": "dance", "id": "a"}, P.UNKNOWN_TYPE),
    ({"v": 1, "type": ["ping"], "id": "a"}, P.UNKNOWN_TYPE),
    ({"v": 1, "type": "ping"}, P.BAD_REQUEST),
    ({"v": 1, "type": "ping", "id": 7}, P.BAD_REQUEST),
    ({"v": 1, "type": "ping", "id": "x" * 1000}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "question": "q"}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": 5, "question": "q"}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "  "}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q" * 100000}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": []}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": {"bogus": 1}}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": {"alpha": "x"}}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": {"n_max": True}}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": {"bands": ["a"]}}, P.BAD_REQUEST),
    ({"v": 1, "type": "ask", "id": "a", "raster": "r", "question": "q", "options": {"alpha": math.inf}}, P.BAD_REQUEST),
    ({"v": 1, "type": "cancel", "id": "a"}, P.BAD_REQUEST),
    ({"v": 1, "type": "cancel", "id": "a", "job_id": {"x": 1}}, P.BAD_REQUEST),
])
def test_validate_request_refuses_with_a_stable_code(msg, code):
    with pytest.raises(P.ProtocolError) as info:
        P.validate_request(msg)
    assert info.value.code == code
    if isinstance(msg.get("id"), str) and len(msg["id"]) < 100:
        assert info.value.request_id == msg["id"], "errors must carry the request id when it is readable"


def test_encode_refuses_nan():
    with pytest.raises(ValueError):
        P.encode(P.result("r", "j", {"score": float("nan")}))


def test_replies_are_not_requests_and_back():
    with pytest.raises(P.ProtocolError):
        P.validate_request(P.pong("r", 0.0))
    with pytest.raises(P.ProtocolError):
        P.validate_reply(P.ping())
