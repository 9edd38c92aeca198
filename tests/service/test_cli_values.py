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
