"""The job thread: runs one queued job at a time on the engine and ends it through the job book.

Owns `JobRunner` (take a job, check its question length, admit its raster in a bounded helper
thread, call `engine.ask` with rate-limited progress and a stop check, map any failure to an
error code, strip what a result must not tell other clients), `BoundedOpens` and the
out-of-memory handling. May call: the engine (through the `AskEngine` methods), the access
policy, jobs (JobBook), outbox (progress frames). Never touches a zmq socket.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from .. import protocol
from ..engine import AskEngine
from ..errors import Cancelled, LrsFocusError, RasterUnreadable
from .jobs import Job, JobBook, shutting_down
from .limits import PROGRESS_MIN_INTERVAL_S, ServiceLimits
from .outbox import encode_reply

log = logging.getLogger("lrs_focus.service")

#: Result counts that describe the server's state rather than the answer: `tiles_from_cache`
#: tells a client which tiles *other* clients asked about, so it never leaves the server.
PRIVATE_COUNTS = ("tiles_from_cache",)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (by class name: no torch import here) or a
    RuntimeError that says so (older torch, other backends)."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def error_code(exc: BaseException) -> str:
    if isinstance(exc, LrsFocusError):
        return exc.code
    if is_out_of_memory(exc):
        return protocol.OUT_OF_MEMORY
    return protocol.INTERNAL


def release_memory() -> None:
    """After an out-of-memory: drop garbage and, when torch is already loaded, its CUDA cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # never let cleaning up fail a reply  # nosec B110
        pass


def public_result(document: Any) -> Any:
    """The result as a client may see it: without PRIVATE_COUNTS (a shallow copy; the rest as is)."""
    if not isinstance(document, dict) or not isinstance(document.get("counts"), dict):
        return document
    if not any(k in document["counts"] for k in PRIVATE_COUNTS):
        return document
    out = dict(document)
    out["counts"] = {k: v for k, v in document["counts"].items() if k not in PRIVATE_COUNTS}
    return out


class BoundedOpens:
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


def probe_open(path: str) -> None:
    """Open once with GDAL (errors are the engine's to report): the slow part, bounded."""
    try:
        from osgeo import gdal

        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        del dataset  # closes it
    except Exception:  # nosec B110: the engine opens again and reports the precise error
        pass


class JobRunner:
    """One worker's job thread (`start()`); it ends when the book is stopping and empty."""

    def __init__(self, engine: AskEngine, book: JobBook, limits: ServiceLimits, access: Any = None,
                 name: str = "lrs-job"):
        self.engine = engine
        self.book = book
        self.limits = limits
        self.access = access
        self._opens = BoundedOpens(limits.max_stuck_opens)
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self.book.take()
            if job is None:
                return  # stopping and nothing left
            try:
                self._run(job)
            except BaseException:  # _run answers every failure; this is the last line of defence
                log.error("job %s: unexpected failure: %s", job.job_id, traceback.format_exc())
                self.book.finish(job, protocol.error(job.request_id, protocol.INTERNAL, "internal error", job.job_id))
            finally:
                self.book.release(job)

    def _question_tokens(self, question: str) -> Optional[int]:
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            return None
        return len(tokenizer(question)["input_ids"])

    def _admit(self, raster: str) -> str:
        """The access policy, then a first open: runs in a helper thread (see BoundedOpens). An engine
        with reader processes does neither here: its reader checks the policy and opens, confined
        and killable (readers/child.py), so no attacker's file is ever opened in this process."""
        if getattr(self.engine, "readers", None) is not None:
            return raster
        path = self.access.check(raster)
        probe_open(path)
        return path

    def _progress_fn(self, job: Job):
        outbox = self.book.outbox

        def progress(stage: str, level: Optional[int], fraction: float, message: str = "",
                     overall: Optional[float] = None) -> None:
            job.stage, job.level, job.fraction = stage, level, float(fraction)
            now = time.monotonic()
            key = (stage, level)
            if key == job.last_progress[0] and now - job.last_progress[1] < PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
                return  # rate limit a chatty engine within a stage; stage/level changes always go out
            job.last_progress = (key, now)
            outbox.put((job.identity, encode_reply(protocol.progress(job.request_id, job.job_id, stage, level,
                                                                     fraction, message, overall))))

        return progress

    def _run(self, job: Job) -> None:
        deadline = time.monotonic() + self.limits.job_timeout_s
        late = threading.Event()

        def should_stop() -> bool:
            if time.monotonic() > deadline:
                late.set()  # every check from here on stops the job (and kills its raster reader)
            return late.is_set() or self.book.should_stop(job)

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
            document = self.engine.ask(raster, job.question, job.options, progress=self._progress_fn(job),
                                       should_stop=should_stop, job_id=job.job_id)
            reply = protocol.result(job.request_id, job.job_id, public_result(document))
        except Cancelled as exc:
            if late.is_set() and not job.cancel.is_set():
                reply = protocol.error(job.request_id, protocol.JOB_TIMEOUT, f"the job ran longer than this server's "
                                       f"--job-timeout of {self.limits.job_timeout_s:g} s and was stopped", job.job_id)
            elif self.book.stopping.is_set() and not job.cancel.is_set():
                reply = shutting_down(job)
            else:
                reply = protocol.error(job.request_id, protocol.CANCELLED, str(exc) or "cancelled", job.job_id)
        except protocol.ProtocolError as exc:
            reply = protocol.error(job.request_id, exc.code, str(exc), job.job_id)
        except Exception as exc:  # a failing job is an error reply, never a dead server
            code = error_code(exc)
            if code == protocol.OUT_OF_MEMORY:
                log.warning("job %s ran out of memory: %s", job.job_id, exc)
            elif code == protocol.INTERNAL:
                log.error("job %s failed: %s", job.job_id, traceback.format_exc())
            message = str(exc) if isinstance(exc, LrsFocusError) else f"{type(exc).__name__}: {exc}"
            reply = protocol.error(job.request_id, code, message, job.job_id)
            del exc  # the traceback pins the failed job's frames (and tensors)
            if code == protocol.OUT_OF_MEMORY:
                release_memory()
        self.book.finish(job, reply)
