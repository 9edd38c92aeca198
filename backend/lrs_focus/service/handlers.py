"""What each request does: one handler per message type, looked up in a table.

Owns the decode -> owner -> handler -> reply path and the one place where an exception becomes an
error code (`Handlers.handle` never raises), plus the capture socket's forwarded cancels. A
handler gets the validated message and who sent it and returns the reply; it never touches a
socket (the loop sends what it returns). May call: protocol, jobs (JobBook), limits, the engine's
`AskOptions` (to check options before a job is accepted).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from .. import __version__, protocol
from ..engine import AskOptions
from ..errors import BadOptions, LrsFocusError
from .jobs import Job, JobBook
from .limits import ServiceLimits
from .security import is_loopback_address

log = logging.getLogger("lrs_focus.service")

Reply = dict[str, Any]


@dataclass
class Context:
    """What the handlers know of their server (set once by it, read-only here)."""

    describe: dict[str, Any]
    limits: ServiceLimits
    worker_name: str = ""
    extra_health: dict[str, Any] = field(default_factory=dict)
    allow_shutdown: bool = True
    local_only: bool = True  # the endpoint clients reach is loopback
    behind_proxy: bool = False  # a worker: frames come from the proxy, peer addresses and keys are unknown
    curve: bool = False
    started: float = field(default_factory=time.monotonic)
    request_stop: Callable[[], None] = lambda: None
    dropped_replies: Callable[[], int] = lambda: 0


def peer_address(frame: zmq.Frame) -> str:
    """The sender's IP for tcp (used to allow `shutdown` from loopback only); "" if unknown."""
    try:
        return frame.get("Peer-Address") or ""
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeError):
        return ""


class Handlers:
    def __init__(self, book: JobBook, ctx: Context):
        self.book = book
        self.ctx = ctx
        self.table: dict[str, Callable[[dict[str, Any], bytes, bytes, str], Reply]] = {
            "ping": self.ping, "health": self.health, "status": self.status, "ask": self.ask,
            "cancel": self.cancel, "shutdown": self.shutdown,
        }

    # -- frames in, one reply out ---------------------------------------------------------------
    def owner(self, frames: list) -> bytes:
        """Who a request comes from: its CURVE public key when CURVE is on, else its routing id."""
        if self.ctx.curve and not self.ctx.behind_proxy:
            try:
                user = frames[-1].get("User-Id")
            except (zmq.ZMQError, AttributeError, TypeError, UnicodeError):
                user = None
            if user:
                return b"key:" + user.encode("ascii", "replace")
        return b"id:" + frames[0].bytes

    def handle(self, frames: list) -> Reply:
        """The reply to one received message ([identity, frame]); never raises."""
        rid = None
        try:
            if len(frames) != 2:
                raise protocol.ProtocolError(protocol.BAD_FRAMES,
                                             f"expected one frame per message, got {len(frames) - 1}")
            peer = peer_address(frames[1]) if not self.ctx.behind_proxy else ""
            msg = protocol.validate_request(protocol.decode(frames[1].bytes))
            rid = msg["id"]
            return self.table[msg["type"]](msg, self.owner(frames), frames[0].bytes, peer)
        except protocol.ProtocolError as exc:
            return protocol.error(exc.request_id, exc.code, str(exc))
        except LrsFocusError as exc:  # e.g. BadOptions from AskOptions.from_dict
            return protocol.error(rid, exc.code, str(exc))
        except Exception as exc:  # never die on one message
            log.error("internal error on a request: %s", traceback.format_exc())
            return protocol.error(rid, protocol.INTERNAL, f"{type(exc).__name__}: {exc}")

    def capture(self, frames: list) -> None:
        """Multi-worker: apply a cancel that the proxy handed to another worker (owner checked)."""
        if len(frames) != 2 or b'"cancel"' not in frames[1]:
            return
        try:
            msg = protocol.validate_request(protocol.decode(frames[1]))
        except protocol.ProtocolError:
            return
        if msg["type"] == "cancel":
            self.book.cancel_forwarded(b"id:" + frames[0], msg["job_id"])

    # -- the handlers ---------------------------------------------------------------------------
    def ping(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        return protocol.pong(msg["id"], time.time())

    def health(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        queued, running = self.book.load()
        d, ctx = self.ctx.describe, self.ctx
        return protocol.health_reply(
            msg["id"], version=__version__, model=str(d.get("model", "")), device=str(d.get("device", "")),
            dtype=str(d.get("dtype", "")), random_weights=bool(d.get("random_weights", False)),
            queue_length=queued, queue_size=self.book.queue_size, running=running,
            uptime_s=round(time.monotonic() - ctx.started, 3), worker=ctx.worker_name,
            dropped_replies=ctx.dropped_replies(),
            **({"confinement": d["confinement"]} if "confinement" in d else {}), **ctx.extra_health,
            **({"answer_server": d["answer_server"]} if d.get("answer_server") else {}))

    def status(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        return self.book.status_reply(msg["id"], owner, msg.get("job_id"))

    def ask(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        limit = self.ctx.limits.max_new_tokens
        asked = dict(msg.get("options") or {})
        options = AskOptions.from_dict(asked)  # BadOptions -> error reply
        if "max_new_tokens" not in asked:  # the default follows the server's maximum
            options.max_new_tokens = min(int(options.max_new_tokens), limit)
        if int(options.max_new_tokens) > limit:
            raise BadOptions(f"max_new_tokens {options.max_new_tokens} is above this server's limit of {limit}")
        job = Job(self.book.new_job_id(), identity, owner, msg["id"], msg["raster"], msg["question"], options)
        return self.book.submit(job)

    def cancel(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        return self.book.cancel_request(msg["id"], owner, msg["job_id"])

    def shutdown(self, msg: dict[str, Any], owner: bytes, identity: bytes, peer: str) -> Reply:
        ctx = self.ctx
        if ctx.allow_shutdown and (ctx.local_only or (not ctx.behind_proxy and is_loopback_address(peer))):
            ctx.request_stop()
            return protocol.bye(msg["id"])
        return protocol.error(msg["id"], protocol.FORBIDDEN, "shutdown is accepted only from loopback"
                              if ctx.allow_shutdown else "this server does not accept shutdown")

