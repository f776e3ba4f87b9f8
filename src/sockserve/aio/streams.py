"""Lean asyncio streams for handlers: the reader *is* the connection's protocol.

Design: asyncio's ``StreamReader`` sits behind a ``StreamReaderProtocol``; every chunk
comes from a fresh ``recv`` (256 KiB per call on the stdlib loop, which glibc serves with
mmap/mremap/munmap each time: about 27 µs of server CPU per 64-byte echo, measured here)
and reaches the reader through two more layers, and every read is a coroutine that
creates a future, wakes, and re-parses its buffer. Here the reader *is* the protocol, and
the per-message path of a ping-pong handler (``await readline()``, ``write``,
``await drain()``) creates no future at all: the handler's read parks inline and is
resumed from these callbacks, not by its task (``inline.py``; the reader calls its
driver's ``resume_parked``).

* The stdlib loop reads into one receive buffer shared by the server's connections
  (``BufferedProtocol``, ``recv_into``); uvloop hands ``data_received`` a bytes object of
  the exact size (one Python call instead of ``get_buffer`` + ``buffer_updated``).
* When ``readline()`` / ``read()`` wait, the protocol callback hands them the line
  itself, so the handler resumes with its result: the buffer is not re-scanned, and a
  chunk that is exactly the line is returned as is, never copied. They stay coroutines
  (``asyncio.create_task(reader.readline())`` works, and a line handed to a read that is
  cancelled at that moment goes back into the buffer).
* The writer (``writer.py``) writes straight to the transport; its ``drain()`` returns
  one done future per connection (``FlowControl.ready``) unless the transport is paused
  or closing: no coroutine, no suspension. The flow-control state both halves share
  lives in one small object (``flow.py``), ``reader.flow``.
* Buffering and line splitting are the sans-IO ``LineBuffer``'s (``line_buffer.py``,
  shared with the synchronous handlers' line limit). The per-message path does not call
  it: a chunk that is exactly what the waiting read wants never enters the buffer; a
  chunk that arrives to an empty buffer while no line is wanted is *held* as it is and
  handed out in pieces (``bulk_reads.py``: no copy into the bytearray, which grew and
  shrank by 256 KiB per uvloop read); ``data_received`` appends the others to the
  buffer's bytearray itself (what ``LineBuffer.feed`` does, without the call).
* The idle ``timeout`` is one timer per connection, checked lazily against the time the
  current wait started, not a ``TimerHandle`` created and cancelled per message.

Measured (``bench/async_quick.py``, uvloop, server user CPU per 64-byte ping-pong): 3.6 µs
before these changes, 2.3-2.6 µs after, 2.2 µs once resumed inline, about 1.9 µs once
parked without a future; a bare uvloop ``Protocol`` echo takes 0.85 µs and asyncio's
streams 3.9 µs.

Trade-off: the surface is the one handlers call on asyncio's ``StreamReader`` and
``StreamWriter`` (``read``, ``readline``, ``readexactly``, ``readuntil``, ``at_eof``,
``write``, ``writelines``, ``drain``, ``close``, ``is_closing``, ``wait_closed``,
``get_extra_info``...), not their private attributes; ``readuntil`` takes one separator.
``drain`` returns a future, not a coroutine: ``await``, ``asyncio.wait_for``, ``gather``
and ``ensure_future`` take it, ``create_task`` does not (it carries no data to lose).

Resource limits: a line longer than ``limit`` raises ``LineTooLongError``; a reader that
buffers more than ``2 * limit`` unread bytes pauses the transport (so a client cannot
make the server hold more than that plus one receive chunk); ``drain()`` waits while
the transport's write buffer is over its high-water mark.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ..errors import AsyncLineTooLongError, LineTooLongError, ReadTimeoutError
from ..line_buffer import LineBuffer
from . import bulk_reads, parking
from .flow import WRITE_HIGH_WATER_BYTES, FlowControl
from .parking import LINE as _LINE
from .parking import NO_DRIVER, Driver
from .parking import SOME as _SOME
from .parking import WAKE as _WAKE
from .parking import parked_read as _parked_read
from .receive_switch import BULK_READ_BYTES as _BULK_READ_BYTES
from .receive_switch import follow_read as _follow_read
from .receive_switch import to_buffer as _to_buffer
from .receive_switch import to_bytes as _to_bytes

__all__ = [
    "NO_DRIVER",
    "AsyncLineTooLongError",
    "DEFAULT_LINE_LIMIT",
    "RECEIVE_CHUNK_BYTES",
    "WRITE_HIGH_WATER_BYTES",
    "LineTooLongError",
    "ReadTimeoutError",
    "StreamReader",
    "receive_buffer",
]

#: The longest line ``readline`` accepts, newline excluded: asyncio's own stream limit
#: (``asyncio.streams._DEFAULT_LIMIT``), so code moved from asyncio behaves the same.
DEFAULT_LINE_LIMIT = 64 * 1024

#: Size of the receive buffer the standard library's loop reads into. It is shared by
#: every connection of a server, so its size costs nothing per connection; it bounds how
#: much one read can add to a connection's buffer beyond ``2 * limit``. 256 KiB, as
#: asyncio's own ``recv`` and near uvloop's 256,000: a bulk stream then takes 4 reads
#: and 4 sends per MB instead of 16 and 16 (the sends carry the receiver's wake-ups);
#: the bytes are copied out once, cut to the waiting ``read(n)`` (``hold_pieces``), so
#: no 256 KiB bytes object is made per read (one was slower: docs/async.md).
RECEIVE_CHUNK_BYTES = 256 * 1024


def receive_buffer() -> memoryview:
    """A receive buffer for ``StreamReader``; one per server, shared by its connections.

    Sharing is safe because a transport fills it and calls ``buffer_updated`` in one go,
    which copies the bytes out before any other connection reads.
    """
    return memoryview(bytearray(RECEIVE_CHUNK_BYTES))


class StreamReader(asyncio.BufferedProtocol, asyncio.Protocol):
    """The receiving half of a connection: its transport's protocol and its reader.

    ``limit``: the longest line accepted (``LineTooLongError`` beyond it).
    ``timeout``: seconds a read may wait for data (``ReadTimeoutError``); None waits.
    ``flow``: the connection's ``FlowControl``, shared with its ``StreamWriter``: the
    transport reports its write state to its protocol, which passes it on there.

    Both a ``BufferedProtocol`` and a ``Protocol``, on purpose: the stdlib loop checks
    for ``BufferedProtocol`` first and reads into the shared buffer (``recv_into``; its
    plain path mallocs 256 KiB per ``recv``); uvloop checks for ``Protocol`` first and
    calls ``data_received`` with a bytes object of exactly the size read, one Python call
    instead of two (``get_buffer`` + ``buffer_updated``, each in a context switch).
    That bytes object *is* what ``readline``/``read`` returns when it holds exactly what
    the waiting read wants, so the usual ping-pong message is never copied.

    How a read waits: ``readline()`` and ``read()`` are coroutines, as in asyncio. When
    the data is buffered they return at once. Otherwise the read is pending
    (``_waiter``) until the protocol callback that completes it hands over the line
    itself, so the buffer is not scanned again. A read of the handler's own, while its
    ``InlineDriver`` runs it (``_driving``), parks inline (``_parked_read``): the
    callback resumes the handler directly. A read from any other task waits in a loop
    future, as in asyncio. If the read is cancelled after its line was handed over but
    before it resumed (a timeout firing at that very moment), the line goes back into
    the buffer.
    """

    __slots__ = (
        "timeout",
        "flow",
        "_loop",
        "_receive_view",
        "_lines",
        "_buffer",
        "_held",
        "_held_start",
        "_held_next",
        "_into",
        "_filling",
        "_waiter",
        "_want",
        "_want_size",
        "_wait_started",
        "_timer",
        "_create_future",
        "_driving",
        "_driver",
        "_parked_result",
        "_parked_error",
        "_switch",
        "_recv_size",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receive_view: memoryview,
        *,
        limit: int = DEFAULT_LINE_LIMIT,
        timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        self.flow = FlowControl(loop, limit)
        self._loop = loop
        self._receive_view = receive_view
        #: The unread bytes, the limit and the end of stream (``line_buffer.py``).
        self._lines = LineBuffer(limit, error=AsyncLineTooLongError)
        #: True when anything is buffered unread: ``_lines.data`` itself, or the held
        #: chunk while there is one. The per-message emptiness tests read it (and the
        #: compiled path takes only an empty bytearray there as "nothing buffered").
        self._buffer: bytearray | bytes = self._lines.data
        #: A received chunk handed out in pieces without being copied into
        #: ``_lines`` (``bulk`` reads): its unread bytes start at ``_held_start``.
        #: While one is held, ``_lines.data`` is empty.
        self._held: bytes | None = None
        self._held_start = 0
        #: Chunks held after ``_held``, in order (``hold_pieces``): each becomes the
        #: held chunk when the one before it has been read.
        self._held_next: list[bytes] = []
        #: The buffer of a pending ``readinto``; ``_filling``: the one ``get_buffer``
        #: handed the transport (the stdlib loop reads straight into it).
        self._into: memoryview | None = None
        self._filling: memoryview | None = None
        #: The pending read: a loop future (a read from a task), the reader itself (the
        #: handler's own read, parked inline), or None.
        self._waiter: asyncio.Future[Any] | StreamReader | None = None
        self._want = _WAKE
        self._want_size = 0
        self._wait_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._create_future = loop.create_future
        #: True while the connection's ``InlineDriver`` runs the handler (``inline.py``):
        #: a read that has to wait then parks inline instead of creating a future.
        self._driving = False
        #: Resumes the handler once its parked read is complete.
        self._driver: Driver = NO_DRIVER
        #: What the parked read returns or raises, left here by the callback that
        #: completed it, until the handler takes it (``_parked_read``).
        self._parked_result: Any = None
        self._parked_error: BaseException | None = None
        #: The standard library's socket transport, whose receiving a bulk ``read(n)``
        #: switches to ``recv(n)`` (``receive_switch.py``), or None; ``_recv_size``:
        #: that ``n`` while switched, 0 while reading into the shared buffer.
        self._switch: Any = None
        self._recv_size = 0

    @property
    def limit(self) -> int:
        """The longest line accepted, newline excluded (the handler's max_line_length)."""
        return self._lines.max_line_length  # type: ignore[return-value]  # always an int

    @limit.setter
    def limit(self, limit: int) -> None:
        self._lines.max_line_length = limit
        self.flow.set_read_limit(limit)

    @property
    def is_eof_received(self) -> bool:
        """True once the peer has finished sending (unread data may be buffered)."""
        return self._lines.eof

    # -- the protocol: called by the transport ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.flow.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        into = self._into
        if into is not None and not self._buffer:
            # A readinto() waits and nothing is buffered: the kernel fills its buffer.
            self._filling = into
            return into
        return self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        # The stdlib loop's path; the bytes are copied out of the shared buffer here.
        filled = self._filling
        if filled is None:
            size = self._want_size
            if self._want == _SOME and self._waiter is not None:
                is_bulk = nbytes >= _BULK_READ_BYTES and size >= _BULK_READ_BYTES
                if is_bulk and self._switch is not None:
                    _to_bytes(self, size)  # a bulk stream: the next reads recv(size)
                if nbytes > size > 0 and not self._buffer:
                    self._hold_pieces(nbytes, size)  # a bulk read(n): cut to n, copied once
                    return
            self.data_received(self._receive_view[:nbytes].tobytes())
            return
        self._filling = None
        waiter = self._waiter
        if waiter is self or (
            waiter is not None and not cast("asyncio.Future[Any]", waiter).done()
        ):
            self._complete(waiter, nbytes, None)
        else:  # the readinto gave up in the meantime: keep the bytes for the next read
            self.data_received(bytes(filled[:nbytes]))

    def data_received(self, data: bytes) -> None:
        # The per-message path: a read is waiting and nothing is buffered, so when the
        # chunk is exactly what it wants, the chunk itself becomes its result.
        if self._recv_size:  # recv(n) for a bulk read, and another kind of read waits?
            _follow_read(self)
        waiter = self._waiter
        if waiter is not None and not self._buffer:
            size = len(data)
            if (
                data.find(b"\n") == size - 1 and size <= self._lines.max_line_length  # type: ignore[operator]
                if self._want == _LINE
                else self._want == _SOME and size <= self._want_size
            ):
                self._waiter = None
                if waiter is self:  # the handler's own read: resume the handler now
                    self._parked_result = data
                    self._driver.resume_parked()
                    return
                future = cast("asyncio.Future[Any]", waiter)
                if not future.done():  # (done: cancelled; the data is buffered below)
                    future.set_result(data)
                    return
        if not self._buffer and type(data) is bytes and (waiter is None or self._want != _LINE):
            # Nothing buffered, and no line wanted now: keep the chunk itself and hand it
            # out in pieces (one copy per piece; appending it to the bytearray would
            # copy it twice and grow and shrink the bytearray with every chunk).
            self._held = self._buffer = data
            self._held_start = 0
        else:
            if self._held is not None:
                self._spill()
            buffer = self._buffer
            buffer += data  # LineBuffer.feed(), written out
        if self._waiter is not None:
            self._serve_waiter()
        if self._buffered() > self.flow.read_high_water:
            self.flow.pause_reading()

    #: The method above, under the name the compiled fast path calls for every case it
    #: does not take itself (``fastpath.py``'s compiled subclass overrides
    #: ``data_received``).
    _data_received_slowly = data_received

    def eof_received(self) -> bool:
        self._lines.feed_eof()
        self._serve_waiter()
        return True  # keep the write side open: a half-closed client still gets its reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._lines.feed_eof()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._recv_size:  # the transport's callback holds this reader: let go
            _to_buffer(self)
        self.flow.connection_lost(exc)
        # Last: the handler may be resumed right here, and must see the state above.
        self._serve_waiter()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def _serve_waiter(self) -> None:
        """Give the pending read its result if what it wants is there now."""
        waiter = self._waiter
        if waiter is None:
            return
        if waiter is not self and cast("asyncio.Future[Any]", waiter).done():
            self._waiter = None  # cancelled: whatever arrived stays buffered
            return
        want = self._want
        result: Any = None
        if want != _WAKE:
            try:
                if want == _LINE:
                    result = self._line_now()
                elif want == _SOME:
                    result = self._some_now(self._want_size)
                else:
                    result = self._into_now()
            except BaseException as exc:
                self._complete(waiter, None, exc)
                return
            if result is None:
                return  # not yet: keep waiting
        self._complete(waiter, result, None)

    def _complete(
        self,
        waiter: asyncio.Future[Any] | StreamReader,
        result: Any,
        error: BaseException | None,
    ) -> None:
        """End the pending read ``waiter`` with ``result``, or with ``error`` if given."""
        self._waiter = None
        if waiter is self:
            self._parked_result, self._parked_error = result, error
            self._driver.resume_parked()
            return
        future = cast("asyncio.Future[Any]", waiter)
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def _give_up_parked_read(self) -> None:
        """The parked read was cancelled (or its handler closed): end it, and put back a
        result handed over but not taken yet, so that nothing is lost."""
        if self._waiter is self:
            self._waiter = None
        result, self._parked_result, self._parked_error = self._parked_result, None, None
        self._put_back(result)

    # -- the reader: called by the handler --------------------------------------------

    def exception(self) -> BaseException | None:
        return self.flow.exception

    def at_eof(self) -> bool:
        """True when the peer has finished sending and everything has been read."""
        return self._lines.eof and not self._buffer

    async def readline(self) -> bytes:
        """One line including ``\\n``; at EOF whatever is left (b"" when nothing)."""
        if self._buffer or self._lines.eof:
            line = self._line_now()
            if line is not None:
                return line
        elif (
            self._driving
            and self._waiter is None
            and self.timeout is None
            and not self.flow.is_reading_paused
        ):
            # The per-message read, parked inline: _wait()'s steps for this case, written
            # out here because the call would cost 4% of a ping-pong message (measured).
            self._waiter = self
            self._want = _LINE
            return await _parked_read(self)  # type: ignore[no-any-return]
        read = self._wait(_LINE, 0)
        try:
            return await read  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self._keep_if_handed_over(read)
            raise

    #: The coroutine above, which the compiled ``readline`` runs for every case but the
    #: per-message one (``fastpath.py``'s compiled subclass overrides ``readline``).
    _readline_slowly = readline

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are there (all until EOF when ``n < 0``)."""
        if n < 0:
            return await self._read_all()
        if n == 0:
            return b""
        if self._buffer or self._lines.eof:
            data = self._some_now(n)
            if data is not None:
                return data
        elif (
            self._driving
            and self._waiter is None
            and self.timeout is None
            and not self.flow.is_reading_paused
        ):
            self._waiter = self  # as in readline()
            self._want = _SOME
            self._want_size = n
            return await _parked_read(self)  # type: ignore[no-any-return]
        read = self._wait(_SOME, n)
        try:
            return await read  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self._keep_if_handed_over(read)
            raise

    #: As ``_readline_slowly``, for ``read``.
    _read_slowly = read

    readuntil = bulk_reads.readuntil
    readexactly = bulk_reads.readexactly
    readinto = bulk_reads.readinto
    _into_now = bulk_reads.into_now
    _take_held = bulk_reads.take_held
    _advance_held = bulk_reads.advance_held
    _spill = bulk_reads.spill
    _hold_pieces = bulk_reads.hold_pieces
    _buffered = bulk_reads.buffered
    _put_back = bulk_reads.put_back

    _wait = parking.wait
    _keep_if_handed_over = parking.keep_if_handed_over
    _check_timeout = parking.check_timeout

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def _read_all(self) -> bytes:
        blocks = []
        while block := await self.read(self.limit):
            blocks.append(block)
        return b"".join(blocks)

    def _line_now(self) -> bytes | None:
        """The next line if it is buffered (or the rest, at EOF); None: wait for more."""
        if self._held is not None:
            self._spill()
        lines = self._lines
        if not lines.data and lines.eof:
            self._raise_lost()
        try:
            return lines.next_line()
        finally:  # taken, or dropped as too long: room to read again?
            if self.flow.is_reading_paused:
                self.flow.resume_reading_if_below(len(lines))

    def _some_now(self, n: int) -> bytes | None:
        """Up to ``n`` buffered bytes (b"" at EOF); None: wait for some."""
        if self._held is not None:
            data: bytes | None = self._take_held(n)
        else:
            lines = self._lines
            if not lines.data and lines.eof:
                self._raise_lost()
            data = lines.read(n)
        if self.flow.is_reading_paused:
            self.flow.resume_reading_if_below(self._buffered())
        return data

    def _take(self, size: int) -> bytes:
        if self._held is not None:
            self._spill()
        data = self._lines.take(size)
        self.flow.resume_reading_if_below(len(self._lines))
        return data

    def _raise_lost(self) -> None:
        """At the end of the stream with nothing buffered: raise why it was lost, if so."""
        if self.flow.exception is not None:
            raise self.flow.exception
