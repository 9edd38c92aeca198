"""The plugin's ZeroMQ client (Qt-free) in the venv's Python against the real backend."""

from __future__ import annotations

import time

import pytest


def test_health_and_ask(plugin_import, backend, sentinel2_vrt):
    from lrs_focus_plugin.params import AskOptions, AskRequest

    stages = []
    with plugin_import.Client(backend.endpoint) as client:
        health = client.health()
        assert health["model"] and health["protocol"] == 1
        result = client.ask(AskRequest(str(sentinel2_vrt), "Is there water?", AskOptions(mode="paper")),
                            on_progress=lambda stage, level, fraction, message: stages.append((stage, fraction)))
    assert result["job_id"] and isinstance(result["answer"], str)
    assert result["features"]["type"] == "FeatureCollection" and result["features"]["features"]
    props = result["features"]["features"][0]["properties"]
    assert {"level", "row", "col", "window", "score", "rank", "focus_rank", "kept", "encoded", "job_id"} <= set(props)
    assert "question" not in props and result["question"] == "Is there water?"  # once, in the document
    assert stages[0][0] == "queued" and len(stages) > 2


def test_backend_error_is_reported(plugin_import, backend, tmp_path):
    from lrs_focus_plugin.params import AskRequest

    with plugin_import.Client(backend.endpoint) as client:
        with pytest.raises(plugin_import.BackendError) as err:
            client.ask(AskRequest(str(tmp_path / "missing.tif"), "anything?"))
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

    first = backend_starter()

    def on_progress(stage, level, fraction, message):
        if stage == "queued":
            first.kill()
            backend_starter(first.endpoint)

    with plugin_import.Client(first.endpoint, Timeouts(silence=1.0, health=5.0)) as client:
        with pytest.raises(plugin_import.BackendError) as err:
            client.ask(AskRequest(str(sentinel2_vrt), "Is there water?"), on_progress=on_progress)
    assert err.value.code == "unknown_job" and "restarted" in str(err.value)
