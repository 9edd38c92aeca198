"""Property-based fuzzing (Hypothesis) of every field of every request type against a running
server: in process with the fake engine and the real access policy (the bulk), then against
`lrs-focus serve --model tiny` as a process (see test_processes.py)."""

from __future__ import annotations

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrs_focus.access import AccessPolicy
from lrs_focus.service import ServiceLimits

from .conftest import small_geotiff
from .strategies import Conversation, requests

N_EXAMPLES = 2500


@pytest.mark.slow
def test_every_request_field_fuzzed_in_process(make_server, fake, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    raster = str(small_geotiff(root / "ok.tif"))
    engine = fake.FakeEngine(tokenizer=True)
    server = make_server(engine=engine, access=AccessPolicy(roots=(str(root),)), allow_shutdown=False,
                         limits=ServiceLimits(max_question_tokens=6))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    talk = Conversation(sock, timeout_s=10)

    rasters = st.one_of(st.just(raster), st.just(str(root / "missing.tif")), st.just("/etc/passwd"),
                        st.just("/vsistdin/"), st.just(str(root)))

    @settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests(rasters))
    def exchange(case):
        msg, frame = case
        talk.exchange(msg, frame)

    try:
        exchange()
    finally:
        sock.close()
    print(f"hypothesis in-process: {N_EXAMPLES} examples, {talk.frames} frames, {talk.replies} replies, "
          f"{talk.accepted} accepted asks ({engine.calls} reached the engine), errors by code {talk.codes}")
    assert not server.stopped
    assert talk.accepted > 50 and engine.calls > 20, "the strategies must also produce asks that run"
    assert {"bad_json", "bad_request", "raster_forbidden", "bad_options"} <= set(talk.codes), talk.codes
