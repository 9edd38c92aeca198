"""The ZeroMQ backend: a ROUTER that queues `ask` jobs and runs them one at a time on an engine.

Why it is shaped this way:
- One model per process (per GPU) and one job at a time: a second concurrent forward pass would
  only fight for the same GPU memory. A bounded queue answers `busy` instead of growing.
- Only the loop thread touches the ROUTER socket (zmq sockets are not thread-safe); the job
  thread hands its progress/result frames over an inproc PUSH/PULL pair.
- Replies go out with NOBLOCK and ROUTER_MANDATORY off: a client that vanished simply loses its
  messages; nothing ever blocks on it.
- Every frame goes through `protocol.decode/validate_request` inside a catch-all: bad input
  gets an `error` reply, never a crash.
- Loopback by default; any other interface needs CURVE keys (zmq.auth). MAXMSGSIZE is set.
- Several workers behind one endpoint: `ProxyFrontend` runs zmq's own proxy (ROUTER frontend,
  DEALER backend). Its capture socket (PUB) lets every worker see every request, so a `cancel`
  reaches the worker that owns the job whichever worker the DEALER handed it to.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import zmq

from . import __version__, protocol
from .engine import AskEngine, AskOptions
from .errors import Cancelled, LrsFocusError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# a file name of the zmq.auth layout, not a secret:
SERVER_SECRET_FILE = "server.key_secret"  # nosec B105
CLIENTS_DIR = "clients"
_POLL_MS = 100
_PROGRESS_MIN_INTERVAL_S = 0.05


class ServiceConfigError(LrsFocusError):
    """An unsafe or impossible server configuration (e.g. a public bind without CURVE keys)."""

    code = "service_config"


# -- endpoint checks --------------------------------------------------------------------------
def is_loopback_endpoint(endpoint: str) -> bool:
    """ipc:// and inproc:// are local by nature; tcp:// only on 127.0.0.0/8, ::1 or localhost."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    if parts.scheme != "tcp":
        return False
    host = parts.netloc.rsplit(":", 1)[0].strip("[]")
    return is_loopback_address(host)


def is_loopback_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, host names: treat as public


def load_server_keys(keys_dir: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from `server.key_secret` made by zmq.auth.create_certificates."""
    path = Path(keys_dir) / SERVER_SECRET_FILE
    if not path.is_file():
        raise ServiceConfigError(f"no CURVE server key at {path} (make one with zmq.auth.create_certificates(dir, 'server'))")
    public, secret = zmq.auth.load_certificate(str(path))
    if not secret:
        raise ServiceConfigError(f"{path} holds no secret key")
    return public, secret


def check_security(endpoint: str, keys_dir: Optional[str], force_curve: bool = False) -> None:
    """Raises ServiceConfigError for a public endpoint without keys (or unreadable keys)."""
    if keys_dir is None:
        if force_curve:
            raise ServiceConfigError("CURVE was required but no keys directory was given")
        if not is_loopback_endpoint(endpoint):
            raise ServiceConfigError(
                f"refusing to listen on {endpoint} without CURVE keys: pass --keys-dir (see docs/protocol.md) "
                "or bind 127.0.0.1")
    else:
        load_server_keys(keys_dir)


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, endpoint: str, keys_dir: Optional[str], force_curve: bool):
    """Applies CURVE (or refuses a public endpoint without it); returns the authenticator to stop."""
    check_security(endpoint, keys_dir, force_curve)
    if keys_dir is None:
        return None
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = load_server_keys(keys_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("lrs_focus.service.auth"))
    auth.start()
    clients = Path(keys_dir) / CLIENTS_DIR
    # Either a directory of allowed client public keys, or any client that knows our public key.
    auth.configure_curve(domain="*", location=str(clients) if clients.is_dir() else zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


# -- jobs -------------------------------------------------------------------------------------
class Job:
    __slots__ = ("job_id", "identity", "request_id", "raster", "question", "options", "cancel",
                 "state", "stage", "level", "fraction", "accepted_at", "_last_progress")

    def __init__(self, job_id: str, identity: bytes, request_id: str, raster: str, question: str, options: AskOptions):
        self.job_id, self.identity, self.request_id = job_id, identity, request_id
        self.raster, self.question, self.options = raster, question, options
        self.cancel = threading.Event()
        self.state = "queued"  # queued -> running -> finished (each transition under Server._lock)
        self.stage, self.level, self.fraction = "queued", None, 0.0
        self.accepted_at = time.monotonic()
        self._last_progress: tuple[tuple, float] = ((), 0.0)

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "stage": self.stage, "level": self.level,
                "fraction": self.fraction}


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, LrsFocusError):
        return exc.code
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return protocol.OUT_OF_MEMORY
    return protocol.INTERNAL


def _peer_address(frame: zmq.Frame) -> str:
    """The sender's IP for tcp (used to allow `shutdown` from loopback only); "" if unknown."""
    try:
        return frame.get("Peer-Address") or ""
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""


# -- the server -------------------------------------------------------------------------------
class Server:
    """ROUTER server (or, with `connect=True`, one worker behind a `ProxyFrontend`).

    `serve_forever()` blocks; `start()` runs it in a background thread (tests, multi-worker).
    """

    def __init__(self, engine: AskEngine, endpoint: str = DEFAULT_ENDPOINT, *, queue_size: int = 8,
                 keys_dir: Optional[str] = None, force_curve: bool = False,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES, connect: bool = False,
                 capture_endpoint: Optional[str] = None, worker_name: str = "",
                 frontend_is_loopback: Optional[bool] = None, context: Optional[zmq.Context] = None,
                 extra_health: Optional[dict[str, Any]] = None):
        if queue_size < 1:
            raise ServiceConfigError(f"queue size must be >= 1, not {queue_size}")
        self.engine = engine
        self.requested_endpoint = endpoint
        self.endpoint = endpoint  # the bound one (a "*" port is resolved after binding)
        self.queue_size = queue_size
        self.worker_name = worker_name
        self.extra_health = dict(extra_health or {})
        self._connect = connect
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._auth = None
        self._started = time.monotonic()
        self._describe = dict(engine.describe())
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}  # queued and running jobs
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._running: Optional[Job] = None
        self._jobs_done = 0
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._events_endpoint = f"inproc://lrs-events-{uuid.uuid4().hex}"

        self._sock = self._ctx.socket(zmq.DEALER if connect else zmq.ROUTER)
        self._sock.linger = 500
        self._sock.sndhwm = 10000
        self._sock.rcvhwm = 10000
        if connect:
            self._sock.connect(endpoint)
            self._local_only = bool(frontend_is_loopback)
        else:
            self._sock.router_mandatory = False  # unroutable replies (vanished clients) are dropped
            self._sock.maxmsgsize = max_message_bytes
            try:
                self._auth = secure_socket(self._ctx, self._sock, endpoint, keys_dir, force_curve)
                self._sock.bind(endpoint)
            except BaseException:
                self._close()
                raise
            self.endpoint = self._sock.last_endpoint.decode()
            self._local_only = is_loopback_endpoint(self.endpoint)
        self._capture = None
        if capture_endpoint:
            self._capture = self._ctx.socket(zmq.SUB)
            self._capture.linger = 0
            self._capture.setsockopt(zmq.SUBSCRIBE, b"")
            self._capture.connect(capture_endpoint)
        self._events = self._ctx.socket(zmq.PULL)
        self._events.linger = 0
        self._events.bind(self._events_endpoint)
        self._worker = threading.Thread(target=self._work, name=f"lrs-job{worker_name}", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.serve_forever, name=f"lrs-serve{self.worker_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            self._wakeup.notify_all()
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
        log.info("lrs-focus service%s on %s (model %s on %s)", f" {self.worker_name}" if self.worker_name else "", self.endpoint,
                 self._describe.get("model"), self._describe.get("device"))
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._events, zmq.POLLIN)
        if self._capture is not None:
            poller.register(self._capture, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll(_POLL_MS))
                if self._events in ready:
                    self._forward_events()
                if self._sock in ready:
                    for _ in range(256):  # bounded burst, then look at events again
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle_frames(frames)
                if self._capture is not None and self._capture in ready:
                    self._handle_capture()
        finally:
            self._shutdown_jobs()
            self._close()
            self._stopped.set()

    def _shutdown_jobs(self) -> None:
        """Every accepted job still ends with exactly one terminal message, even on shutdown."""
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            running = self._running
            if running is not None:
                running.cancel.set()
            self._wakeup.notify_all()
        for job in queued:
            self._finish(job, protocol.error(job.request_id, protocol.SHUTTING_DOWN, "the server is shutting down",
                                             job.job_id), from_loop=True)
        self._worker.join(timeout=30)
        self._forward_events()

    def _close(self) -> None:
        for sock in (getattr(self, "_capture", None), getattr(self, "_events", None), self._sock):
            if sock is not None:
                sock.close()
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._ctx.term()

    # -- sending ----------------------------------------------------------------------------
    def _send(self, identity: bytes, message: dict[str, Any]) -> None:
        try:
            payload = protocol.encode(message)
        except (TypeError, ValueError) as exc:  # e.g. NaN in a result: still answer, as an error
            payload = protocol.encode(protocol.error(message.get("id"), protocol.INTERNAL,
                                                     f"reply not encodable as JSON: {exc}", message.get("job_id")))
        try:
            self._sock.send_multipart([identity, payload], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a %s reply: the peer is not reading", message.get("type"))
        except zmq.ZMQError as exc:  # e.g. EHOSTUNREACH: the peer is gone
            log.debug("dropped a reply: %s", exc)

    def _forward_events(self) -> None:
        while True:
            try:
                identity, payload = self._events.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._sock.send_multipart([identity, payload], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # vanished or slow peer: drop, never wedge

    # -- requests ---------------------------------------------------------------------------
    def _handle_frames(self, frames: list) -> None:
        identity = frames[0].bytes
        rid = None
        try:
            if len(frames) != 2:
                raise protocol.ProtocolError(protocol.BAD_FRAMES,
                                             f"expected one frame per message, got {len(frames) - 1}")
            peer = _peer_address(frames[1]) if not self._connect else ""
            msg = protocol.validate_request(protocol.decode(frames[1].bytes))
            rid = msg["id"]
            self._dispatch(identity, msg, peer)
        except protocol.ProtocolError as exc:
            self._send(identity, protocol.error(exc.request_id, exc.code, str(exc)))
        except LrsFocusError as exc:  # e.g. BadOptions from AskOptions.from_dict
            self._send(identity, protocol.error(rid, exc.code, str(exc)))
        except Exception as exc:  # never die on one message
            log.error("internal error on a request: %s", traceback.format_exc())
            self._send(identity, protocol.error(rid, protocol.INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _dispatch(self, identity: bytes, msg: dict[str, Any], peer: str) -> None:
        kind, rid = msg["type"], msg["id"]
        if kind == "ping":
            self._send(identity, protocol.pong(rid, time.time()))
        elif kind == "health":
            self._send(identity, self._health(rid))
        elif kind == "status":
            self._send(identity, self._status(rid, msg.get("job_id")))
        elif kind == "ask":
            self._accept(identity, msg)
        elif kind == "cancel":
            self._send(identity, self._cancel(rid, msg["job_id"]))
        elif kind == "shutdown":
            if self._local_only or (not self._connect and is_loopback_address(peer)):
                self._send(identity, protocol.bye(rid))
                self._stopping.set()
            else:
                self._send(identity, protocol.error(rid, protocol.FORBIDDEN, "shutdown is accepted only from loopback"))

    def _health(self, rid: str) -> dict[str, Any]:
        with self._lock:
            queued, running = len(self._queue), self._running is not None
        d = self._describe
        return protocol.health_reply(
            rid, version=__version__, model=str(d.get("model", "")), device=str(d.get("device", "")),
            dtype=str(d.get("dtype", "")), random_weights=bool(d.get("random_weights", False)),
            queue_length=queued, queue_size=self.queue_size, running=running,
            uptime_s=round(time.monotonic() - self._started, 3), worker=self.worker_name, **self.extra_health)

    def _owns(self, job_id: str) -> bool:
        """Could this server have made `job_id`? Workers prefix their ids with their name."""
        if not self.worker_name:
            return True
        prefix = job_id.split("-", 1)[0] if "-" in job_id else ""
        return prefix == self.worker_name

    def _job_state(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is not None:
            info = job.summary()
            if job.state == "queued":
                info["position"] = self._queue.index(job) if job in self._queue else 0
            return info
        if job_id in self._finished:
            return {"job_id": job_id, "state": "finished"}
        return {"job_id": job_id, "state": "unknown" if self._owns(job_id) else "other_worker"}

    def _status(self, rid: str, job_id: Optional[str]) -> dict[str, Any]:
        with self._lock:
            running = self._running.summary() if self._running is not None else None
            queued = [j.job_id for j in self._queue]
            job = self._job_state(job_id) if job_id is not None else None
            done = self._jobs_done
        return protocol.status_reply(rid, running=running, queued=queued, queue_size=self.queue_size,
                                     jobs_done=done, job=job, worker=self.worker_name)

    def _accept(self, identity: bytes, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        options = AskOptions.from_dict(dict(msg.get("options") or {}))  # BadOptions -> error reply
        job_id = f"{self.worker_name}-{uuid.uuid4().hex}" if self.worker_name else uuid.uuid4().hex
        job = Job(job_id, identity, rid, msg["raster"], msg["question"], options)
        with self._lock:
            if self._stopping.is_set():
                reply = protocol.error(rid, protocol.SHUTTING_DOWN, "the server is shutting down")
            elif len(self._queue) >= self.queue_size:
                reply = protocol.error(rid, protocol.BUSY, f"the job queue is full ({self.queue_size} waiting); retry later")
            else:
                self._queue.append(job)
                self._jobs[job_id] = job
                position = len(self._queue) - (0 if self._running is not None else 1)
                reply = protocol.accepted(rid, job_id, position)
                self._wakeup.notify()
        self._send(identity, reply)

    def _cancel(self, rid: Optional[str], job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                state = self._job_state(job_id)["state"]
                if state == "unknown":
                    return protocol.error(rid, protocol.UNKNOWN_JOB, f"no job {job_id!r} on this server", job_id)
                return protocol.cancelling(rid, job_id, "finished" if state == "finished" else "forwarded")
            job.cancel.set()
            was_queued = job.state == "queued"
            if was_queued:
                self._queue.remove(job)
        if was_queued:  # never started: its terminal message goes out now
            self._finish(job, protocol.error(job.request_id, protocol.CANCELLED, "cancelled before it started",
                                             job.job_id), from_loop=True)
            return protocol.cancelling(rid, job_id, "cancelled")
        return protocol.cancelling(rid, job_id, "running")

    def _handle_capture(self) -> None:
        """Multi-worker: apply cancels that the proxy handed to another worker."""
        while True:
            try:
                frames = self._capture.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or b'"cancel"' not in frames[1]:
                continue
            try:
                msg = protocol.validate_request(protocol.decode(frames[1]))
            except protocol.ProtocolError:
                continue
            if msg["type"] == "cancel" and msg["job_id"] in self._jobs:
                self._cancel(None, msg["job_id"])

    # -- the job thread ---------------------------------------------------------------------
    def _finish(self, job: Job, message: dict[str, Any], from_loop: bool = False, push=None) -> bool:
        """Sends a job's terminal message exactly once, whichever thread gets there first."""
        with self._lock:
            if job.state == "finished":
                return False
            job.state = "finished"
            self._jobs.pop(job.job_id, None)
            self._finished[job.job_id] = None
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)
            self._jobs_done += 1
        if from_loop:
            self._send(job.identity, message)
        else:
            push(job.identity, message)
        return True

    def _work(self) -> None:
        events = self._ctx.socket(zmq.PUSH)
        events.linger = 1000
        events.sndhwm = 0
        events.connect(self._events_endpoint)

        def push(identity: bytes, message: dict[str, Any]) -> None:
            try:
                payload = protocol.encode(message)
            except (TypeError, ValueError) as exc:
                payload = protocol.encode(protocol.error(message.get("id"), protocol.INTERNAL,
                                                         f"reply not encodable as JSON: {exc}", message.get("job_id")))
            events.send_multipart([identity, payload])

        try:
            while True:
                with self._lock:
                    while not self._queue and not self._stopping.is_set():
                        self._wakeup.wait(0.5)
                    if not self._queue:
                        return  # stopping and nothing left
                    job = self._queue.popleft()
                    job.state = "running"
                    self._running = job
                try:
                    self._run(job, push)
                finally:
                    with self._lock:
                        self._running = None
        finally:
            events.close()

    def _run(self, job: Job, push) -> None:
        def progress(stage: str, level: Optional[int], fraction: float, message: str = "") -> None:
            job.stage, job.level, job.fraction = stage, level, float(fraction)
            now = time.monotonic()
            key = (stage, level)
            if key == job._last_progress[0] and now - job._last_progress[1] < _PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
                return  # rate limit a chatty engine within a stage; stage/level changes always go out
            job._last_progress = (key, now)
            push(job.identity, protocol.progress(job.request_id, job.job_id, stage, level, fraction, message))

        def should_stop() -> bool:
            return job.cancel.is_set() or self._stopping.is_set()

        try:
            if should_stop():
                raise Cancelled("cancelled before it started")
            document = self.engine.ask(job.raster, job.question, job.options, progress=progress,
                                       should_stop=should_stop, job_id=job.job_id)
            reply = protocol.result(job.request_id, job.job_id, document)
        except Cancelled as exc:
            if self._stopping.is_set() and not job.cancel.is_set():
                reply = protocol.error(job.request_id, protocol.SHUTTING_DOWN, "the server is shutting down", job.job_id)
            else:
                reply = protocol.error(job.request_id, protocol.CANCELLED, str(exc) or "cancelled", job.job_id)
        except Exception as exc:  # a failing job is an error reply, never a dead server
            code = _error_code(exc)
            if code == protocol.INTERNAL:
                log.error("job %s failed: %s", job.job_id, traceback.format_exc())
            reply = protocol.error(job.request_id, code, f"{exc}" if isinstance(exc, LrsFocusError)
                                   else f"{type(exc).__name__}: {exc}", job.job_id)
        self._finish(job, reply, push=push)


# -- several workers behind one endpoint ------------------------------------------------------
class ProxyFrontend:
    """zmq.proxy_steerable between a public ROUTER and the workers' DEALERs, plus a capture PUB.

    Workers are `Server(connect=True)` instances connected to `backend_endpoint` (and to
    `capture_endpoint` for cancels); they can live in this process (`serve_workers`) or elsewhere.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, keys_dir: Optional[str] = None, force_curve: bool = False,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES, context: Optional[zmq.Context] = None,
                 backend_endpoint: Optional[str] = None, capture_endpoint: Optional[str] = None):
        self._ctx = context or zmq.Context.instance()
        tag = uuid.uuid4().hex
        self.backend_endpoint = backend_endpoint or f"inproc://lrs-workers-{tag}"
        self.capture_endpoint = capture_endpoint or f"inproc://lrs-capture-{tag}"
        self._control_endpoint = f"inproc://lrs-control-{tag}"
        self.frontend = self._ctx.socket(zmq.ROUTER)
        self.frontend.router_mandatory = False
        self.frontend.maxmsgsize = max_message_bytes
        self.frontend.linger = 500
        self._auth = secure_socket(self._ctx, self.frontend, endpoint, keys_dir, force_curve)
        self.frontend.bind(endpoint)
        self.endpoint = self.frontend.last_endpoint.decode()
        self.local_only = is_loopback_endpoint(self.endpoint)
        self.backend = self._ctx.socket(zmq.DEALER)
        self.backend.linger = 500
        self.backend.bind(self.backend_endpoint)
        self.capture = self._ctx.socket(zmq.PUB)
        self.capture.linger = 0
        self.capture.bind(self.capture_endpoint)
        self._control = self._ctx.socket(zmq.PAIR)
        self._control.bind(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, name="lrs-proxy", daemon=True)

    def _run(self) -> None:
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_endpoint)
        try:
            zmq.proxy_steerable(self.frontend, self.backend, self.capture, control)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.error("proxy stopped: %s", exc)
        finally:
            control.close()

    def start(self) -> "ProxyFrontend":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join(5)
        for sock in (self._control, self.capture, self.backend, self.frontend):
            sock.close()
        if self._auth is not None:
            self._auth.stop()


def serve_workers(engines: list[AskEngine], endpoint: str = DEFAULT_ENDPOINT, *, queue_size: int = 8,
                  keys_dir: Optional[str] = None, force_curve: bool = False) -> tuple[ProxyFrontend, list[Server]]:
    """Starts a proxy and one worker per engine (e.g. one per GPU); returns them running."""
    ctx = zmq.Context.instance()
    proxy = ProxyFrontend(endpoint, keys_dir=keys_dir, force_curve=force_curve, context=ctx)
    workers = [Server(engine, proxy.backend_endpoint, queue_size=queue_size, connect=True,
                      capture_endpoint=proxy.capture_endpoint, worker_name=f"w{i}",
                      frontend_is_loopback=proxy.local_only, context=ctx,
                      extra_health={"workers": len(engines)}).start()
               for i, engine in enumerate(engines)]
    proxy.start()
    return proxy, workers
