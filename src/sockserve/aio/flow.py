"""Flow control of one connection, shared by its reader and its writer.

Design: the transport reports its state to its protocol (the reader, ``streams.py``):
``pause_writing``/``resume_writing`` when its write buffer crosses the high-water mark,
``connection_lost`` at the end. The reader passes those on to this object, and the
writer (``writer.py``) asks it whether ``drain()`` has to wait, instead of reaching into
the reader. The reader also pauses the transport's reading here when a client sends
more than it reads. One object per connection; the reader makes it, the writer takes it
from ``reader.flow``.

Water marks: reading pauses when more than ``read_high_water`` bytes are buffered
unread (twice the line limit) and resumes once the handler has brought them down to
``read_low_water`` (the limit); writing waits while the transport's buffer is over its
high-water mark (``WRITE_HIGH_WATER_BYTES``).

Collected writes: the bytes a handler writes during one step (from one resumption to
the next suspension) are kept here (``pending_writes``) and handed to the transport
together when the step ends (``flush_writes``, called by the handler's driver,
``inline.py``), or as soon as they reach ``WRITE_COLLECT_LIMIT_BYTES``. Why: a handler
that reads ``read(65536)`` from a 256 KB chunk uvloop handed over writes four times
before it waits again; each ``send`` on loopback also runs the receiver's side of TCP,
so four sends cost far more than one ``writev`` of the same bytes (docs/async.md, "The
second round": 701 -> 426 µs of server CPU per MB on uvloop). What a handler can tell:
nothing is sent later than its next suspension (a handler that computes for a while
after writing, without awaiting, sends after that), and the bytes go out in the order
written (every other write first flushes what is collected).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["WRITE_COLLECT_LIMIT_BYTES", "WRITE_HIGH_WATER_BYTES", "FlowControl"]

#: The transport's write buffer above which ``drain()`` waits: asyncio's default
#: high-water mark, stated here so both loops use the same one (uvloop's low mark differs).
WRITE_HIGH_WATER_BYTES = 64 * 1024

#: Collected writes are handed to the transport once they reach this many bytes, even
#: mid-step: one uvloop read (256,000 bytes) echoed in 64 KiB writes stays one send,
#: and a handler that writes without ever suspending holds no more than this unsent.
WRITE_COLLECT_LIMIT_BYTES = 256 * 1024


class FlowControl:
    """One connection's pause/resume state, both ways, and the end of the connection.

    Set by the reader (the transport's protocol): ``transport`` (``connection_made``),
    ``pause_writing``/``resume_writing``, ``connection_lost``, and the reading side:
    ``pause_reading``, ``resume_reading``, ``resume_reading_if_below``. Read by the
    writer: ``is_writing_paused``, ``writable()``, ``is_connection_lost``,
    ``exception``, ``closed()``, and ``ready``, the one done future ``drain()`` returns
    when it need not wait (awaiting a done future never suspends).

    The compiled fast path reads ``is_reading_paused`` and ``is_writing_paused`` by slot
    offset (``_fastpath.c``): keep them slots holding True or False.
    """

    __slots__ = (
        "transport",
        "is_reading_paused",
        "is_writing_paused",
        "is_connection_lost",
        "exception",
        "ready",
        "read_high_water",
        "read_low_water",
        "_loop",
        "_drain_waiters",
        "_closed",
        "pending_writes",
        "pending_bytes",
        "collecting",
        "collect_limit",
        "holding",
        "send_pieces",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, read_limit: int) -> None:
        self.transport: Any = None
        self.is_reading_paused = False
        self.is_writing_paused = False
        self.is_connection_lost = False
        #: Why the connection was lost (None: a clean end, or not lost).
        self.exception: BaseException | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.set_result(None)
        self.read_high_water = 2 * read_limit
        self.read_low_water = read_limit
        self._loop = loop
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] | None = None
        #: Bytes objects written during the handler's current step, not yet sent.
        self.pending_writes: list[bytes] = []
        self.pending_bytes = 0
        #: False once writes must reach the transport at once: the writer closed or
        #: wrote its end, the transport was handed out, or the connection was lost.
        self.collecting = True
        self.collect_limit = WRITE_COLLECT_LIMIT_BYTES
        #: True while the end of a step does not send what is collected: the standard
        #: library's transport runs several steps in one read callback
        #: (``receive_switch.py``) and sends their writes together when it ends.
        self.holding = False
        #: How several collected writes go out (``gathered_sends.pieces_sender``, set
        #: per connection); None: the transport's ``writelines``.
        self.send_pieces: Callable[[list[bytes]], None] | None = None

    def set_read_limit(self, limit: int) -> None:
        """The reader's line limit changed: the reading water marks follow it."""
        self.read_high_water = 2 * limit
        self.read_low_water = limit

    # -- reading -------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.is_reading_paused:
            self.is_reading_paused = True
            if not self.is_connection_lost:  # (a lost TLS connection's transport is gone)
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.is_reading_paused = False
        if not self.is_connection_lost:
            self.transport.resume_reading()

    def resume_reading_if_below(self, buffered: int) -> None:
        """Resume a paused transport once ``buffered`` is down to the low-water mark."""
        if self.is_reading_paused and buffered <= self.read_low_water:
            self.resume_reading()

    # -- writing -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.is_writing_paused = True

    def resume_writing(self) -> None:
        self.is_writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def writable(self) -> asyncio.Future[None]:
        """A future done when writing resumes (or failed when the connection is lost)."""
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        return waiter

    def flush_writes(self) -> None:
        """Hand the collected writes to the transport, in order (one ``writelines``).

        Dropped if the transport is closing: that happens between two writes of one
        step only when it failed (the writer's own ``close`` flushes first), and the
        failure reaches the handler where it would anyway, in ``drain()`` or a read.
        """
        pending = self.pending_writes
        if not pending:
            return
        self.pending_bytes = 0
        transport = self.transport
        if len(pending) == 1:
            data = pending.pop()
            if not transport.is_closing():
                transport.write(data)
            return
        self.pending_writes = []
        if not transport.is_closing():
            if self.send_pieces is None:
                transport.writelines(pending)
            else:
                self.send_pieces(pending)

    def stop_collecting(self) -> None:
        """From now on every write goes to the transport at once (after those collected)."""
        self.collecting = False
        self.flush_writes()

    # -- the end -------------------------------------------------------------------------

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_connection_lost = True
        self.collecting = False  # the transport reports writes to a lost connection
        # Nothing is sent any more; and the sender holds the transport, which holds
        # its protocol: a cycle that kept every closed TLS connection until the garbage
        # collector ran (tests/test_tls_async_path.py).
        self.send_pieces = None
        self.pending_writes.clear()
        self.pending_bytes = 0
        if exc is not None:
            self.exception = exc
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def closed(self) -> asyncio.Future[None]:
        """A future done once the connection is lost (``wait_closed``)."""
        if self._closed is None:
            self._closed = self._loop.create_future()
            if self.is_connection_lost:
                self._closed.set_result(None)
        return self._closed
