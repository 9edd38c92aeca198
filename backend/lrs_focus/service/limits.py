"""Policy and limits: what one request, one peer and one server may cost.

Owns the configuration errors (`ServiceConfigError`, code `service_config`), `ServiceLimits` (the
`serve` options of the same names) and the socket constants every room shares. Imports nothing of
the service: every other room may import it. Every bound is checked when the object is made, so
`serve` refuses a bad value before it loads a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LrsFocusError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# file names of the zmq.auth layout, not secrets:
SERVER_SECRET_FILE = "server.key_secret"  # nosec B105
CLIENTS_DIR = "clients"

POLL_MS = 100
PROGRESS_MIN_INTERVAL_S = 0.05
ROUTER_LINGER_MS = 500  # bounded: time for the last `shutting_down` replies to leave at close
RCVHWM = 64  # requests queued per peer: at most 64 x MAX_MESSAGE_BYTES = 64 MiB; then TCP pushes back
BURST = 256  # requests handled per poll, at most one send_hwm's worth of replies
FINISHED_KEPT = 4096  # finished job ids remembered (for `status`), oldest forgotten first

#: ZMQ_TCP_MAXRT is an int of milliseconds: the largest stalled-peer timeout it can carry.
MAX_STALLED_PEER_TIMEOUT_S = (2**31 - 1) // 1000
#: open and shutdown timeouts: finite, and at most a day (a bigger one is a typo, not a policy).
MAX_TIMEOUT_S = 86400.0
MAX_QUEUE_SIZE = 1 << 20


class ServiceConfigError(LrsFocusError):
    """An unsafe or impossible server configuration (e.g. a public bind without CURVE keys)."""

    code = "service_config"


def check_queue_size(queue_size: object) -> int:
    """Jobs waiting per worker before `busy`: an int in 1..MAX_QUEUE_SIZE."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or not 1 <= queue_size <= MAX_QUEUE_SIZE:
        raise ServiceConfigError(f"queue size must be an integer in 1..{MAX_QUEUE_SIZE}, not {queue_size!r}")
    return queue_size


def _seconds(name: str, value: object, limit: float) -> None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ServiceConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if not (math.isfinite(number) and 0 < number <= limit):
        raise ServiceConfigError(f"{name} must be a finite number of seconds in (0, {limit:g}], not {value!r}")


@dataclass(frozen=True)
class ServiceLimits:
    """Server-side bounds on what one request may cost (the `serve` options of the same names)."""

    max_new_tokens: int = 512  # an ask asking for more gets bad_options
    max_question_tokens: int = 512  # counted with the engine's tokenizer when it has one
    open_timeout_s: float = 30.0  # access check + first GDAL open of the raster
    shutdown_timeout_s: float = 10.0  # how long shutdown waits for the running job
    send_hwm: int = 256  # replies queued per peer before it counts as not reading (>= one read burst)
    stalled_peer_timeout_s: float = 20.0  # a peer that acknowledges nothing this long is disconnected
    max_stuck_opens: int = 4  # abandoned (timed-out) opens still running before asks are refused
    job_timeout_s: float = 600.0  # a running job past this ends with job_timeout (its reader killed)
    max_source_megapixels: float = 4096.0  # source pixels one question may decode (readers' budget)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_question_tokens", "send_hwm", "max_stuck_opens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30:
                raise ServiceConfigError(f"{name} must be an integer in 1..{1 << 30}, not {value!r}")
        _seconds("open_timeout_s", self.open_timeout_s, MAX_TIMEOUT_S)
        _seconds("shutdown_timeout_s", self.shutdown_timeout_s, MAX_TIMEOUT_S)
        _seconds("job_timeout_s", self.job_timeout_s, MAX_TIMEOUT_S)
        mpx = self.max_source_megapixels
        if isinstance(mpx, bool) or not isinstance(mpx, (int, float)) or not (math.isfinite(mpx) and 0 < mpx <= 1e9):
            raise ServiceConfigError(f"max_source_megapixels must be a finite number in (0, 1e9], not {mpx!r}")
        _seconds("stalled_peer_timeout_s", self.stalled_peer_timeout_s, MAX_STALLED_PEER_TIMEOUT_S)
