"""Hypothesis strategies for protocol requests: every field of every request type is drawn either
from its valid values or from any JSON value (lone surrogates, huge integers, nesting, wrong
types), plus missing fields and unknown keys. `Conversation` sends one and checks the replies."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from lrs_focus import protocol as P

_CHARS = st.characters(codec=None, exclude_categories=())
_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
#: text that often holds a lone surrogate (the plain text strategy almost never does)
def mostly(valid, other, one_in: int = 5):
    """`valid`, except one draw in `one_in` from `other` (hypothesis has no weights)."""
    return st.sampled_from([False] * (one_in - 1) + [True]).flatmap(lambda junk: other if junk else valid)


TEXT = mostly(st.text(_CHARS, max_size=12),
              st.builds(lambda a, s, b: a + s + b, st.text(_CHARS, max_size=4), _SURROGATE, st.text(_CHARS, max_size=4)),
              one_in=4)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    TEXT)
ANY_JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
                        max_leaves=8)


def field(valid):
    return mostly(valid, ANY_JSON, one_in=6)


NUM = st.floats(-10, 5000, allow_nan=False) | st.integers(-10, 5000)
OPTION_VALUES = {
    "mode": st.sampled_from(["paper", "released", "thumbnail", "all-tiles", "sideways"]),
    "alpha": st.floats(-0.5, 1.5, allow_nan=False),
    "n_max": st.none() | st.integers(-2, 200),
    "bands": st.none() | st.lists(st.integers(-1, 5), max_size=4),
    "max_levels": st.none() | st.integers(-1, 6),
    "max_new_tokens": st.integers(-5, 2000),
    "score_reduce": st.sampled_from(["sum", "max", "mean"]),
    "window": st.none() | st.lists(NUM, max_size=5),
    "stretch": st.none() | st.lists(st.lists(NUM, max_size=3), max_size=4),
    "max_length": st.none() | st.integers(-5, 5000),
}
OPTIONS = mostly(st.fixed_dictionaries({}, optional={k: mostly(v, ANY_JSON, 10) for k, v in OPTION_VALUES.items()}),
                 ANY_JSON, one_in=8)
JOB_ID = st.one_of(st.text("0123456789abcdef", min_size=32, max_size=32), TEXT)


def request_fields(raster):
    question = st.one_of(st.text(_CHARS, min_size=1, max_size=40), st.just("how many ships?"), st.just("   "))
    return {
        "ping": {}, "health": {}, "shutdown": {},
        "status": {"job_id": field(JOB_ID)},
        "cancel": {"job_id": field(JOB_ID)},
        "ask": {"raster": field(raster), "question": field(question), "options": OPTIONS},
    }


@st.composite
def requests(draw, raster, kinds=P.REQUEST_TYPES):
    """(message dict, frame bytes): the frame is ASCII JSON, so surrogates travel as \\udXXX escapes."""
    kind = draw(st.sampled_from([*kinds, "bogus"]))
    fields = request_fields(raster).get(kind, {})
    envelope = {"v": field(st.just(1)), "type": field(st.just(kind)),
                "id": field(st.text("abcdefghij0123456789-", min_size=1, max_size=40))}
    msg = draw(st.fixed_dictionaries({}, optional={**envelope, **fields}))
    if draw(mostly(st.just(True), st.just(False), one_in=3)):  # usually complete: every field present
        msg = {**draw(st.fixed_dictionaries(envelope)), **draw(st.fixed_dictionaries(fields)), **msg}
    msg.update(draw(mostly(st.just({}), st.dictionaries(TEXT, ANY_JSON, max_size=2), one_in=6)))  # unknown keys
    return msg, json.dumps(msg, ensure_ascii=True).encode("ascii")


class Conversation:
    """Sends one frame on a raw DEALER and checks the reply rules of docs/protocol.md:
    one reply per request, or accepted + progress* + exactly one terminal for an accepted ask;
    every reply strict UTF-8 JSON that validates; nothing after the terminal (a ping sentinel)."""

    def __init__(self, sock, timeout_s: float = 30.0):
        self.sock, self.timeout_ms = sock, int(timeout_s * 1000)
        self.frames = self.replies = self.accepted = 0
        self.codes: dict[str, int] = {}
        self.sentinels = 0

    def _recv(self) -> dict:
        assert self.sock.poll(self.timeout_ms), "no reply: the server stopped answering"
        self.replies += 1
        return P.validate_reply(P.decode(self.sock.recv(), P.MAX_REPLY_BYTES))

    def exchange(self, msg: dict, frame: bytes) -> list[dict]:
        self.sock.send(frame)
        self.frames += 1
        first = self._recv()
        rid = msg.get("id")
        assert first["id"] in (rid, None), (first, msg)
        got = [first]
        if first["type"] == "accepted":
            self.accepted += 1
            while not P.is_terminal(got[-1]):
                got.append(self._recv())
                assert got[-1].get("job_id") == first["job_id"], got[-1]
                assert got[-1]["type"] in ("progress", "result", "error"), got[-1]
        else:
            assert P.is_terminal(first) or first["type"] in ("pong", "health", "status", "cancelling", "bye"), first
        if got[-1]["type"] == "error":
            self.codes[got[-1]["code"]] = self.codes.get(got[-1]["code"], 0) + 1
        self.sentinels += 1
        sentinel = P.ping(f"sentinel-{self.sentinels}")
        self.sock.send(P.encode(sentinel))
        after = self._recv()
        assert after["type"] == "pong" and after["id"] == sentinel["id"], f"an extra reply after {got[-1]}: {after}"
        return got
