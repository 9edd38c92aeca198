"""The plugin's ZeroMQ client (Qt-free) in the venv's Python against the real backend."""

from __future__ import annotations

import time

import pytest


def test_health_and_ask(plugin_import, backend, sentinel2_vrt):
    from lrs_focus_plugin.params import AskOptions, AskRequest
    from lrs_focus_plugin.remote import ask

    stages = []
    with plugin_import.Client(backend.endpoint) as client:
        health = client.health()
        assert health["model"] and health["protocol"] == 1
        result = ask(client, AskRequest(str(sentinel2_vrt), "Is there water?", AskOptions(mode="paper")),
                     on_progress=lambda stage, level, fraction, message: stages.append((stage, fraction)))
    assert result["job_id"] and isinstance(result["answer"], str)
    assert result["features"]["type"] == "FeatureCollection" and result["features"]["features"]
    props = result["features"]["features"][0]["properties"]
    assert {"level", "row", "col", "window", "score", "rank", "focus_rank", "kept", "encoded", "job_id"} <= set(props)
    assert "question" not in props and result["question"] == "Is there water?"  # once, in the document
    assert stages[0][0] == "queued" and len(stages) > 2


def test_backend_error_is_reported(plugin_import, backend, tmp_path):
    from lrs_focus_plugin.params import AskRequest
    from lrs_focus_plugin.remote import ask

    with plugin_import.Client(backend.endpoint) as client:
        with pytest.raises(plugin_import.BackendError) as err:
            ask(client, AskRequest(str(tmp_path / "missing.tif"), "anything?"))
    assert err.value.code == "raster_not_found"


def test_dead_endpoint_times_out_quickly(plugin_import, unused_endpoint):
    from lrs_focus_plugin.params import Timeouts

    started = time.monotonic()
    with plugin_import.Client(unused_endpoint, Timeouts(health=1.5)) as client:
        with pytest.raises(plugin_import.BackendError) as err:
            client.wait_healthy(1.5)
    assert err.value.code == "timeout"
    assert time.monotonic() - started < 3.0


def test_bad_endpoint(plugin_import):
    with pytest.raises(plugin_import.BackendError) as err:
        plugin_import.Client("not-an-endpoint")
    assert err.value.code == "bad_endpoint"


@pytest.mark.slow
def test_restarted_backend_forgets_job(plugin_import, backend_starter, sentinel2_vrt):
    """The backend is killed and a new one takes its endpoint mid-job: the client's status
    probe gets "unknown" and reports it instead of waiting forever."""
    from lrs_focus_plugin.params import AskRequest, Timeouts
    from lrs_focus_plugin.remote import ask

    first = backend_starter()

    def on_progress(stage, level, fraction, message):
        if stage == "queued":
            first.kill()
            backend_starter(first.endpoint)

    with plugin_import.Client(first.endpoint, Timeouts(silence=1.0, health=5.0)) as client:
        with pytest.raises(plugin_import.BackendError) as err:
            ask(client, AskRequest(str(sentinel2_vrt), "Is there water?"), on_progress=on_progress)
    assert err.value.code == "unknown_job" and "restarted" in str(err.value)


class _SlowToEncode(dict):
    """A result part whose JSON encoding takes `delay` seconds (json calls items() on dict subclasses)."""

    delay = 1.5

    def items(self):
        time.sleep(self.delay)
        return super().items()


class _BigResultEngine:
    """Answers at once; encoding its result outlasts the client's silence limit several times."""

    def describe(self):
        return {"model": "fake", "device": "cpu", "dtype": "float32", "random_weights": True}

    def ask(self, raster, question, options=None, progress=None, should_stop=None, job_id=""):
        return {"answer": "ok", "job_id": job_id, "trace": _SlowToEncode(levels=[]),
                "features": {"type": "FeatureCollection", "features": []}, "crs_wkt": ""}


def test_a_result_still_being_encoded_is_not_reported_lost(plugin_import):
    """Issue 22 item 7 against the real server and the plugin's client: encoding the result takes
    longer than the silence limit; the status probes meanwhile must not make the client give up."""
    from lrs_focus.service import Server
    from lrs_focus_plugin.params import AskRequest, Timeouts
    from lrs_focus_plugin.remote import ask

    server = Server(_BigResultEngine(), "tcp://127.0.0.1:*").start()
    try:
        with plugin_import.Client(server.endpoint, Timeouts(silence=0.3, health=3.0, poll=0.05)) as client:
            result = ask(client, AskRequest("/any.tif", "how many?"))
        assert result["answer"] == "ok" and result["job_id"]
    finally:
        server.stop()


def test_one_finished_status_before_the_result_is_not_a_lost_result(plugin_import):
    """The client waits for a second probe before it calls a result lost: a server that answers
    one probe with "finished" and then sends the result is served."""
    import threading

    import zmq

    from lrs_focus import protocol as P
    from lrs_focus_plugin.params import Timeouts

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve():
        job = "j1"
        for _ in range(3):
            if not router.poll(5000):
                return
            identity, frame = router.recv_multipart()
            msg = P.decode(frame)
            if msg["type"] == "ask":
                router.send_multipart([identity, P.encode(P.accepted(msg["id"], job, 0))])
            elif msg["type"] == "status":
                reply = P.status_reply(msg["id"], running=None, queued=[], queue_size=1, jobs_done=1,
                                       job={"job_id": job, "state": "finished"}, worker="")
                router.send_multipart([identity, P.encode(reply)])
                time.sleep(0.1)
                router.send_multipart([identity, P.encode(P.result(msg["id"], job, {"answer": "late"}))])
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with plugin_import.Client(f"tcp://127.0.0.1:{port}", Timeouts(silence=0.2, health=2.0, poll=0.05)) as c:
            accepted = c.submit("/any.tif", "q")
            assert c.wait(accepted)["answer"] == "late"
    finally:
        thread.join(5)
        router.close()
