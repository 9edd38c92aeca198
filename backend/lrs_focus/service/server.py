"""The socket loop: frames in, replies out; no job logic.

Owns `Server`: the ROUTER (or, behind the proxy, a DEALER) socket and the capture SUB, the
lifecycle (start, stop, serve_forever, the shutdown of jobs), the poll loop and sending. Every
received message goes to `Handlers.handle`, whose reply is sent back; job threads reach the
socket only through the outbox. Before any reply is sent the outbox is flushed, so a reply
never overtakes a job message queued before it (a `status` saying "finished" always comes after
that job's result). A peer that cannot take a message loses it and its jobs are cancelled.
May call: security (bind, CURVE), limits, outbox, jobs, handlers, worker (to start the job thread).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Optional

import zmq

from .. import protocol
from ..engine import AskEngine
from .handlers import Context, Handlers
from .jobs import JobBook, shutting_down
from .limits import BURST, DEFAULT_ENDPOINT, POLL_MS, RCVHWM, ROUTER_LINGER_MS, ServiceLimits, check_queue_size
from .outbox import Outbox, encode_reply, keep_big_replies_mapped
from .security import abort_stalled_peers, bind, check_security, is_loopback_endpoint, secure_socket
from .worker import JobRunner

log = logging.getLogger("lrs_focus.service")

#: Behind the proxy a worker takes few requests at a time: the proxy keeps the rest, per client.
WORKER_RCVHWM = 4


class Server:
    """ROUTER server (or, with `connect=True`, one worker behind a `ProxyFrontend`).

    `access`: an object with `check(path) -> path` (access.AccessPolicy) applied to every raster
    before the engine sees it; None hands paths to the engine unchecked (tests, in-process use;
    `lrs-focus serve` always sets one). `allow_shutdown=False` refuses every `shutdown` request.
    `serve_forever()` blocks; `start()` runs it in a thread.
    """

    def __init__(self, engine: AskEngine, endpoint: str = DEFAULT_ENDPOINT, *, queue_size: int = 8,
                 keys_dir: Optional[str] = None, force_curve: bool = False,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES, connect: bool = False,
                 capture_endpoint: Optional[str] = None, worker_name: str = "",
                 frontend_is_loopback: Optional[bool] = None, context: Optional[zmq.Context] = None,
                 extra_health: Optional[dict[str, Any]] = None, access: Any = None,
                 limits: Optional[ServiceLimits] = None, allow_shutdown: bool = True):
        self.queue_size = check_queue_size(queue_size)
        keep_big_replies_mapped()  # a dropped peer's queued results return to the OS, not the heap
        self.engine = engine
        self.access = access
        self.limits = limits or ServiceLimits()
        self.allow_shutdown = allow_shutdown  # False: `shutdown` requests are always `forbidden`
        self.requested_endpoint = endpoint
        self.endpoint = endpoint  # the bound one (a "*" port is resolved after binding)
        self.worker_name = worker_name
        self.crashed: Optional[str] = None  # set if the loop ever ends by an error (serve exits 1)
        self._connect = connect
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._auth = None
        self._dropped = 0  # replies a peer could not take (not reading, or gone)
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._describe = dict(engine.describe())
        self._outbox = Outbox()
        self._book = JobBook(self.queue_size, worker_name, self._outbox)
        self._runner = JobRunner(engine, self._book, self.limits, access, name=f"lrs-job{worker_name}")

        self._sock = self._ctx.socket(zmq.DEALER if connect else zmq.ROUTER)
        self._sock.linger = ROUTER_LINGER_MS
        self._sock.sndhwm = self.limits.send_hwm
        self._sock.rcvhwm = WORKER_RCVHWM if connect else RCVHWM
        self._capture = None
        try:
            if connect:
                self._sock.connect(endpoint)
                local_only = bool(frontend_is_loopback)
            else:
                # full or vanished peers raise instead of silently queueing/dropping: see _send
                self._sock.router_mandatory = True
                self._sock.maxmsgsize = max_message_bytes
                abort_stalled_peers(self._sock, self.limits.stalled_peer_timeout_s)
                check_security(endpoint, keys_dir, force_curve, getattr(access, "roots", ()),
                               check_roots=access is not None)
                self._auth = secure_socket(self._ctx, self._sock, endpoint, keys_dir, force_curve)
                bind(self._sock, endpoint)
                self.endpoint = self._sock.last_endpoint.decode()
                local_only = is_loopback_endpoint(self.endpoint)
            if capture_endpoint:
                self._capture = self._ctx.socket(zmq.SUB)
                self._capture.linger = 0
                self._capture.setsockopt(zmq.SUBSCRIBE, b"")
                self._capture.connect(capture_endpoint)
        except BaseException:
            self._close()
            raise
        self._handlers = Handlers(self._book, Context(
            describe=self._describe, limits=self.limits, worker_name=worker_name,
            extra_health=dict(extra_health or {}), allow_shutdown=allow_shutdown, local_only=local_only,
            behind_proxy=connect, curve=keys_dir is not None, request_stop=self._book.stopping.set,
            dropped_replies=lambda: self._dropped))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.serve_forever, name=f"lrs-serve{self.worker_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops serving; returns within about shutdown_timeout_s + 1 s whatever the job does."""
        self._book.stop()
        timeout = self.limits.shutdown_timeout_s + 2.0 if timeout is None else timeout
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._stopped.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        log.info("lrs-focus service%s on %s (model %s on %s)", f" {self.worker_name}" if self.worker_name else "",
                 self.endpoint, self._describe.get("model"), self._describe.get("device"))
        self._runner.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._outbox.fileno(), zmq.POLLIN)
        if self._capture is not None:
            poller.register(self._capture, zmq.POLLIN)
        try:
            while not self._book.stopping.is_set():
                try:
                    self._serve_once(poller)
                except zmq.ContextTerminated:
                    raise
                except Exception:  # one bad iteration never ends the service
                    log.error("service loop error (serving on): %s", traceback.format_exc())
                    time.sleep(0.01)
        except BaseException as exc:
            self.crashed = f"{type(exc).__name__}: {exc}"
            log.error("service loop stopped by %s", self.crashed)
            raise
        finally:
            try:
                self._shutdown_jobs()
            finally:
                self._close()
                self._stopped.set()

    def _serve_once(self, poller: zmq.Poller) -> None:
        ready = dict(poller.poll(POLL_MS))
        if self._outbox.fileno() in ready:
            self._flush_outbox()
        if self._sock in ready:
            for _ in range(BURST):  # bounded burst, then look at job messages again
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._reply(frames[0].bytes, self._handlers.handle(frames))
        if self._capture is not None and self._capture in ready:
            self._read_capture()

    def _read_capture(self) -> None:
        while True:
            try:
                frames = self._capture.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handlers.capture(frames)

    def _shutdown_jobs(self) -> None:
        """Every accepted job still ends with exactly one terminal message, even on shutdown."""
        queued, running = self._book.empty_for_shutdown()
        for job in queued:
            self._book.finish(job, shutting_down(job))
        self._runner.join(self.limits.shutdown_timeout_s)
        if running is not None and self._book.finish(running, shutting_down(running)):
            log.warning("job %s did not stop within %g s; it was abandoned", running.job_id,
                        self.limits.shutdown_timeout_s)
        self._flush_outbox()

    def _close(self) -> None:
        for sock in (self._capture, getattr(self, "_sock", None)):
            if sock is not None:
                sock.close()
        self._outbox.close()
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._ctx.term()  # only our sockets live in it, all closed, linger bounded

    # -- sending ----------------------------------------------------------------------------
    def _send(self, identity: bytes, payload: bytes) -> None:
        """Non-blocking; a peer that cannot take the message loses it and its jobs are cancelled."""
        try:
            self._sock.send_multipart([identity, payload], zmq.NOBLOCK)
            return
        except zmq.Again:  # its queue is full: it stopped reading
            why = "is not reading its replies"
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
            why = f"is unreachable ({exc.strerror})"
        self._dropped += 1
        if not self._connect:  # behind a proxy the identity is the proxy's client, nothing to learn
            self._cancel_peer_jobs(identity, why)

    def _reply(self, identity: bytes, message: dict[str, Any]) -> None:
        if self._outbox:  # job messages queued before this reply leave first
            self._flush_outbox()
        self._send(identity, encode_reply(message))

    def _flush_outbox(self) -> None:
        for identity, payload in self._outbox.drain():
            self._send(identity, payload)

    def _cancel_peer_jobs(self, identity: bytes, why: str) -> None:
        for job in self._book.peer_jobs(identity):
            log.warning("cancelling job %s: its client %s", job.job_id, why)
            self._book.cancel(job, "cancelled: the client " + why)
