"""ZeroMQ client of the backend, for one thread: every call is bounded by a timeout.

Plain Python + pyzmq, no Qt and no QGIS, so the QgsTask, the Processing algorithm and the
tests share it. A DEALER socket (not REQ) lets one request stream `progress` messages before
its result and never locks up when the server dies; LINGER=0 means closing never blocks.
Sockets are not thread-safe: create the Client in the thread that uses it (the task's run()).

A dead backend is noticed in two ways: nothing answers the first `health` within
`Timeouts.health` seconds, or, during a job, the backend stays silent for `Timeouts.silence`
seconds and then leaves a `status` probe unanswered for `Timeouts.health` seconds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import zmq

from . import protocol
from .params import AskRequest, Timeouts

ProgressFn = Callable[[str, Optional[int], float, str], None]
CancelFn = Callable[[], bool]


class BackendError(Exception):
    """A failure to show the user: `code` is the protocol/engine error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Cancelled(BackendError):
    def __init__(self, message: str = "cancelled"):
        super().__init__(protocol.CANCELLED, message)


def _never() -> bool:
    return False


class Client:
    def __init__(self, endpoint: str, timeouts: Optional[Timeouts] = None, context: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeouts = timeouts or Timeouts()
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, 2000)  # a send never blocks the thread for long
        # a larger frame drops the connection before it is received (results are a few MB)
        self._socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REPLY_BYTES)
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            raise BackendError("bad_endpoint", f"cannot use endpoint {endpoint!r}: {exc}") from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close(0)

    # -- low level ----------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> str:
        try:
            self._socket.send(protocol.encode(message))
        except zmq.Again:
            raise BackendError(protocol.TIMEOUT, self._silent_text(2.0)) from None
        return message["id"]

    def receive(self, timeout: float) -> Optional[dict[str, Any]]:
        """The next valid reply within `timeout` seconds, else None. Broken replies raise."""
        if not self._socket.poll(int(max(timeout, 0.0) * 1000), zmq.POLLIN):
            return None
        frames = self._socket.recv_multipart()
        try:
            return protocol.validate_reply(protocol.decode(frames[-1], protocol.MAX_REPLY_BYTES))
        except protocol.ProtocolError as exc:
            raise BackendError(exc.code, f"the backend sent a malformed reply: {exc}") from None

    def request(self, message: dict[str, Any], timeout: float, is_canceled: CancelFn = _never) -> dict[str, Any]:
        """Send one request and return its reply (others are skipped), or raise on timeout."""
        rid = self.send(message)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(protocol.TIMEOUT, self._silent_text(timeout))
            if is_canceled():
                raise Cancelled()
            reply = self.receive(min(left, self.timeouts.poll))
            if reply is not None and reply.get("id") == rid:
                if reply["type"] == "error":
                    raise BackendError(reply["code"], reply["message"])
                return reply

    def _silent_text(self, seconds: float) -> str:
        return (
            f"No answer from the backend at {self.endpoint} within {seconds:g} s. Start it with "
            f"`lrs-focus serve --endpoint {self.endpoint}` or set a start command in the plugin settings."
        )

    # -- requests -----------------------------------------------------------------------------
    def health(self, timeout: Optional[float] = None) -> dict[str, Any]:
        return self.request(protocol.health(), self.timeouts.health if timeout is None else timeout)

    def wait_healthy(self, budget: float, is_canceled: CancelFn = _never,
                     gave_up: Callable[[], Optional[str]] = lambda: None) -> dict[str, Any]:
        """Ask for `health` once a second until it answers or `budget` seconds pass.

        `gave_up()` may return a reason to stop early (e.g. the backend we started exited).
        """
        deadline = time.monotonic() + budget
        while True:
            left = deadline - time.monotonic()
            try:
                return self.health(min(1.0, max(left, 0.05)))
            except BackendError as exc:
                if exc.code != protocol.TIMEOUT:
                    raise
            reason = gave_up()
            if reason:
                raise BackendError("backend_exited", reason)
            if time.monotonic() >= deadline:
                raise BackendError(protocol.TIMEOUT, self._silent_text(budget))
            if is_canceled():
                raise Cancelled()

    def _check_job_alive(self, status: dict[str, Any], job_id: str) -> None:
        """A status reply proves the backend lives; it must also still know our job.

        Replies travel in order on one connection, so "finished" without a result before it
        means the result is lost; "unknown" means the backend restarted and forgot the job.
        """
        state = (status.get("job") or {}).get("state")
        if state == "unknown":
            raise BackendError(
                protocol.UNKNOWN_JOB,
                f"the backend at {self.endpoint} no longer knows job {job_id} (was it restarted?); ask again",
            )
        if state == "finished":
            raise BackendError("result_lost", f"job {job_id} finished but its result never arrived; ask again")

    def cancel(self, job_id: str) -> None:
        self.send(protocol.cancel(job_id))

    def ask(self, request: AskRequest, on_progress: Optional[ProgressFn] = None,
            is_canceled: CancelFn = _never) -> dict[str, Any]:
        """Run one question to its end; returns the engine's result document plus `job_id`.

        Raises Cancelled when `is_canceled()` turned true (after telling the backend), and
        BackendError for an error reply, a malformed reply or a backend gone silent.
        """
        t = self.timeouts
        message = protocol.ask(request.raster_path, request.question, request.options.to_request())
        accepted = self.request(message, t.health, is_canceled)
        rid, job_id = message["id"], accepted["job_id"]
        if on_progress:
            on_progress("queued", None, 0.0, f"queued at position {accepted.get('position', 0)}")
        last_heard = time.monotonic()
        probe_sent: Optional[float] = None
        cancel_sent: Optional[float] = None
        while True:
            now = time.monotonic()
            if cancel_sent is None and is_canceled():
                self.cancel(job_id)
                cancel_sent = now
            if cancel_sent is not None and now - cancel_sent > t.cancel:
                raise Cancelled(f"cancel sent; the backend did not confirm within {t.cancel:g} s")
            if probe_sent is not None and now - probe_sent > t.health:
                raise BackendError(
                    protocol.TIMEOUT,
                    f"the backend at {self.endpoint} stopped answering during the job "
                    f"(silent for {now - last_heard:.0f} s); it may have crashed",
                )
            if probe_sent is None and now - last_heard > t.silence:
                self.send(protocol.status(job_id))
                probe_sent = now
            reply = self.receive(t.poll)
            if reply is None:
                continue
            last_heard, probe_sent = time.monotonic(), None
            if reply["type"] == "status":
                self._check_job_alive(reply, job_id)
                continue
            if reply.get("id") != rid and reply.get("job_id") != job_id:
                continue
            kind = reply["type"]
            if kind == "progress" and on_progress:
                on_progress(reply["stage"], reply.get("level"), float(reply["fraction"]), reply.get("message", ""))
            elif kind == "result":
                document = dict(reply["result"])
                document.setdefault("job_id", job_id)
                return document
            elif kind == "error":
                if reply["code"] == protocol.CANCELLED:
                    raise Cancelled(reply["message"])
                raise BackendError(reply["code"], reply["message"])
