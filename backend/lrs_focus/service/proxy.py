"""Several workers behind one endpoint: a fair, bounded proxy between clients and workers.

Owns `ProxyFrontend` and `serve_workers`. Clients talk to a public ROUTER; workers are
`Server(connect=True)` DEALERs on the proxy's backend DEALER (zmq round-robins requests among
them) and SUB to its capture PUB, on which the proxy publishes every `cancel`, so the worker
that owns a job sees a cancel whichever worker the request went to.

Why not zmq.proxy: it moves one shared stream, so one client's flood of 1 MiB frames queued ahead
of everyone (up to the backend's 1000-message high-water mark per worker: gigabytes), and the
capture socket copied every frame to every worker. Here each client has its own queue of at most
`per_client` requests, all queues together hold at most `max_queued_bytes`, requests leave round
robin across clients and only when a worker can take one (the backend pipes hold a few messages),
and only small `cancel` frames are published. A request over a bound is answered `busy` at once.
May call: protocol, limits, security, server (the workers of `serve_workers`).
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from typing import Any, Optional

import zmq

from .. import protocol
from ..engine import AskEngine
from .limits import BURST, DEFAULT_ENDPOINT, POLL_MS, RCVHWM, ROUTER_LINGER_MS, ServiceLimits
from .outbox import encode_reply
from .security import abort_stalled_peers, bind, check_security, is_loopback_endpoint, secure_socket
from .server import Server

log = logging.getLogger("lrs_focus.service")

PER_CLIENT = 16  # requests one client may have waiting at the proxy
MAX_QUEUED_BYTES = 64 << 20  # all clients' waiting requests together
_DECODE_REFUSED_BELOW = 64 << 10  # a refused request this small is decoded to answer with its id
_CANCEL_MAX_BYTES = 4096  # a `cancel` is small; bigger frames are never published to the workers


class ProxyFrontend:
    """Fair, bounded request routing from a public ROUTER to workers (see the module docstring).

    Workers can live in this process (`serve_workers`) or elsewhere (connected to
    `backend_endpoint` and `capture_endpoint`). The frontend keeps ROUTER_MANDATORY off: replies
    to a full or vanished peer are dropped there (low send high-water mark), and the workers
    cannot tell, so such jobs run to their end.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, keys_dir: Optional[str] = None, force_curve: bool = False,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES, context: Optional[zmq.Context] = None,
                 backend_endpoint: Optional[str] = None, capture_endpoint: Optional[str] = None,
                 send_hwm: int = ServiceLimits.send_hwm,
                 stalled_peer_timeout_s: float = ServiceLimits.stalled_peer_timeout_s,
                 per_client: int = PER_CLIENT, max_queued_bytes: int = MAX_QUEUED_BYTES):
        self._ctx = context or zmq.Context.instance()
        tag = uuid.uuid4().hex
        self.backend_endpoint = backend_endpoint or f"inproc://lrs-workers-{tag}"
        self.capture_endpoint = capture_endpoint or f"inproc://lrs-capture-{tag}"
        self.per_client = int(per_client)
        self.max_queued_bytes = int(max_queued_bytes)
        self._queues: collections.OrderedDict[bytes, collections.deque] = collections.OrderedDict()
        self.queued_bytes = 0
        self.peak_queued_bytes = 0  # the most the queues ever held (tests, diagnostics)
        self.refused = 0  # requests answered `busy` by the proxy itself
        self._stop = threading.Event()
        self.frontend = self._ctx.socket(zmq.ROUTER)
        self.frontend.router_mandatory = False
        self.frontend.maxmsgsize = max_message_bytes
        self.frontend.linger = ROUTER_LINGER_MS
        self.frontend.sndhwm = send_hwm
        self.frontend.rcvhwm = RCVHWM
        abort_stalled_peers(self.frontend, stalled_peer_timeout_s)
        self.backend = self.capture = None
        self._auth = None
        try:
            self._auth = secure_socket(self._ctx, self.frontend, endpoint, keys_dir, force_curve)
            bind(self.frontend, endpoint)
            self.endpoint = self.frontend.last_endpoint.decode()
            self.local_only = is_loopback_endpoint(self.endpoint)
            self.backend = self._ctx.socket(zmq.DEALER)
            self.backend.linger = 0
            self.backend.sndhwm = 1  # per worker: requests wait here, per client, not in zmq's pipes
            self.backend.bind(self.backend_endpoint)
            self.capture = self._ctx.socket(zmq.PUB)
            self.capture.linger = 0
            self.capture.sndhwm = 1000
            self.capture.bind(self.capture_endpoint)
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="lrs-proxy", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "ProxyFrontend":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._close()

    def _close(self) -> None:
        for sock in (self.capture, self.backend, self.frontend):
            if sock is not None:
                sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    self._once(poller)
                except zmq.ContextTerminated:
                    return
                except Exception as exc:  # one bad iteration never ends the proxy
                    log.error("proxy loop error (serving on): %s", exc)
        finally:
            self._queues.clear()

    def _once(self, poller: zmq.Poller) -> None:
        # wait for a worker's room only while requests are waiting
        poller.modify(self.backend, zmq.POLLIN | (zmq.POLLOUT if self._queues else 0))
        ready = dict(poller.poll(POLL_MS))
        if ready.get(self.backend, 0) & zmq.POLLIN:
            self._replies_out()
        if ready.get(self.frontend, 0) & zmq.POLLIN:
            self._requests_in()
        if self._queues:
            self._requests_out()

    # -- moving messages ------------------------------------------------------------------------
    def _replies_out(self) -> None:
        for _ in range(BURST):
            try:
                frames = self.backend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:  # ROUTER_MANDATORY is off: a full or gone peer's reply is dropped, never blocks
                self.frontend.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                pass

    def _requests_in(self) -> None:
        for _ in range(BURST):
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            size = sum(len(f) for f in frames[1:])
            if len(frames) == 2 and size <= _CANCEL_MAX_BYTES and b'"cancel"' in frames[1].bytes:
                try:
                    self.capture.send_multipart([identity, frames[1].bytes], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            queue = self._queues.get(identity)
            if (queue is not None and len(queue) >= self.per_client) or \
                    self.queued_bytes + size > self.max_queued_bytes:
                self._refuse(identity, frames, size)
                continue
            if queue is None:
                queue = self._queues[identity] = collections.deque()
            queue.append((frames, size))
            self.queued_bytes += size
            self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)

    def _requests_out(self) -> None:
        """Round robin over the clients with waiting requests, one request each, while a worker has room."""
        while self._queues and self.backend.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            identity, queue = next(iter(self._queues.items()))
            frames, size = queue[0]
            try:
                self.backend.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            queue.popleft()
            self.queued_bytes -= size
            if queue:
                self._queues.move_to_end(identity)  # its next request waits for the others' turn
            else:
                del self._queues[identity]

    def _refuse(self, identity: bytes, frames: list, size: int) -> None:
        self.refused += 1
        rid = None
        if len(frames) == 2 and size <= _DECODE_REFUSED_BELOW:
            try:
                rid = protocol.validate_request(protocol.decode(frames[1].bytes))["id"]
            except protocol.ProtocolError as exc:
                rid = exc.request_id
        reply = protocol.error(rid, protocol.BUSY, f"too many requests from this client are waiting "
                               f"(at most {self.per_client}); retry later")
        try:
            self.frontend.send_multipart([identity, encode_reply(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass


def serve_workers(engines: list[AskEngine], endpoint: str = DEFAULT_ENDPOINT, *, queue_size: int = 8,
                  keys_dir: Optional[str] = None, force_curve: bool = False, access: Any = None,
                  limits: Optional[ServiceLimits] = None) -> tuple[ProxyFrontend, list[Server]]:
    """Starts a proxy and one worker per engine (e.g. one per GPU); returns them running."""
    limits = limits or ServiceLimits()
    check_security(endpoint, keys_dir, force_curve, getattr(access, "roots", ()), check_roots=access is not None)
    ctx = zmq.Context.instance()
    proxy = ProxyFrontend(endpoint, keys_dir=keys_dir, force_curve=force_curve, context=ctx, send_hwm=limits.send_hwm,
                          stalled_peer_timeout_s=limits.stalled_peer_timeout_s)
    workers = [Server(engine, proxy.backend_endpoint, queue_size=queue_size, connect=True,
                      capture_endpoint=proxy.capture_endpoint, worker_name=f"w{i}",
                      frontend_is_loopback=proxy.local_only, context=ctx, access=access, limits=limits,
                      extra_health={"workers": len(engines)}).start()
               for i, engine in enumerate(engines)]
    proxy.start()
    return proxy, workers
