"""The jobs of one worker: the bounded queue, the running job, cancel, ownership, exactly-once endings.

Owns `Job` and `JobBook`: the lock and condition, the queue, the live jobs, the remembered
finished ids and the counters, and every transition (queued -> running -> finished) under the
lock. `JobBook.finish` is the only way a job ends: it encodes the terminal message first, then,
under the lock, marks the job finished *and* queues the message in the outbox, so anyone who can
see "finished" (a `status` reply built by the loop) finds the terminal already queued ahead of it.
May call: protocol, limits, outbox. Never touches a zmq socket; any thread may call it.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any, Optional

from .. import protocol
from ..engine import AskOptions
from .limits import FINISHED_KEPT
from .outbox import Outbox, encode_reply


class Job:
    __slots__ = ("job_id", "identity", "owner", "request_id", "raster", "question", "options", "cancel",
                 "state", "stage", "level", "fraction", "accepted_at", "last_progress")

    def __init__(self, job_id: str, identity: bytes, owner: bytes, request_id: str, raster: str, question: str,
                 options: AskOptions):
        self.job_id, self.identity, self.owner, self.request_id = job_id, identity, owner, request_id
        self.raster, self.question, self.options = raster, question, options
        self.cancel = threading.Event()
        self.state = "queued"  # queued -> running -> finished (each transition under JobBook.lock)
        self.stage, self.level, self.fraction = "queued", None, 0.0
        self.accepted_at = time.monotonic()
        self.last_progress: tuple[tuple, float] = ((), 0.0)

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "stage": self.stage, "level": self.level,
                "fraction": self.fraction}


def shutting_down(job: Job) -> dict[str, Any]:
    return protocol.error(job.request_id, protocol.SHUTTING_DOWN, "the server is shutting down", job.job_id)


class JobBook:
    """Queue and states of one worker's jobs (see the module docstring)."""

    def __init__(self, queue_size: int, worker_name: str, outbox: Outbox):
        self.queue_size = queue_size
        self.worker_name = worker_name
        self.outbox = outbox
        self.lock = threading.Lock()
        self._wakeup = threading.Condition(self.lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}  # queued and running jobs
        self._finished: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # job id -> owner
        self._running: Optional[Job] = None
        self.jobs_done = 0
        self.stopping = threading.Event()

    # -- intake -------------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return f"{self.worker_name}-{uuid.uuid4().hex}" if self.worker_name else uuid.uuid4().hex

    def submit(self, job: Job) -> dict[str, Any]:
        """Queues `job`; returns the reply: `accepted`, or `busy` / `shutting_down` (not queued)."""
        rid = job.request_id
        with self.lock:
            if self.stopping.is_set():
                return protocol.error(rid, protocol.SHUTTING_DOWN, "the server is shutting down")
            if len(self._queue) >= self.queue_size:
                return protocol.error(rid, protocol.BUSY, f"the job queue is full ({self.queue_size} waiting); "
                                      "retry later")
            self._queue.append(job)
            self._jobs[job.job_id] = job
            position = len(self._queue) - (0 if self._running is not None else 1)
            self._wakeup.notify()
        return protocol.accepted(rid, job.job_id, position)

    # -- the job thread's side ----------------------------------------------------------------
    def take(self) -> Optional[Job]:
        """The next job, now running; blocks; None once stopping with nothing queued."""
        with self.lock:
            while not self._queue and not self.stopping.is_set():
                self._wakeup.wait(0.5)
            if not self._queue:
                return None
            job = self._queue.popleft()
            job.state = "running"
            self._running = job
            return job

    def release(self, job: Job) -> None:
        with self.lock:
            if self._running is job:
                self._running = None

    def finish(self, job: Job, message: dict[str, Any]) -> bool:
        """Queues a job's terminal message exactly once, whichever thread gets there first."""
        payload = encode_reply(message)  # may take long (a big result): the job still shows as running
        with self.lock:
            if job.state == "finished":
                return False
            job.state = "finished"
            if self._running is job:  # health/status right after the terminal must not show it running
                self._running = None
            self._jobs.pop(job.job_id, None)
            self._finished[job.job_id] = job.owner
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
            self.jobs_done += 1
            self.outbox.put((job.identity, payload))  # before anyone can see "finished"
        return True

    def should_stop(self, job: Job) -> bool:
        return job.cancel.is_set() or self.stopping.is_set()

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, job: Job, queued_message: str) -> str:
        """Flags a job; a queued one ends at once (its terminal goes out now). Returns its state."""
        with self.lock:
            job.cancel.set()
            was_queued = job.state == "queued" and job in self._queue
            if was_queued:
                self._queue.remove(job)
            finished = job.state == "finished"
        if was_queued:
            self.finish(job, protocol.error(job.request_id, protocol.CANCELLED, queued_message, job.job_id))
            return "cancelled"
        return "finished" if finished else "running"

    def cancel_request(self, rid: Optional[str], owner: bytes, job_id: str) -> dict[str, Any]:
        """The reply to a `cancel` from `owner`: another client's job is `unknown_job` too."""
        with self.lock:
            job = self._jobs.get(job_id)
            state = self._state_of(job_id, owner)["state"]
        if state == "unknown":
            return protocol.error(rid, protocol.UNKNOWN_JOB, f"no job {job_id!r} of yours on this server", job_id)
        if state in ("finished", "other_worker"):
            return protocol.cancelling(rid, job_id, "finished" if state == "finished" else "forwarded")
        return protocol.cancelling(rid, job_id, self.cancel(job, "cancelled before it started"))

    def cancel_forwarded(self, owner: bytes, job_id: str) -> None:
        """A cancel that the proxy handed to another worker (seen on the capture socket)."""
        with self.lock:
            job = self._jobs.get(job_id)
        if job is not None and job.owner == owner:
            self.cancel(job, "cancelled before it started")

    def peer_jobs(self, identity: bytes) -> list[Job]:
        """The live jobs of a peer, not yet flagged (to cancel when it is gone or not reading)."""
        with self.lock:
            jobs = [j for j in self._jobs.values() if j.identity == identity and not j.cancel.is_set()]
        return jobs

    # -- views --------------------------------------------------------------------------------
    def owns(self, job_id: str) -> bool:
        """Could this worker have made `job_id`? Workers prefix their ids with their name."""
        if not self.worker_name:
            return True
        prefix = job_id.split("-", 1)[0] if "-" in job_id else ""
        return prefix == self.worker_name

    def _state_of(self, job_id: str, owner: bytes) -> dict[str, Any]:
        """Another client's job looks exactly like one that never existed (call under the lock)."""
        job = self._jobs.get(job_id)
        if job is not None and job.owner == owner:
            info = job.summary()
            if job.state == "queued":
                info["position"] = self._queue.index(job) if job in self._queue else 0
            return info
        if job is None and self._finished.get(job_id) == owner:
            return {"job_id": job_id, "state": "finished"}
        return {"job_id": job_id, "state": "unknown" if self.owns(job_id) else "other_worker"}

    def status_reply(self, rid: str, owner: bytes, job_id: Optional[str]) -> dict[str, Any]:
        with self.lock:
            mine = self._running is not None and self._running.owner == owner
            running = self._running.summary() if mine else None
            queued = [j.job_id for j in self._queue if j.owner == owner]
            job = self._state_of(job_id, owner) if job_id is not None else None
            done = self.jobs_done
        return protocol.status_reply(rid, running=running, queued=queued, queue_size=self.queue_size,
                                     jobs_done=done, job=job, worker=self.worker_name)

    def load(self) -> tuple[int, bool]:
        """(jobs queued, a job running)."""
        with self.lock:
            return len(self._queue), self._running is not None

    # -- shutdown -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            self._wakeup.notify_all()

    def empty_for_shutdown(self) -> tuple[list[Job], Optional[Job]]:
        """Takes every queued job out and returns them with the running one (which stops at its
        next check: should_stop sees `stopping`)."""
        with self.lock:
            queued = list(self._queue)
            self._queue.clear()
            running = self._running
            self._wakeup.notify_all()
        return queued, running
