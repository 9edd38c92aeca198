"""Reader processes and their pool: every GDAL open and read of a served question runs in one.

`Reader` is one child (`child.py`), spawned with `python -m` (never forked from the torch-loaded
parent), given a socket and a memfd for pixels; `request` waits for its answer while calling the
job's check, and kills the child when the check raises (cancel, deadline), when it dies (CPU or
memory limit, crash) or when it stays silent past `timeout_s`. `ReaderPool` keeps `size` readers,
lends them to questions (`open` -> a `ConfinedSource`) and replaces every killed one in the
background, so one wedged raster costs one reader for one job, never the server.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import socket
import subprocess  # nosec B404 (our own interpreter, no shell)
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

import numpy as np

from .. import errors

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0


OUTPUT_LINES_PER_MINUTE = 60  # a reader's lines logged per minute; the rest are read and counted
OUTPUT_LINE_CHARS = 300


def _printable(text: str) -> str:
    """Control characters (a terminal's escape sequences) and lone surrogates as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def relay_output(stream, pid: int) -> None:
    """A reader's stdout and stderr (GDAL's warnings, a crash's traceback) into the server's log.

    What a reader prints is partly the raster's doing: GDAL quotes file names, metadata and XML it
    parsed. So a line is logged as `reader PID: ...`, cut to OUTPUT_LINE_CHARS with its control
    characters escaped, at most OUTPUT_LINES_PER_MINUTE lines a minute (then one line saying how
    many were left out); the pipe is always drained (a reader never blocks on a full pipe), a line
    is read in bounded pieces (a newline-free flood costs no memory), and it ends with the reader."""
    window, shown, left_out, cont = time.monotonic(), 0, 0, False
    with stream:
        while True:
            piece = stream.readline(4 * OUTPUT_LINE_CHARS)
            if not piece:
                break
            first, cont = not cont, not piece.endswith(b"\n")
            if not first:  # the rest of a line already logged (cut) or left out
                continue
            now = time.monotonic()
            if now - window >= 60.0:
                if left_out:
                    log.warning("reader %d: %d more lines of output were left out", pid, left_out)
                window, shown, left_out = now, 0, 0
            if shown >= OUTPUT_LINES_PER_MINUTE:
                left_out += 1
                continue
            shown += 1
            text = _printable(piece.decode("utf-8", "backslashreplace").rstrip("\r\n"))
            if len(text) > OUTPUT_LINE_CHARS or cont:
                text = text[:OUTPUT_LINE_CHARS] + " [cut]"
            log.warning("reader %d: %s", pid, text)
    if left_out:
        log.warning("reader %d: %d more lines of output were left out", pid, left_out)


def _error(name: str, message: str) -> errors.LrsFocusError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.LrsFocusError)):
        cls = errors.RasterUnreadable
    return cls(message)


def _shared_memory_fd() -> int:
    """A memfd (Linux), else an unlinked temporary file (macOS): memory the reader inherits by fd."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("lrs-focus-reader", os.MFD_CLOEXEC)
    import tempfile

    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


class Reader:
    """One reader process (see module doc). Not thread-safe: one request at a time (the pool lends it)."""

    def __init__(self, config: dict, shm_bytes: int):
        parent, child = socket.socketpair()
        self.shm_fd = _shared_memory_fd()
        os.ftruncate(self.shm_fd, shm_bytes)
        self.shm = mmap.mmap(self.shm_fd, shm_bytes)
        cfg = dict(config, conn_fd=child.fileno(), shm_fd=self.shm_fd, shm_bytes=shm_bytes)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "lrs_focus.readers.child", json.dumps(cfg)],  # nosec B603
                                     pass_fds=(child.fileno(), self.shm_fd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        child.close()
        threading.Thread(target=relay_output, args=(self.proc.stdout, self.proc.pid), daemon=True,
                         name=f"reader-{self.proc.pid}-output").start()
        self.conn = Connection(parent.detach())
        self.cpu_s = float(config["cpu_s"])
        self.dead = False
        try:
            state, self.report = self._wait(None, START_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise
        if state != "ready":  # pragma: no cover - the child sends nothing else first
            self.kill()
            raise errors.RasterUnreadable(f"reader process did not start ({state})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _died(self) -> errors.LrsFocusError:
        code = self.proc.wait()
        self.kill()
        if code == -signal.SIGXCPU:
            return errors.RasterTooLarge(f"reading the raster took more than {self.cpu_s:g} CPU seconds")
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return errors.RasterUnreadable(f"the reader process died ({what}) while reading the raster")

    def _wait(self, check: Optional[Callable[[], None]], timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.conn.poll(0.05):
                    return self.conn.recv()
            except (EOFError, OSError):
                raise self._died() from None
            if self.proc.poll() is not None:
                raise self._died()
            if check is not None:
                try:
                    check()
                except BaseException:
                    self.kill()  # a read cannot be interrupted any other way
                    raise
            if time.monotonic() > deadline:
                self.kill()
                raise errors.RasterUnreadable(f"the raster reader gave no answer in {timeout_s:g} s; it was stopped")

    def request(self, op: str, check: Optional[Callable[[], None]], timeout_s: float, **kwargs) -> Any:
        if self.dead:
            raise errors.RasterUnreadable("the raster reader of this question was stopped")
        try:
            self.conn.send((op, kwargs))
        except OSError:
            raise self._died() from None
        reply = self._wait(check, timeout_s)
        if reply[0] == "ok":
            return reply[1]
        raise _error(reply[1], reply[2])

    def pixels(self, shape) -> np.ndarray:
        n = int(np.prod(shape))
        return np.frombuffer(self.shm, dtype=np.uint8, count=n).reshape(shape).copy()

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.conn.close()
            try:
                self.shm.close()
            except BufferError:  # a view still exported (a copy is always made): closed at exit
                pass
            os.close(self.shm_fd)


class ReaderPool:
    """`size` confined readers shared by the server's engines; `open(path, ...)` -> ConfinedSource.

    `roots`: what readers may read (empty: the whole file system, read-only). `confine`: False only
    with `serve --unconfined`. `no_policy`: the test-only switch (GDAL's drivers stay registered).
    Limits per reader: `address_space_mb` (RLIMIT_AS), `cpu_s` (CPU seconds per question),
    `timeout_s` (a request's longest silence when no deadline is given). `max_source_pixels`: pixels a
    question may decode; `parallel`: readers one question may use at once.
    """

    def __init__(self, size: int = 2, roots=(), allow_remote: bool = False, confine: bool = True,
                 no_policy: bool = False, address_space_mb: int = 3072, cpu_s: float = 600.0,
                 timeout_s: float = 600.0, shm_mb: int = 64, max_source_pixels: int = 1 << 32, parallel: int = 2):
        self.size, self.timeout_s, self.parallel = int(size), float(timeout_s), max(1, int(parallel))
        self.max_source_pixels = int(max_source_pixels)
        self.shm_bytes = int(shm_mb) << 20
        self.config = {"roots": [os.path.realpath(r) for r in roots], "allow_remote": bool(allow_remote),
                       "tcp_ports": [80, 443] if allow_remote else [], "confine": bool(confine),
                       "no_policy": bool(no_policy), "address_space_bytes": int(address_space_mb) << 20,
                       "cpu_s": float(cpu_s)}
        self._idle: list[Reader] = []
        self._count = 0  # readers alive or being started
        self._cond = threading.Condition()
        self._closed = False
        self.report: dict = {}
        self.replaced = 0

    def start(self) -> "ReaderPool":
        first = Reader(self.config, self.shm_bytes)  # a start-up error surfaces here, in `serve`
        self.report = first.report
        with self._cond:
            self._idle.append(first)
            self._count = 1
        for _ in range(self.size - 1):
            self._spawn()
        return self

    def _spawn(self) -> None:
        with self._cond:
            self._count += 1

        def run() -> None:
            try:
                reader = Reader(self.config, self.shm_bytes)
            except Exception as exc:  # next lease tries again
                log.error("a raster reader failed to start: %s", exc)
                with self._cond:
                    self._count -= 1
                    self._cond.notify_all()
                return
            self._park(reader)

        threading.Thread(target=run, name="lrs-reader-start", daemon=True).start()

    def describe(self) -> dict:
        return {"confined": bool(self.report.get("confined")), "readers": self.size,
                **{k: v for k, v in self.report.items() if k != "confined"}}

    def lease(self, check: Optional[Callable[[], None]] = None, wait: bool = True) -> Optional[Reader]:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise errors.RasterUnreadable("the server is stopping")
                if self._idle:
                    return self._idle.pop()
                if not wait:
                    return None
                if self._count < self.size:
                    self._cond.release()
                    try:
                        self._spawn()
                    finally:
                        self._cond.acquire()
                self._cond.wait(0.05)
                if check is not None:
                    check()
                if time.monotonic() > deadline:
                    raise errors.RasterUnreadable("no raster reader became free in time")

    def give_back(self, reader: Reader) -> None:
        if reader.dead:
            with self._cond:
                self._count -= 1
                self.replaced += 1
            if not self._closed:
                self._spawn()
            return
        self._park(reader)

    def _park(self, reader: Reader) -> None:
        """An idle reader waits for the next lease; a closed pool kills it instead."""
        with self._cond:
            if self._closed:
                reader.kill()
                return
            self._idle.append(reader)
            self._cond.notify_all()

    def open(self, path: str, bands=None, stretch=None, open_options=None,
             check: Optional[Callable[[], None]] = None):
        from .source import ConfinedSource

        return ConfinedSource.open(self, path, bands=bands, stretch=stretch, open_options=open_options, check=check)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for reader in idle:
            reader.kill()
