"""The ZeroMQ backend: a ROUTER that queues `ask` jobs and runs them one at a time on an engine.

Why it is shaped this way:
- One model per process (per GPU) and one job at a time: a second concurrent forward pass would
  only fight for the same GPU memory. A bounded queue answers `busy` instead of growing.
- Only the loop thread touches zmq sockets (they are not thread-safe). The job thread hands its
  encoded progress/result frames over a deque plus a socketpair wake-up, not a zmq socket, so a
  job stuck in C code can never keep `Context.term()` waiting: shutdown always ends.
- Nothing a peer sends can end the loop: every frame is handled inside a catch-all, replies are
  encoded by a function that cannot fail, and the loop itself survives any one iteration.
- Every accepted job gets exactly one terminal message (`Server._finish` is the only way out,
  guarded by the job's state), also when it is cancelled, stuck at shutdown or its peer vanished.
- Bounded memory per peer: a send high-water mark, ROUTER_MANDATORY with NOBLOCK, and
  TCP_USER_TIMEOUT (ZMQ_TCP_MAXRT). A peer whose queue is full loses that message; one that
  stopped reading is disconnected by the kernel after `stalled_peer_timeout_s`, which frees what
  was queued for it; either way its jobs are cancelled. Nothing ever blocks on a peer.
- Jobs belong to their client: the CURVE public key when CURVE is on, else the ZeroMQ routing
  identity (a peer may choose its own but cannot learn another's). `status` shows a client only its own jobs, and a `cancel` or
  `status` for anyone else's job gets the same answer as for a job that never existed.
- Raster paths go through the access policy (access.py) in a helper thread bounded by
  `open_timeout_s` before the engine sees them: a slow or blocking open cannot hold the worker.
- Loopback by default; any other interface needs CURVE keys with an allow-list of client keys
  (zmq.auth) and allowed raster roots. MAXMSGSIZE is set on the ROUTER.
- Several workers behind one endpoint: `ProxyFrontend` runs zmq's own proxy (ROUTER frontend,
  DEALER backend). Its capture socket (PUB) lets every worker see every request, so a `cancel`
  reaches the worker that owns the job whichever worker the DEALER handed it to.
"""

from __future__ import annotations

import collections
import gc
import ipaddress
import logging
import os
import socket
import stat
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from . import __version__, protocol
from .engine import AskEngine, AskOptions
from .errors import BadOptions, Cancelled, LrsFocusError, RasterUnreadable

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# file names of the zmq.auth layout, not secrets:
SERVER_SECRET_FILE = "server.key_secret"  # nosec B105
CLIENTS_DIR = "clients"
_POLL_MS = 100
_PROGRESS_MIN_INTERVAL_S = 0.05
_ROUTER_LINGER_MS = 500  # bounded: time for the last `shutting_down` replies to leave at close
_RCVHWM = 64  # requests queued per peer: at most 64 x MAX_MESSAGE_BYTES = 64 MiB; then TCP pushes back
_BURST = 256  # requests handled per poll, at most one send_hwm's worth of replies


class ServiceConfigError(LrsFocusError):
    """An unsafe or impossible server configuration (e.g. a public bind without CURVE keys)."""

    code = "service_config"


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

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_question_tokens", "send_hwm", "max_stuck_opens"):
            if int(getattr(self, name)) < 1:
                raise ServiceConfigError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        if not (self.open_timeout_s > 0 and self.shutdown_timeout_s > 0 and self.stalled_peer_timeout_s > 0):
            raise ServiceConfigError("timeouts must be positive")


# -- endpoint and key checks ----------------------------------------------------------------
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
    """(public, secret) from `server.key_secret` (made by `lrs-focus keys` / zmq.auth)."""
    path = Path(keys_dir) / SERVER_SECRET_FILE
    if not path.is_file():
        raise ServiceConfigError(f"no CURVE server key at {path} (make one with `lrs-focus keys {keys_dir}`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ServiceConfigError(f"{path}: not a CURVE certificate ({exc})") from None
    if not secret:
        raise ServiceConfigError(f"{path} holds no secret key")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users: chmod 600 it", path)
    return public, secret


def client_keys(keys_dir: str | os.PathLike) -> list[Path]:
    """The allow-list: public keys in DIR/clients/*.key."""
    folder = Path(keys_dir) / CLIENTS_DIR
    return sorted(folder.glob("*.key")) if folder.is_dir() else []


def bind(sock: "zmq.Socket", endpoint: str) -> None:
    """Bind, or say in words why not (a port in use, a bad address), instead of a zmq traceback."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ServiceConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from exc


def check_endpoint_free(endpoint: str) -> None:
    """Bind and release `endpoint` once, so that `serve` fails before loading a 7B model, not after."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    try:
        bind(sock, endpoint)
    finally:
        sock.close()


def check_security(endpoint: str, keys_dir: Optional[str], force_curve: bool = False,
                   roots: tuple = (), check_roots: bool = False) -> None:
    """Raises ServiceConfigError unless the configuration is safe for `endpoint`.

    Off loopback: CURVE keys with a non-empty allow-list of client keys (the server's public key
    alone must not be enough to get in) and, when `check_roots`, allowed raster roots.
    """
    public = not is_loopback_endpoint(endpoint)
    if keys_dir is None:
        if force_curve:
            raise ServiceConfigError("CURVE was required but no keys directory was given")
        if public:
            raise ServiceConfigError(
                f"refusing to listen on {endpoint} without CURVE keys: pass --keys-dir (make them with "
                "`lrs-focus keys DIR`, see docs/service.md) or bind 127.0.0.1")
    else:
        load_server_keys(keys_dir)
        if public and not client_keys(keys_dir):
            raise ServiceConfigError(
                f"refusing to listen on {endpoint} without an allow-list of client keys: put the clients' public "
                f"keys in {Path(keys_dir) / CLIENTS_DIR}/*.key (`lrs-focus keys` makes one)")
    if public and check_roots and not roots:
        raise ServiceConfigError(f"refusing to listen on {endpoint} without --allow-root: off loopback the "
                                 "rasters clients may read must be confined to folders")


def _abort_stalled_peers(sock: zmq.Socket, timeout_s: float) -> None:
    """TCP_USER_TIMEOUT (ZMQ_TCP_MAXRT; Linux, Windows): the kernel aborts a connection whose
    sent data stays unacknowledged for `timeout_s`, which includes a peer that stopped reading
    (zero window). ZeroMQ then frees everything queued for it and later sends to it fail, which
    cancels its jobs. A client that reads, even slowly, is never affected; its own I/O thread
    drains the socket whatever the application does."""
    try:
        sock.setsockopt(zmq.TCP_MAXRT, max(1, int(timeout_s * 1000)))
    except (zmq.ZMQError, AttributeError):  # pragma: no cover - platform without it
        log.warning("TCP_MAXRT is not supported here: a peer that stops reading keeps its replies queued")


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, endpoint: str, keys_dir: Optional[str],
                  force_curve: bool) -> Optional[ThreadAuthenticator]:
    """Applies CURVE (or refuses a public endpoint without it); returns the authenticator to stop."""
    check_security(endpoint, keys_dir, force_curve)
    if keys_dir is None:
        return None
    public, secret = load_server_keys(keys_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("lrs_focus.service.auth"))
    auth.start()
    if client_keys(keys_dir):
        auth.configure_curve(domain="*", location=str(Path(keys_dir) / CLIENTS_DIR))
    else:  # loopback only (check_security): any client that knows the server's public key
        log.warning("CURVE without an allow-list of client keys: any client holding server.key may connect")
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


# -- jobs -------------------------------------------------------------------------------------
class Job:
    __slots__ = ("job_id", "identity", "owner", "request_id", "raster", "question", "options", "cancel",
                 "state", "stage", "level", "fraction", "accepted_at", "_last_progress")

    def __init__(self, job_id: str, identity: bytes, owner: bytes, request_id: str, raster: str, question: str,
                 options: AskOptions):
        self.job_id, self.identity, self.owner, self.request_id = job_id, identity, owner, request_id
        self.raster, self.question, self.options = raster, question, options
        self.cancel = threading.Event()
        self.state = "queued"  # queued -> running -> finished (each transition under Server._lock)
        self.stage, self.level, self.fraction = "queued", None, 0.0
        self.accepted_at = time.monotonic()
        self._last_progress: tuple[tuple, float] = ((), 0.0)

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "stage": self.stage, "level": self.level,
                "fraction": self.fraction}


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (by class name: no torch import here) or a
    RuntimeError that says so (older torch, other backends)."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, LrsFocusError):
        return exc.code
    if is_out_of_memory(exc):
        return protocol.OUT_OF_MEMORY
    return protocol.INTERNAL


def _release_memory() -> None:
    """After an out-of-memory: drop garbage and, when torch is already loaded, its CUDA cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # never let cleaning up fail a reply  # nosec B110
        pass


def _peer_address(frame: zmq.Frame) -> str:
    """The sender's IP for tcp (used to allow `shutdown` from loopback only); "" if unknown."""
    try:
        return frame.get("Peer-Address") or ""
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeError):
        return ""


def encode_reply(message: dict[str, Any]) -> bytes:
    """protocol.encode that cannot fail: an unencodable reply (NaN, a stray object) becomes an
    `internal` error about the same request and job."""
    try:
        return protocol.encode(message)
    except Exception as exc:
        rid = message.get("id") if isinstance(message.get("id"), str) else None
        job_id = message.get("job_id") if isinstance(message.get("job_id"), str) else None
        try:
            return protocol.encode(protocol.error(rid, protocol.INTERNAL, f"reply not encodable as JSON: "
                                                  f"{type(exc).__name__}", job_id))
        except Exception:  # pragma: no cover - the builders only make JSON-safe values
            return protocol.encode(protocol.error(None, protocol.INTERNAL, "reply not encodable as JSON"))


class _Outbox:
    """Job thread -> loop hand-over: a deque, plus one byte on a socketpair to wake the poller.

    Deliberately not a zmq socket: a job thread that never returns must not hold one open.
    """

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)

    def fileno(self) -> int:
        return self._rx.fileno()

    def put(self, item) -> None:
        self._items.append(item)
        try:
            self._tx.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed at shutdown
            pass

    def drain(self):
        try:
            while self._rx.recv(4096):
                pass
        except OSError:
            pass
        while True:
            try:
                yield self._items.popleft()
            except IndexError:
                return

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


class _BoundedOpens:
    """Runs the raster admission (policy + first open) in a helper thread the job may abandon.

    A FIFO is refused by the policy before any open; this bounds what the policy cannot see
    (a hung network mount, a slow remote server). At most `limit` abandoned calls may still be
    running; past that, asks fail at once instead of piling up threads.
    """

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def run(self, fn: Callable[[str], str], raster: str, timeout_s: float, should_stop: Callable[[], bool]) -> str:
        if not self._slots.acquire(blocking=False):
            raise RasterUnreadable("earlier raster opens on this server are still stuck; try again later")
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = fn(raster)
            except BaseException as exc:  # handed to the job thread below
                box["error"] = exc
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=target, name="lrs-open", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.05):
            if should_stop():
                raise Cancelled("cancelled while opening the raster")
            if time.monotonic() > deadline:
                raise RasterUnreadable(f"opening the raster took longer than {timeout_s:g} s; gave up")
        if "error" in box:
            raise box["error"]
        return box["value"]


def _probe_open(path: str) -> None:
    """Open once with GDAL (errors are the engine's to report): the slow part, bounded."""
    try:
        from osgeo import gdal

        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        del dataset  # closes it
    except Exception:  # nosec B110: the engine opens again and reports the precise error
        pass


# -- the server -------------------------------------------------------------------------------
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
        if queue_size < 1:
            raise ServiceConfigError(f"queue size must be >= 1, not {queue_size}")
        self.engine = engine
        self.access = access
        self.limits = limits or ServiceLimits()
        self.allow_shutdown = allow_shutdown  # False: `shutdown` requests are always `forbidden`
        self.requested_endpoint = endpoint
        self.endpoint = endpoint  # the bound one (a "*" port is resolved after binding)
        self.queue_size = queue_size
        self.worker_name = worker_name
        self.extra_health = dict(extra_health or {})
        self.crashed: Optional[str] = None  # set if the loop ever ends by an error (serve exits 1)
        self._connect = connect
        self._curve = keys_dir is not None
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._auth = None
        self._started = time.monotonic()
        self._describe = dict(engine.describe())
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}  # queued and running jobs
        self._finished: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # job id -> owner
        self._running: Optional[Job] = None
        self._jobs_done = 0
        self._dropped = 0  # replies a peer could not take (not reading, or gone)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._outbox = _Outbox()
        self._opens = _BoundedOpens(self.limits.max_stuck_opens)

        self._sock = self._ctx.socket(zmq.DEALER if connect else zmq.ROUTER)
        self._sock.linger = _ROUTER_LINGER_MS
        self._sock.sndhwm = self.limits.send_hwm
        self._sock.rcvhwm = _RCVHWM
        self._capture = None
        try:
            if connect:
                self._sock.connect(endpoint)
                self._local_only = bool(frontend_is_loopback)
            else:
                # full or vanished peers raise instead of silently queueing/dropping: see _send
                self._sock.router_mandatory = True
                self._sock.maxmsgsize = max_message_bytes
                _abort_stalled_peers(self._sock, self.limits.stalled_peer_timeout_s)
                check_security(endpoint, keys_dir, force_curve, getattr(access, "roots", ()),
                               check_roots=access is not None)
                self._auth = secure_socket(self._ctx, self._sock, endpoint, keys_dir, force_curve)
                bind(self._sock, endpoint)
                self.endpoint = self._sock.last_endpoint.decode()
                self._local_only = is_loopback_endpoint(self.endpoint)
            if capture_endpoint:
                self._capture = self._ctx.socket(zmq.SUB)
                self._capture.linger = 0
                self._capture.setsockopt(zmq.SUBSCRIBE, b"")
                self._capture.connect(capture_endpoint)
        except BaseException:
            self._close()
            raise
        self._worker = threading.Thread(target=self._work, name=f"lrs-job{worker_name}", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.serve_forever, name=f"lrs-serve{self.worker_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops serving; returns within about shutdown_timeout_s + 1 s whatever the job does."""
        self._stopping.set()
        with self._lock:
            self._wakeup.notify_all()
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
        log.info("lrs-focus service%s on %s (model %s on %s)", f" {self.worker_name}" if self.worker_name else "", self.endpoint,
                 self._describe.get("model"), self._describe.get("device"))
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._outbox.fileno(), zmq.POLLIN)
        if self._capture is not None:
            poller.register(self._capture, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
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
        ready = dict(poller.poll(_POLL_MS))
        if self._outbox.fileno() in ready:
            self._flush_outbox()
        if self._sock in ready:
            for _ in range(_BURST):  # bounded burst, then look at job messages again
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle_frames(frames)
        if self._capture is not None and self._capture in ready:
            self._handle_capture()

    def _shutdown_jobs(self) -> None:
        """Every accepted job still ends with exactly one terminal message, even on shutdown."""
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            running = self._running  # stops at its next check (should_stop sees _stopping): shutting_down
            self._wakeup.notify_all()
        for job in queued:
            self._finish(job, self._shutting_down(job))
        if self._worker.is_alive():
            self._worker.join(self.limits.shutdown_timeout_s)
        if running is not None and self._finish(running, self._shutting_down(running)):
            log.warning("job %s did not stop within %g s; it was abandoned", running.job_id,
                        self.limits.shutdown_timeout_s)
        self._flush_outbox()

    @staticmethod
    def _shutting_down(job: Job) -> dict[str, Any]:
        return protocol.error(job.request_id, protocol.SHUTTING_DOWN, "the server is shutting down", job.job_id)

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
        self._send(identity, encode_reply(message))

    def _flush_outbox(self) -> None:
        for identity, payload in self._outbox.drain():
            self._send(identity, payload)

    def _cancel_peer_jobs(self, identity: bytes, why: str) -> None:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.identity == identity and not j.cancel.is_set()]
        for job in jobs:
            log.warning("cancelling job %s: its client %s", job.job_id, why)
            self._cancel_job(job, "cancelled: the client " + why)

    # -- requests ---------------------------------------------------------------------------
    def _owner(self, frames: list) -> bytes:
        """Who a request comes from: its CURVE public key when CURVE is on, else its routing id."""
        if self._curve and not self._connect:
            try:
                user = frames[-1].get("User-Id")
            except (zmq.ZMQError, AttributeError, TypeError, UnicodeError):
                user = None
            if user:
                return b"key:" + user.encode("ascii", "replace")
        return b"id:" + frames[0].bytes

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
            self._dispatch(identity, self._owner(frames), msg, peer)
        except protocol.ProtocolError as exc:
            self._reply(identity, protocol.error(exc.request_id, exc.code, str(exc)))
        except LrsFocusError as exc:  # e.g. BadOptions from AskOptions.from_dict
            self._reply(identity, protocol.error(rid, exc.code, str(exc)))
        except Exception as exc:  # never die on one message
            log.error("internal error on a request: %s", traceback.format_exc())
            self._reply(identity, protocol.error(rid, protocol.INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _dispatch(self, identity: bytes, owner: bytes, msg: dict[str, Any], peer: str) -> None:
        kind, rid = msg["type"], msg["id"]
        if kind == "ping":
            self._reply(identity, protocol.pong(rid, time.time()))
        elif kind == "health":
            self._reply(identity, self._health(rid))
        elif kind == "status":
            self._reply(identity, self._status(rid, owner, msg.get("job_id")))
        elif kind == "ask":
            self._accept(identity, owner, msg)
        elif kind == "cancel":
            self._reply(identity, self._cancel(rid, owner, msg["job_id"]))
        elif kind == "shutdown":
            if self.allow_shutdown and (self._local_only or (not self._connect and is_loopback_address(peer))):
                self._reply(identity, protocol.bye(rid))
                self._stopping.set()
            else:
                self._reply(identity, protocol.error(rid, protocol.FORBIDDEN, "shutdown is accepted only from loopback"
                                                     if self.allow_shutdown else "this server does not accept shutdown"))

    def _health(self, rid: str) -> dict[str, Any]:
        with self._lock:
            queued, running = len(self._queue), self._running is not None
        d = self._describe
        return protocol.health_reply(
            rid, version=__version__, model=str(d.get("model", "")), device=str(d.get("device", "")),
            dtype=str(d.get("dtype", "")), random_weights=bool(d.get("random_weights", False)),
            queue_length=queued, queue_size=self.queue_size, running=running,
            uptime_s=round(time.monotonic() - self._started, 3), worker=self.worker_name,
            dropped_replies=self._dropped, **self.extra_health)

    def _owns(self, job_id: str) -> bool:
        """Could this server have made `job_id`? Workers prefix their ids with their name."""
        if not self.worker_name:
            return True
        prefix = job_id.split("-", 1)[0] if "-" in job_id else ""
        return prefix == self.worker_name

    def _job_state(self, job_id: str, owner: bytes) -> dict[str, Any]:
        """Another client's job looks exactly like one that never existed."""
        job = self._jobs.get(job_id)
        if job is not None and job.owner == owner:
            info = job.summary()
            if job.state == "queued":
                info["position"] = self._queue.index(job) if job in self._queue else 0
            return info
        if job is None and self._finished.get(job_id) == owner:
            return {"job_id": job_id, "state": "finished"}
        return {"job_id": job_id, "state": "unknown" if self._owns(job_id) else "other_worker"}

    def _status(self, rid: str, owner: bytes, job_id: Optional[str]) -> dict[str, Any]:
        with self._lock:
            mine = self._running is not None and self._running.owner == owner
            running = self._running.summary() if mine else None
            queued = [j.job_id for j in self._queue if j.owner == owner]
            job = self._job_state(job_id, owner) if job_id is not None else None
            done = self._jobs_done
        return protocol.status_reply(rid, running=running, queued=queued, queue_size=self.queue_size,
                                     jobs_done=done, job=job, worker=self.worker_name)

    def _accept(self, identity: bytes, owner: bytes, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        asked = dict(msg.get("options") or {})
        options = AskOptions.from_dict(asked)  # BadOptions -> error reply
        if "max_new_tokens" not in asked:  # the default follows the server's maximum
            options.max_new_tokens = min(int(options.max_new_tokens), self.limits.max_new_tokens)
        if int(options.max_new_tokens) > self.limits.max_new_tokens:
            raise BadOptions(f"max_new_tokens {options.max_new_tokens} is above this server's limit of "
                             f"{self.limits.max_new_tokens}")
        job_id = f"{self.worker_name}-{uuid.uuid4().hex}" if self.worker_name else uuid.uuid4().hex
        job = Job(job_id, identity, owner, rid, msg["raster"], msg["question"], options)
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
        self._reply(identity, reply)

    def _cancel(self, rid: Optional[str], owner: bytes, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            state = self._job_state(job_id, owner)["state"]
        if state == "unknown":
            return protocol.error(rid, protocol.UNKNOWN_JOB, f"no job {job_id!r} of yours on this server", job_id)
        if state in ("finished", "other_worker"):
            return protocol.cancelling(rid, job_id, "finished" if state == "finished" else "forwarded")
        return protocol.cancelling(rid, job_id, self._cancel_job(job, "cancelled before it started"))

    def _cancel_job(self, job: Job, queued_message: str) -> str:
        """Flags a job; a queued one ends at once (its terminal goes out now). Returns its state."""
        with self._lock:
            job.cancel.set()
            was_queued = job.state == "queued" and job in self._queue
            if was_queued:
                self._queue.remove(job)
            finished = job.state == "finished"
        if was_queued:
            self._finish(job, protocol.error(job.request_id, protocol.CANCELLED, queued_message, job.job_id))
            return "cancelled"
        return "finished" if finished else "running"

    def _handle_capture(self) -> None:
        """Multi-worker: apply cancels that the proxy handed to another worker (owner checked)."""
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
            if msg["type"] != "cancel":
                continue
            with self._lock:
                job = self._jobs.get(msg["job_id"])
            if job is not None and job.owner == b"id:" + frames[0]:
                self._cancel_job(job, "cancelled before it started")

    # -- the job thread ---------------------------------------------------------------------
    def _finish(self, job: Job, message: dict[str, Any]) -> bool:
        """Sends a job's terminal message exactly once, whichever thread gets there first."""
        with self._lock:
            if job.state == "finished":
                return False
            job.state = "finished"
            if self._running is job:  # health/status right after the terminal must not show it running
                self._running = None
            self._jobs.pop(job.job_id, None)
            self._finished[job.job_id] = job.owner
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)
            self._jobs_done += 1
        self._outbox.put((job.identity, encode_reply(message)))  # the loop sends it (any thread may finish a job)
        return True

    def _work(self) -> None:
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
                self._run(job)
            except BaseException:  # _run answers every failure; this is the last line of defence
                log.error("job %s: unexpected failure: %s", job.job_id, traceback.format_exc())
                self._finish(job, protocol.error(job.request_id, protocol.INTERNAL, "internal error", job.job_id))
            finally:
                with self._lock:
                    self._running = None

    def _question_tokens(self, question: str) -> Optional[int]:
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            return None
        return len(tokenizer(question)["input_ids"])

    def _admit(self, raster: str) -> str:
        """The access policy, then a first open: runs in a helper thread (see _BoundedOpens)."""
        path = self.access.check(raster)
        _probe_open(path)
        return path

    def _run(self, job: Job) -> None:
        def progress(stage: str, level: Optional[int], fraction: float, message: str = "") -> None:
            job.stage, job.level, job.fraction = stage, level, float(fraction)
            now = time.monotonic()
            key = (stage, level)
            if key == job._last_progress[0] and now - job._last_progress[1] < _PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
                return  # rate limit a chatty engine within a stage; stage/level changes always go out
            job._last_progress = (key, now)
            self._outbox.put((job.identity, encode_reply(protocol.progress(job.request_id, job.job_id, stage, level,
                                                                           fraction, message))))

        def should_stop() -> bool:
            return job.cancel.is_set() or self._stopping.is_set()

        try:
            if should_stop():
                raise Cancelled("cancelled before it started")
            n_tokens = self._question_tokens(job.question)
            if n_tokens is not None and n_tokens > self.limits.max_question_tokens:
                raise protocol.ProtocolError(protocol.BAD_REQUEST, f"the question has {n_tokens} tokens; this server "
                                             f"accepts at most {self.limits.max_question_tokens}")
            raster = job.raster
            if self.access is not None:
                raster = self._opens.run(self._admit, raster, self.limits.open_timeout_s, should_stop)
            document = self.engine.ask(raster, job.question, job.options, progress=progress,
                                       should_stop=should_stop, job_id=job.job_id)
            reply = protocol.result(job.request_id, job.job_id, document)
        except Cancelled as exc:
            if self._stopping.is_set() and not job.cancel.is_set():
                reply = self._shutting_down(job)
            else:
                reply = protocol.error(job.request_id, protocol.CANCELLED, str(exc) or "cancelled", job.job_id)
        except protocol.ProtocolError as exc:
            reply = protocol.error(job.request_id, exc.code, str(exc), job.job_id)
        except Exception as exc:  # a failing job is an error reply, never a dead server
            code = _error_code(exc)
            if code == protocol.OUT_OF_MEMORY:
                log.warning("job %s ran out of memory: %s", job.job_id, exc)
            elif code == protocol.INTERNAL:
                log.error("job %s failed: %s", job.job_id, traceback.format_exc())
            message = str(exc) if isinstance(exc, LrsFocusError) else f"{type(exc).__name__}: {exc}"
            reply = protocol.error(job.request_id, code, message, job.job_id)
            del exc  # the traceback pins the failed job's frames (and tensors)
            if code == protocol.OUT_OF_MEMORY:
                _release_memory()
        self._finish(job, reply)


# -- several workers behind one endpoint ------------------------------------------------------
class ProxyFrontend:
    """zmq.proxy_steerable between a public ROUTER and the workers' DEALERs, plus a capture PUB.

    Workers are `Server(connect=True)` instances connected to `backend_endpoint` (and to
    `capture_endpoint` for cancels); they can live in this process (`serve_workers`) or elsewhere.
    zmq's proxy stops on a send error, so its frontend keeps ROUTER_MANDATORY off: replies to a
    full or vanished peer are dropped there (low send high-water mark).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, keys_dir: Optional[str] = None, force_curve: bool = False,
                 max_message_bytes: int = protocol.MAX_MESSAGE_BYTES, context: Optional[zmq.Context] = None,
                 backend_endpoint: Optional[str] = None, capture_endpoint: Optional[str] = None,
                 send_hwm: int = ServiceLimits.send_hwm,
                 stalled_peer_timeout_s: float = ServiceLimits.stalled_peer_timeout_s):
        self._ctx = context or zmq.Context.instance()
        tag = uuid.uuid4().hex
        self.backend_endpoint = backend_endpoint or f"inproc://lrs-workers-{tag}"
        self.capture_endpoint = capture_endpoint or f"inproc://lrs-capture-{tag}"
        self._control_endpoint = f"inproc://lrs-control-{tag}"
        self.frontend = self._ctx.socket(zmq.ROUTER)
        self.frontend.router_mandatory = False
        self.frontend.maxmsgsize = max_message_bytes
        self.frontend.linger = _ROUTER_LINGER_MS
        self.frontend.sndhwm = send_hwm
        self.frontend.rcvhwm = _RCVHWM
        _abort_stalled_peers(self.frontend, stalled_peer_timeout_s)
        self._auth = secure_socket(self._ctx, self.frontend, endpoint, keys_dir, force_curve)
        bind(self.frontend, endpoint)
        self.endpoint = self.frontend.last_endpoint.decode()
        self.local_only = is_loopback_endpoint(self.endpoint)
        self.backend = self._ctx.socket(zmq.DEALER)
        self.backend.linger = 0
        self.backend.bind(self.backend_endpoint)
        self.capture = self._ctx.socket(zmq.PUB)
        self.capture.linger = 0
        self.capture.bind(self.capture_endpoint)
        self._control = self._ctx.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, name="lrs-proxy", daemon=True)

    def _run(self) -> None:
        control = self._ctx.socket(zmq.PAIR)
        control.linger = 0
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
