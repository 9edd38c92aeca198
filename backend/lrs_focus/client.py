"""ZeroMQ client of the lrs-focus service: one file for the CLI and the QGIS plugin.

Standard library + pyzmq only, and one import of its own package, `from . import protocol`: the
plugin ships this file as `lrs_focus_plugin/client.py` (qgis_plugin/client.py is a symlink to
it, the zip holds a copy, a contract test checks both), beside its copy of protocol.py. No Qt,
no QGIS, no torch, no GDAL. Use one Client per thread (zmq sockets are not thread-safe).

A DEALER socket (not REQ) lets one request stream `progress` messages before its result and never
locks up when the server dies; LINGER=0 means closing never blocks. Every wait is bounded:

- a request's reply within `Timeouts.health` seconds, else `ServiceTimeout` (code `timeout`);
- during a job, any reply proves the server lives; after `Timeouts.silence` seconds without one
  the client sends `status {job_id}`: no answer within `Timeouts.health` -> `timeout`; the job
  `unknown` -> `unknown_job` (the server restarted); the job `finished` twice in a row while its
  result never came -> `result_lost` (the server queues a result before it shows the job as
  finished, and replies keep their order on a connection, so this only happens when the result
  was dropped, e.g. the client stopped reading; the second probe is a margin, not a race);
- after a cancel, the terminal message within `Timeouts.cancel` seconds, else `Cancelled` anyway.

The CLI passes one `timeout_s` for all of these; the plugin passes its settings' `Timeouts`.
"""

from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import zmq
import zmq.auth

from . import protocol

#: progress(stage, level, fraction, message) or, for callbacks that take it, also overall= (0..1 or None)
ProgressFn = Callable[..., None]
CancelFn = Callable[[], bool]
#: The longest wait a client accepts: a larger one is a typo, and poll() cannot take it in ms.
MAX_TIMEOUT_S = 1e6
RESULT_LOST = "result_lost"
BAD_KEY = "bad_key"
BAD_ENDPOINT = "bad_endpoint"
_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class ServiceError(Exception):
    """An `error` reply from the server, or a client-side failure; `code` is the protocol's."""

    code = "service_error"

    def __init__(self, code: str, message: str, reply: Optional[dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.reply = reply


BackendError = ServiceError  # the plugin's name for it


class ServiceTimeout(ServiceError):
    def __init__(self, message: str):
        super().__init__(protocol.TIMEOUT, message)


class Cancelled(ServiceError):
    def __init__(self, message: str = "cancelled", reply: Optional[dict[str, Any]] = None):
        super().__init__(protocol.CANCELLED, message, reply)


def check_seconds(value: Any, what: str = "timeout") -> float:
    """A finite, positive number of seconds up to MAX_TIMEOUT_S; ServiceError(bad_options) otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise ServiceError("bad_options", f"{what} must be a finite number of seconds in (0, {MAX_TIMEOUT_S:g}], "
                                          f"not {value!r}")
    return seconds


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait (the plugin's settings use the same names)."""

    health: float = 5.0  # one request's reply, and the answer to a status probe
    start: float = 120.0  # health of a backend the plugin has just started (it loads a model)
    silence: float = 5.0  # no message during a job this long: send a status probe
    cancel: float = 5.0  # after a cancel, the job's terminal message
    poll: float = 0.2  # how often cancel flags are looked at

    @classmethod
    def uniform(cls, seconds: float) -> "Timeouts":
        s = check_seconds(seconds)
        return cls(health=s, start=s, silence=s, cancel=s, poll=min(0.05, s))


def _z85_key(key: Union[str, bytes, os.PathLike]) -> bytes:
    """A CURVE public key: 40 z85 characters, or a key file made by zmq.auth.create_certificates."""
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    if isinstance(text, str) and len(text) == 40 and not os.path.exists(text):
        if not set(text) <= _Z85:
            raise ServiceError(BAD_KEY, "a CURVE public key is 40 z85 characters or a key file; this is neither")
        return text.encode("ascii")
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(key))
    except (OSError, ValueError, TypeError) as exc:
        raise ServiceError(BAD_KEY, f"cannot read the CURVE public key {os.fspath(key)!r}: {exc}") from None
    return public


def _client_keypair(key_file: str) -> tuple[bytes, bytes]:
    """A client certificate with its secret (`NAME.key_secret` from `lrs-focus keys`)."""
    try:
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError, TypeError) as exc:
        raise ServiceError(BAD_KEY, f"cannot read the CURVE client key {key_file!r}: {exc}") from None
    if not secret:
        raise ServiceError(BAD_KEY, f"{key_file} holds no secret key: give the client its NAME.key_secret file")
    return public, secret


class Client:
    """One DEALER socket. `timeouts` (Timeouts or any object with its fields), or `timeout_s` for all."""

    def __init__(self, endpoint: str, timeouts: Any = None, *, timeout_s: Optional[float] = None,
                 server_public_key=None, client_key_file: Optional[str] = None,
                 context: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeouts = Timeouts.uniform(timeout_s) if timeout_s is not None else (timeouts or Timeouts())
        for name in ("health", "silence", "cancel", "poll"):
            check_seconds(getattr(self.timeouts, name), f"the {name} timeout")
        self.timeout_s = float(self.timeouts.health)
        self.malformed = 0  # replies skipped because they were not protocol messages
        keys = None
        if server_public_key is not None:
            if client_key_file:  # a server with an allow-list of client keys
                public, secret = _client_keypair(client_key_file)
            else:  # a loopback server without an allow-list: an ephemeral key pair will do
                public, secret = zmq.curve_keypair()
            keys = (_z85_key(server_public_key), public, secret)
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.maxmsgsize = protocol.MAX_REPLY_BYTES  # a larger frame drops the connection unread
        try:
            if keys is not None:
                try:
                    self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = keys
                except zmq.ZMQError as exc:
                    raise ServiceError(BAD_KEY, f"not a usable CURVE key ({exc.strerror})") from None
            try:
                self._sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise ServiceError(BAD_ENDPOINT, f"cannot use endpoint {endpoint!r}: {exc}") from None
        except BaseException:
            self._sock.close(0)
            raise
        # Job messages that arrived while waiting for something else (e.g. a queued job's
        # `cancelled` during the cancel request); wait() reads them first.
        self._pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=10000)

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------
    def _silent_text(self, seconds: float) -> str:
        bad = f" (it sent {self.malformed} malformed replies)" if self.malformed else ""
        return (f"No answer from the backend at {self.endpoint} within {seconds:g} s{bad}. Start it with "
                f"`lrs-focus serve --endpoint {self.endpoint}` (the plugin can start it: set a start command "
                "in its settings).")

    def send(self, message: dict[str, Any]) -> str:
        """Sends one request; returns its id. A send that cannot leave within `health` s times out."""
        payload = protocol.encode(message)
        wait = self.timeouts.health
        if not self._sock.poll(max(1, int(wait * 1000)), zmq.POLLOUT):
            raise ServiceTimeout(self._silent_text(wait))
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            raise ServiceTimeout(self._silent_text(wait)) from None
        return message["id"]

    def receive(self, timeout: float) -> Optional[dict[str, Any]]:
        """The next well-formed reply, or None after `timeout` seconds (malformed replies are
        skipped and counted in `malformed`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return None
            frames = self._sock.recv_multipart()
            try:
                return protocol.validate_reply(protocol.decode(frames[-1], protocol.MAX_REPLY_BYTES))
            except protocol.ProtocolError:
                self.malformed += 1

    def request(self, message: dict[str, Any], timeout: Optional[float] = None,
                is_canceled: Optional[CancelFn] = None) -> dict[str, Any]:
        """Sends one request and returns its reply; `error` replies raise ServiceError."""
        timeout = self.timeouts.health if timeout is None else timeout
        rid = self.send(message)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceTimeout(self._silent_text(timeout))
            if is_canceled is not None and is_canceled():
                raise Cancelled()
            reply = self.receive(min(left, self.timeouts.poll) if is_canceled is not None else left)
            if reply is None:
                continue
            if reply.get("id") != rid:
                if reply.get("job_id"):
                    self._pending.append(reply)  # a job's message: its wait() will want it
                continue
            if reply["type"] == "error":
                raise ServiceError(reply["code"], reply["message"], reply)
            return reply

    # -- requests ---------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.request(protocol.ping())

    def health(self, timeout: Optional[float] = None) -> dict[str, Any]:
        return self.request(protocol.health(), timeout)

    def status(self, job_id: Optional[str] = None) -> dict[str, Any]:
        return self.request(protocol.status(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request(protocol.cancel(job_id))

    def shutdown(self) -> dict[str, Any]:
        return self.request(protocol.shutdown())

    def wait_healthy(self, budget: float, is_canceled: Optional[CancelFn] = None,
                     gave_up: Callable[[], Optional[str]] = lambda: None) -> dict[str, Any]:
        """Asks for `health` once a second until it answers or `budget` seconds pass.

        `gave_up()` may return a reason to stop early (e.g. the backend we started exited).
        """
        deadline = time.monotonic() + budget
        while True:
            left = deadline - time.monotonic()
            try:
                return self.health(min(1.0, max(left, 0.05)))
            except ServiceTimeout:
                pass
            reason = gave_up()
            if reason:
                raise ServiceError("backend_exited", reason)
            if time.monotonic() >= deadline:
                raise ServiceTimeout(self._silent_text(budget))
            if is_canceled is not None and is_canceled():
                raise Cancelled()

    def submit(self, raster: str, question: str, options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Queues an ask; returns the `accepted` reply (job_id, position). `busy` raises ServiceError.
        Not cancellable: once sent, the job is the server's, and only `wait` can cancel it."""
        options = {k: v for k, v in (options or {}).items() if not (k == "extra" and not v)}  # AskOptions.to_dict()
        return self.request(protocol.ask(str(raster), question, options))

    def wait(self, accepted: dict[str, Any], progress: Optional[ProgressFn] = None,
             should_cancel: Optional[CancelFn] = None) -> dict[str, Any]:
        """Streams the job's progress to `progress` until its terminal message; returns the
        result document (with `job_id`). Raises Cancelled, ServiceError or ServiceTimeout."""
        t = self.timeouts
        job_id, request_id = accepted["job_id"], accepted["id"]
        early = [m for m in self._pending if m.get("job_id") == job_id]
        for m in early:
            self._pending.remove(m)
        last_heard = time.monotonic()
        probe_id: Optional[str] = None
        probe_sent = cancel_sent = 0.0
        finished_probes = 0
        while True:
            now = time.monotonic()
            if not cancel_sent and should_cancel is not None and should_cancel():
                self.send(protocol.cancel(job_id))
                cancel_sent = now
            if cancel_sent and now - cancel_sent > t.cancel:
                raise Cancelled(f"cancel sent; the backend did not confirm within {t.cancel:g} s")
            if probe_id is not None and now - probe_sent > t.health:
                raise ServiceTimeout(f"the backend at {self.endpoint} stopped answering during job {job_id} "
                                     f"(silent for {now - last_heard:.0f} s); it may have crashed")
            if probe_id is None and now - last_heard > t.silence:
                probe_id, probe_sent = self.send(protocol.status(job_id)), now
            reply = early.pop(0) if early else self.receive(t.poll)
            if reply is None:
                continue
            last_heard = time.monotonic()  # any reply proves the server lives
            if reply.get("id") == probe_id:
                probe_id = None
                state = (reply.get("job") or {}).get("state") if reply["type"] == "status" else None
                if state == "unknown":
                    raise ServiceError(protocol.UNKNOWN_JOB, f"the backend at {self.endpoint} no longer knows job "
                                       f"{job_id} (was it restarted?); ask again")
                finished_probes = finished_probes + 1 if state == "finished" else 0
                if finished_probes >= 2:
                    raise ServiceError(RESULT_LOST, f"job {job_id} finished but its result never arrived; ask again")
                continue
            if reply.get("job_id") != job_id and reply.get("id") != request_id:
                continue  # cancel acks, messages of earlier jobs
            kind = reply["type"]
            if kind == "progress":
                if progress is not None:
                    _report(progress, reply)
            elif kind == "result":
                document = dict(reply["result"])
                document.setdefault("job_id", job_id)
                return document
            elif kind == "error":
                if reply["code"] == protocol.CANCELLED:
                    raise Cancelled(reply["message"], reply)
                raise ServiceError(reply["code"], reply["message"], reply)

    def ask(self, raster: str, question: str, options: Optional[dict[str, Any]] = None,
            progress: Optional[ProgressFn] = None, should_cancel: Optional[CancelFn] = None) -> dict[str, Any]:
        """Submit and wait: the engine's result document, or ServiceError (Cancelled, ...)."""
        return self.wait(self.submit(raster, question, options), progress, should_cancel)


def ask_remote(endpoint: str, raster: str, question: str, options: Optional[dict[str, Any]] = None,
               progress: Optional[ProgressFn] = None, timeout_s: float = 30.0, server_public_key=None,
               should_cancel: Optional[CancelFn] = None,
               client_key_file: Optional[str] = None) -> dict[str, Any]:
    """What `lrs-focus ask --endpoint` calls: one ask through a running server."""
    with Client(endpoint, timeout_s=timeout_s, server_public_key=server_public_key,
                client_key_file=client_key_file) as client:
        return client.ask(raster, question, options, progress=progress, should_cancel=should_cancel)


def _report(progress: ProgressFn, reply: dict[str, Any]) -> None:
    """(stage, level, fraction, message) to any callback; `overall=` (the job's share done, None from a
    server that does not send it) to callbacks that take it."""
    import inspect

    args = (reply["stage"], reply.get("level"), float(reply["fraction"]), reply.get("message", ""))
    overall = reply.get("overall")
    try:
        params = inspect.signature(progress).parameters.values()
        takes = any(p.name == "overall" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        takes = False
    if takes:
        progress(*args, overall=None if overall is None else float(overall))
    else:
        progress(*args)
