"""The service around the real `Engine("tiny")` on the real Sentinel-2 sample, in process and via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError, ask_remote

QUESTION = "How many ships are docked at the northern pier?"


@pytest.fixture(scope="module")
def tiny_engine():
    from lrs_focus.engine import Engine

    return Engine("tiny")


@pytest.mark.slow
def test_ask_over_zeromq_equals_in_process_ask(tiny_engine, sentinel2_vrt, make_server):
    from lrs_focus.engine import AskOptions

    server = make_server(engine=tiny_engine)
    stages = []
    remote = ask_remote(server.endpoint, str(sentinel2_vrt), QUESTION, {"mode": "paper", "alpha": 0.25},
                        progress=lambda *a: stages.append(a), timeout_s=60)
    local = tiny_engine.ask(str(sentinel2_vrt), QUESTION, AskOptions(mode="paper", alpha=0.25))
    assert remote["answer"] == local["answer"]
    assert remote["trace"] == json.loads(json.dumps(local["trace"]))
    assert remote["features"]["type"] == "FeatureCollection" and remote["features"]["features"]
    assert "UTM" in remote["crs_wkt"] or "32618" in remote["crs_wkt"]
    assert remote["model"]["random_weights"] is True and remote["timings"]["total"] > 0
    assert remote["counts"]["llm_vision_tokens"] > 0
    names = [s[0] for s in stages]
    assert names[0] == "open" and names[-1] == "done" and "generate" in names and "focus" in names
    with Client(server.endpoint, timeout_s=60) as c:
        h = c.health()
        assert (h["model"], h["random_weights"]) == ("tiny", True)
        # a real job cancelled at its first stage boundary, then a failing raster: server keeps serving
        with pytest.raises(ServiceError) as info:
            c.ask(str(sentinel2_vrt), QUESTION, progress=lambda *a: None, should_cancel=lambda: True)
        assert info.value.code == P.CANCELLED
        with pytest.raises(ServiceError) as info:
            c.ask(str(sentinel2_vrt) + ".missing.tif", QUESTION)
        assert info.value.code == "raster_not_found"
        assert c.ping()["type"] == "pong"


CLI = [sys.executable, "-m", "lrs_focus.cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="2")


def _start_serve(model: str, *extra: str):
    """`lrs-focus serve --model MODEL` on a free loopback port, once `health` answers: (process, endpoint, health)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    from .conftest import unconfined_if_needed

    serve = subprocess.Popen([*CLI, "serve", "--model", model, "--endpoint", endpoint, *unconfined_if_needed(), *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 180
    while True:
        health = subprocess.run([*CLI, "health", "--endpoint", endpoint, "--json", "--timeout", "1"],
                                capture_output=True, text=True, env=ENV)
        if health.returncode == 0 or time.monotonic() > deadline or serve.poll() is not None:
            break
    if health.returncode != 0:
        serve.kill()
        raise AssertionError(health.stderr + (serve.stderr.read() if serve.wait(10) is not None else ""))
    return serve, endpoint, health


@pytest.mark.slow
def test_cli_serve_health_ask_shutdown(sentinel2_vrt, tmp_path):
    serve, endpoint, health = _start_serve("tiny", "--queue-size", "2")
    try:
        doc = json.loads(health.stdout)
        assert doc["model"] == "tiny" and doc["random_weights"] is True and doc["queue_size"] == 2
        out = tmp_path / "focus.geojson"
        ask = subprocess.run([*CLI, "ask", str(sentinel2_vrt), QUESTION, "--endpoint", endpoint, "--model", "tiny",
                              "--json", "--out", str(out), "--timeout", "60"],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert ask.returncode == 0, ask.stderr
        answer = json.loads(ask.stdout)
        assert isinstance(answer["answer"], str) and answer["features"]["features"]
        written = json.loads(out.read_text())
        assert written["type"] == "FeatureCollection" and len(written["features"]) == len(answer["features"]["features"])
        assert "[generate" in ask.stderr or "generate" in ask.stderr, "progress must stream to stderr"
        with Client(endpoint, timeout_s=10) as c:
            assert c.shutdown()["type"] == "bye"
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


@pytest.mark.slow
def test_bench_service_document(sentinel2_vrt):
    import argparse

    from lrs_focus.bench import service as bench

    args = argparse.Namespace(pings=200, asks=1, model="tiny", device=None, raster=str(sentinel2_vrt), mode="paper")
    doc = bench.run(args)
    ping, asks = doc["cases"]
    assert 0 < ping["ours"]["p50_ms"] <= ping["ours"]["p99_ms"] and ping["ours"]["n"] == 200
    assert 0 < ping["baseline"]["p50_ms"] and ping["ratio"] > 0
    assert "1933x1947" in asks["name"]  # the raster size, WIDTHxHEIGHT
    assert asks["ours"]["asks_per_s"] > 0 and asks["baseline"]["asks_per_s"] > 0 and asks["ratio"] > 0
    assert asks["ours"]["result_bytes"] > 1000
    assert "RANDOM" in bench.format_table(doc)


@pytest.mark.slow
def test_the_question_travels_once_per_result(tiny_engine, sentinel2_vrt, make_server):
    """A long question is in the result document once, not in every GeoJSON feature."""
    import zmq

    from lrs_focus.service import ServiceLimits

    server = make_server(engine=tiny_engine, limits=ServiceLimits(max_question_tokens=10_000, max_new_tokens=4))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)

    def raw_result(question: str) -> bytes:
        sock.send(P.encode(P.ask(str(sentinel2_vrt), question, {"max_new_tokens": 4})))
        while sock.poll(300_000):
            frame = sock.recv()
            if P.is_terminal(P.decode(frame, P.MAX_REPLY_BYTES)):
                return frame
        raise AssertionError("no result")

    try:
        short = raw_result("Ships?")
        marker = "Q" + "".join(f"{i:05d}" for i in range(1200))  # 6 kB, unique
        long = raw_result(marker)
    finally:
        sock.close()
    doc = json.loads(long)["result"]
    assert doc["question"] == marker and len(doc["features"]["features"]) > 10
    assert long.count(marker.encode()) == 1, "the question must be stored once per result"
    grown = len(long) - len(short)
    print(f"result frame: {len(short)} B with a 6-char question, {len(long)} B with a {len(marker)}-char one")
    assert grown < len(marker) + 2_000, f"the reply grew by {grown} B for a {len(marker)}-char question"


@pytest.mark.slow
def test_cancel_during_generation_ends_within_a_few_tokens(tiny_engine, make_server, tmp_path):
    """512 new tokens take tens of seconds with the tiny model on a busy CPU; a cancel sent once
    generation starts must end the job quickly (the engine checks between generated tokens)."""
    from .conftest import small_geotiff

    raster = small_geotiff(tmp_path / "small.tif")
    server = make_server(engine=tiny_engine)
    stages = []
    with Client(server.endpoint, timeout_s=60) as c:
        acc = c.submit(str(raster), QUESTION, {"max_new_tokens": 512})
        cancel_at = []

        def should_cancel() -> bool:
            if stages and stages[-1] == "generate" and not cancel_at:
                cancel_at.append(time.monotonic())
            return bool(cancel_at)

        with pytest.raises(ServiceError) as info:
            c.wait(acc, progress=lambda stage, *a: stages.append(stage), should_cancel=should_cancel)
        took = time.monotonic() - cancel_at[0]
    assert info.value.code == P.CANCELLED
    print(f"cancel during generation answered in {took:.2f} s")
    assert took < 5, f"cancel during generation took {took:.1f} s"


@pytest.mark.slow
def test_cli_serve_a_qwen_vl_preset(sentinel2_vrt, tmp_path):
    """`serve --model tiny-qwen2.5-vl` as a user runs it; the Qwen-VL options travel over ZeroMQ and the
    follow-up question about the same raster reuses the cached prefix."""
    import signal

    serve, endpoint, health = _start_serve("tiny-qwen2.5-vl")
    cli, env = CLI, ENV
    try:
        assert json.loads(health.stdout)["model"] == "tiny-qwen2.5-vl"
        docs = []
        for question in (QUESTION, "Is there a river?"):
            ask = subprocess.run([*cli, "ask", str(sentinel2_vrt), question, "--endpoint", endpoint, "--json",
                                  "--focus", "relative", "--focus-heads", "0,2", "--answer-input", "tokens",
                                  "--max-new-tokens", "3", "--timeout", "120"],
                                 capture_output=True, text=True, env=env, timeout=300)
            assert ask.returncode == 0, ask.stderr
            docs.append(json.loads(ask.stdout))
        first, second = docs
        assert first["trace"]["focus"]["signal"] == "relative" and first["trace"]["focus"]["heads"] == [0, 2]
        assert first["options"]["answer_input"] == "tokens"
        assert sum(lv["reached"] for lv in first["trace"]["levels"]) >= 2
        assert second["trace"]["focus"]["prefix_reused"] >= 1
        bad = subprocess.run([*cli, "ask", str(sentinel2_vrt), QUESTION, "--endpoint", endpoint, "--mode", "released",
                              "--timeout", "60"], capture_output=True, text=True, env=env, timeout=120)
        assert bad.returncode == 2 and "bad_options" in bad.stderr and "released" in bad.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)


def test_cancel_during_a_long_prefill_is_answered_within_two_seconds(tiny_engine, make_server, tmp_path):
    """A slow card emulated: every LLM block takes 1 s, so the prefill alone takes 4 s. A cancel sent
    through the service half a second into the prefill is answered within 2 s: the engine polls it
    before every block, not only between generated tokens or stages."""
    from .conftest import small_geotiff

    raster = small_geotiff(tmp_path / "small.tif")
    server = make_server(engine=tiny_engine)
    slow = [layer.register_forward_pre_hook(lambda m, a: time.sleep(1.0)) for layer in tiny_engine.model.llm.model.layers]
    try:
        with Client(server.endpoint, timeout_s=60) as c:
            acc = c.submit(str(raster), QUESTION, {"max_new_tokens": 8})
            generating, cancel_at = [], []

            def progress(stage, *a):
                if stage == "generate" and not generating:
                    generating.append(time.monotonic())

            def should_cancel() -> bool:
                if generating and not cancel_at and time.monotonic() - generating[0] > 0.5:
                    cancel_at.append(time.monotonic())
                return bool(cancel_at)

            with pytest.raises(ServiceError) as info:
                c.wait(acc, progress=progress, should_cancel=should_cancel)
            took = time.monotonic() - cancel_at[0]
    finally:
        for h in slow:
            h.remove()
    assert info.value.code == P.CANCELLED
    print(f"cancel during the prefill answered in {took:.2f} s")
    assert took < 2.0, f"cancel during the prefill took {took:.1f} s"


def test_progress_over_zeromq_carries_a_monotone_overall(tiny_engine, make_server, tmp_path):
    """`overall` travels server -> protocol -> client to callbacks that take it; four-argument callbacks
    keep working (the client passes it only by keyword to those that name it)."""
    from .conftest import small_geotiff

    sentinel2_vrt = small_geotiff(tmp_path / "small.tif", size=400)
    server = make_server(engine=tiny_engine)
    seen, four = [], []
    with Client(server.endpoint, timeout_s=60) as c:
        c.ask(str(sentinel2_vrt), QUESTION, {"max_new_tokens": 2},
              progress=lambda stage, level, fraction, message, overall=None: seen.append((stage, overall)))
        c.ask(str(sentinel2_vrt), QUESTION, {"max_new_tokens": 2},
              progress=lambda stage, level, fraction, message: four.append(stage))
    shares = [o for _, o in seen if o is not None]
    assert seen[-1] == ("done", 1.0) and shares == sorted(shares) and len(shares) >= 4
    assert all(o is None for s, o in seen if s in ("open", "pyramid"))
    assert four[-1] == "done"
