"""The only way a thread other than the loop reaches the socket, and reply encoding that cannot fail.

`Outbox`: job threads put `(identity, encoded frame)`; the loop drains it and sends. A deque plus
one byte on a socketpair to wake the poller, deliberately not a zmq socket: a job thread that
never returns must not hold a socket open, so `Context.term()` never waits for it.
`encode_reply`: protocol.encode, except that an unencodable reply (NaN, a stray object) becomes
an `internal` error about the same request and job. May call: protocol only.
"""

from __future__ import annotations

import collections
import socket
from typing import Any, Iterator

from .. import protocol


def encode_reply(message: dict[str, Any]) -> bytes:
    """protocol.encode that cannot fail (see the module docstring)."""
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


class Outbox:
    """Job thread -> loop hand-over (see the module docstring)."""

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)

    def fileno(self) -> int:
        return self._rx.fileno()

    def put(self, item: tuple[bytes, bytes]) -> None:
        self._items.append(item)
        try:
            self._tx.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed at shutdown
            pass

    def __bool__(self) -> bool:
        return bool(self._items)

    def drain(self) -> Iterator[tuple[bytes, bytes]]:
        """Every queued item, oldest first (also those put while draining)."""
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


#: glibc's mallopt parameter M_MMAP_THRESHOLD
_M_MMAP_THRESHOLD = -3


def keep_big_replies_mapped(threshold: int = 1 << 20) -> bool:
    """Blocks of `threshold` bytes or more always come from mmap, so a freed reply goes back to the OS.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which a
    multi-MB reply comes from the heap, where one small allocation made later above it keeps the
    freed memory in the process for good: a peer that never read 80 MB of results left the server
    80 MB larger after its queue was dropped. A fixed threshold stops that adjustment. No-op (False)
    where the C library has no mallopt (macOS)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
