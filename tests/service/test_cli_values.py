"""Issue 23: every command-line value is checked before work starts (no traceback, no model load)."""

from __future__ import annotations

import pytest

from lrs_focus import cli


class _NoModel:
    def __init__(self, *a, **k):
        raise AssertionError("the model was loaded before the value was refused")


@pytest.fixture
def no_model(monkeypatch):
    import lrs_focus.engine

    monkeypatch.setattr(lrs_focus.engine, "Engine", _NoModel)


@pytest.mark.parametrize("args, said", [
    (["--queue-size", "0"], "queue size"),
    (["--queue-size", "-3"], "queue size"),
    (["--stalled-peer-timeout", "1e300"], "stalled_peer_timeout_s"),
    (["--stalled-peer-timeout", "inf"], "stalled_peer_timeout_s"),
    (["--open-timeout", "nan"], "open_timeout_s"),
    (["--cache-mb", "nan"], "--cache-mb"),
    (["--workers", "100000"], "--workers"),
])
def test_serve_refuses_bad_values_before_loading_the_model(no_model, capsys, args, said):
    code = cli.main(["serve", "--model", "tiny", "--endpoint", "tcp://127.0.0.1:*", *args])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["health", "ask"])
@pytest.mark.parametrize("key", ["~" * 40, "#" * 40, "é" * 40, " " * 40])
def test_a_bad_40_character_server_key_is_a_clear_error(capsys, command, key):
    args = [command] + (["/a.tif", "q"] if command == "ask" else [])
    code = cli.main([*args, "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.5", "--server-key", key])
    err = capsys.readouterr().err
    assert code == 2 and "error [bad_key]" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0", "-1"])
def test_health_timeout_must_be_a_finite_positive_number(capsys, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["health", "--endpoint", "tcp://127.0.0.1:9", "--timeout", value])
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_client_refuses_a_non_finite_timeout_with_a_code():
    from lrs_focus.client import Client, ServiceError

    for bad in (float("nan"), float("inf"), 1e300, 0):
        with pytest.raises(ServiceError) as info:
            Client("tcp://127.0.0.1:9", timeout_s=bad)
        assert info.value.code == "bad_options"


def test_cli_reports_client_errors_with_their_code(capsys):
    """The shared client's errors are no LrsFocusError (it imports only protocol): the CLI still
    prints `error [code]` and exits 2."""
    assert cli.main(["health", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.3"]) == 2
    assert "error [timeout]" in capsys.readouterr().err
