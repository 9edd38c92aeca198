"""DEALER client of the lrs-focus service (stdlib + pyzmq; no torch, no GDAL).

Every receive is bounded: a request that gets no reply within `timeout_s` raises
`ServiceTimeout`. While a job runs, silence longer than `timeout_s` makes the client ask the
server for the job's status; no answer to that either means the server is gone, and the call
raises instead of hanging. Long jobs on a live server therefore never time out, dead servers
always do.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable, Optional, Union

import zmq
import zmq.auth

from . import protocol
from .errors import LrsFocusError

ProgressFn = Callable[[str, Optional[int], float, str], None]


class ServiceError(LrsFocusError):
    """An `error` reply from the server (or a client-side failure); `code` is the protocol's."""

    code = "service_error"

    def __init__(self, code: str, message: str, reply: Optional[dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.reply = reply


class ServiceTimeout(ServiceError):
    code = protocol.TIMEOUT

    def __init__(self, message: str):
        super().__init__(protocol.TIMEOUT, message)


def _z85_key(key: Union[str, bytes, os.PathLike]) -> bytes:
    """A CURVE public key: 40 z85 characters, or a key file made by zmq.auth.create_certificates."""
    if isinstance(key, bytes) and len(key) == 40:
        return key
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(key))
    except (OSError, ValueError) as exc:
        raise ServiceError("bad_key", f"cannot read the CURVE public key {os.fspath(key)!r}: {exc}") from None
    return public


def _client_keypair(key_file: str) -> tuple[bytes, bytes]:
    """A client certificate with its secret (`NAME.key_secret` from `lrs-focus keys`)."""
    try:
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise ServiceError("bad_key", f"cannot read the CURVE client key {key_file!r}: {exc}") from None
    if not secret:
        raise ServiceError("bad_key", f"{key_file} holds no secret key: give the client its NAME.key_secret file")
    return public, secret


class Client:
    """One DEALER socket; use one Client per thread (zmq sockets are not thread-safe)."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0, server_public_key=None,
                 client_key_file: Optional[str] = None, context: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self._ctx = context or zmq.Context.instance()
        if server_public_key is not None:
            if client_key_file:  # a server with an allow-list of client keys
                public, secret = _client_keypair(client_key_file)
            else:  # a loopback server without an allow-list: an ephemeral key pair will do
                public, secret = zmq.curve_keypair()
            server_key = _z85_key(server_public_key)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.maxmsgsize = protocol.MAX_REPLY_BYTES  # a larger frame drops the connection unread
        if server_public_key is not None:
            self._sock.curve_serverkey = server_key
            self._sock.curve_publickey = public
            self._sock.curve_secretkey = secret
        self._sock.connect(endpoint)
        # Job messages that arrived while waiting for something else (e.g. a queued job's
        # `cancelled` during the cancel request); wait() reads them first.
        self._pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=10000)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        payload = protocol.encode(message)
        if not self._sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
            raise ServiceTimeout(f"could not send to {self.endpoint} within {self.timeout_s:g} s")
        self._sock.send(payload, zmq.NOBLOCK)

    def receive(self, timeout_s: float) -> Optional[dict[str, Any]]:
        """The next well-formed reply, or None after `timeout_s` (malformed replies are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return None
            frame = self._sock.recv()
            try:
                return protocol.validate_reply(protocol.decode(frame, protocol.MAX_REPLY_BYTES))
            except protocol.ProtocolError:
                continue

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Sends one request and returns its reply; `error` replies raise ServiceError."""
        self.send(message)
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self.receive(deadline - time.monotonic())
            if reply is None:
                raise ServiceTimeout(f"no {message['type']} reply from {self.endpoint} within {self.timeout_s:g} s")
            if reply.get("id") != message["id"]:
                if reply.get("job_id"):
                    self._pending.append(reply)  # a job's message: its wait() will want it
                continue
            if reply["type"] == "error":
                raise ServiceError(reply["code"], reply["message"], reply)
            return reply

    # -- requests ---------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.request(protocol.ping())

    def health(self) -> dict[str, Any]:
        return self.request(protocol.health())

    def status(self, job_id: Optional[str] = None) -> dict[str, Any]:
        return self.request(protocol.status(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request(protocol.cancel(job_id))

    def shutdown(self) -> dict[str, Any]:
        return self.request(protocol.shutdown())

    def submit(self, raster: str, question: str, options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Queues an ask; returns the `accepted` reply (job_id, position). `busy` raises ServiceError."""
        options = {k: v for k, v in (options or {}).items() if not (k == "extra" and not v)}  # AskOptions.to_dict()
        return self.request(protocol.ask(str(raster), question, options))

    def wait(self, accepted: dict[str, Any], progress: Optional[ProgressFn] = None,
             should_cancel: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Streams the job's progress to `progress` until its terminal message; returns the result."""
        job_id, request_id = accepted["job_id"], accepted["id"]
        cancel_sent = False
        probe_id: Optional[str] = None
        finished_probes = 0
        quiet_since = time.monotonic()
        early = [m for m in self._pending if m.get("job_id") == job_id]
        for m in early:
            self._pending.remove(m)
        slice_s = 0.05 if should_cancel is not None else self.timeout_s
        while True:
            if should_cancel is not None and not cancel_sent and should_cancel():
                self.send(protocol.cancel(job_id))
                cancel_sent = True
            if early:
                reply = early.pop(0)
            else:
                reply = self.receive(min(slice_s, max(0.01, quiet_since + self.timeout_s - time.monotonic())))
            now = time.monotonic()
            if reply is None:
                if now - quiet_since < self.timeout_s:
                    continue
                if probe_id is not None:
                    raise ServiceTimeout(f"the server at {self.endpoint} stopped answering during job {job_id}")
                probe = protocol.status(job_id)
                probe_id, quiet_since = probe["id"], now
                self.send(probe)
                continue
            if reply.get("id") == probe_id:
                probe_id, quiet_since = None, now
                state = (reply.get("job") or {}).get("state") if reply["type"] == "status" else None
                if state == "unknown":
                    raise ServiceError(protocol.UNKNOWN_JOB, f"the server no longer knows job {job_id} (restarted?)")
                finished_probes += state == "finished"
                if finished_probes >= 2:  # finished long ago, yet its terminal message never came
                    raise ServiceError(protocol.UNKNOWN_JOB, f"job {job_id} finished but its reply was lost")
                continue
            if reply.get("job_id") != job_id and reply.get("id") != request_id:
                continue  # cancel acks, messages of earlier jobs
            quiet_since = now
            if reply["type"] == "progress":
                if progress is not None:
                    progress(reply["stage"], reply["level"], reply["fraction"], reply.get("message", ""))
            elif reply["type"] == "result":
                return reply["result"]
            elif reply["type"] == "error":
                raise ServiceError(reply["code"], reply["message"], reply)

    def ask(self, raster: str, question: str, options: Optional[dict[str, Any]] = None,
            progress: Optional[ProgressFn] = None, should_cancel: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Submit and wait: the engine's result document, or ServiceError (code "cancelled", ...)."""
        return self.wait(self.submit(raster, question, options), progress, should_cancel)


def ask_remote(endpoint: str, raster: str, question: str, options: Optional[dict[str, Any]] = None,
               progress: Optional[ProgressFn] = None, timeout_s: float = 30.0, server_public_key=None,
               should_cancel: Optional[Callable[[], bool]] = None,
               client_key_file: Optional[str] = None) -> dict[str, Any]:
    """What `lrs-focus ask --endpoint` calls: one ask through a running server."""
    with Client(endpoint, timeout_s=timeout_s, server_public_key=server_public_key,
                client_key_file=client_key_file) as client:
        return client.ask(raster, question, options, progress=progress, should_cancel=should_cancel)
