"""argparse types shared by the commands: values are checked when the line is parsed, before any
work starts (a model load, a connection), and a bad one is a usage error, not a traceback."""

from __future__ import annotations

import argparse
import math

#: The longest wait a command accepts (the ZeroMQ client's own bound, client.MAX_TIMEOUT_S).
MAX_SECONDS = 1e6


def seconds(text: str) -> float:
    """A finite, positive number of seconds, at most MAX_SECONDS (no nan, inf or 1e300)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_SECONDS:g}], not {text!r}")
    return value


def finite(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value
