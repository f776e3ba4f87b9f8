"""Lean asyncio streams for handlers: the reader *is* the connection's protocol.

Design: asyncio's ``StreamReader`` sits behind a ``StreamReaderProtocol``; every chunk
comes from a fresh ``recv`` (256 KiB per call on the stdlib loop, which glibc serves with
mmap/mremap/munmap each time: about 27 µs of server CPU per 64-byte echo, measured here)
and reaches the reader through two more layers, and every read is a coroutine that
creates a future, wakes, and re-parses its buffer. Here the reader *is* the protocol, and
the per-message path of a ping-pong handler (``await readline()``, ``write``,
``await drain()``) is cut to one future per wait: the handler is resumed from these
callbacks, not by its task (``inline.py``; the reader calls ``_resume_handler``).

* The stdlib loop reads into one receive buffer shared by the server's connections
  (``BufferedProtocol``, ``recv_into``); uvloop hands ``data_received`` a bytes object of
  the exact size (one Python call instead of ``get_buffer`` + ``buffer_updated``).
* When ``readline()`` / ``read()`` wait, the protocol callback completes their future
  with the line itself, so the handler resumes with its result: the buffer is not
  re-scanned, and a chunk that is exactly the line is returned as is, never copied.
  They stay coroutines (``asyncio.create_task(reader.readline())`` works, and a line
  handed to a read whose task is cancelled at that moment goes back into the buffer):
  returning the bare future would save about 0.1 µs per message and lose both.
* The writer (``writer.py``) writes straight to the transport; its ``drain()`` returns
  one done future per connection (``_ready``, kept here) unless the transport is paused
  or closing: no coroutine, no suspension.
* The idle ``timeout`` is one timer per connection, checked lazily against the time the
  current wait started, not a ``TimerHandle`` created and cancelled per message.

Measured (``bench/async_quick.py``, uvloop, server user CPU per 64-byte ping-pong): 3.6 µs
before these changes, 2.3-2.6 µs after, 2.2 µs once resumed inline; a bare uvloop
``Protocol`` echo takes 0.85 µs and asyncio's streams 3.9 µs.

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
from typing import TYPE_CHECKING, Any

from ..errors import LineTooLongError, ReadTimeoutError

if TYPE_CHECKING:
    from .inline import InlineDriver

__all__ = [
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

#: Size of the receive buffer the transport reads into. It is shared by every connection
#: of a server, so its size costs nothing per connection; it bounds how much one read can
#: add to a connection's buffer beyond ``2 * limit``.
RECEIVE_CHUNK_BYTES = 64 * 1024

#: The transport's write buffer above which ``drain()`` waits: asyncio's default
#: high-water mark, stated here so both loops use the same one (uvloop's low mark differs).
WRITE_HIGH_WATER_BYTES = 64 * 1024

#: What a pending read waits for (``StreamReader._want``): any change (the coroutine
#: re-checks), a whole line, or up to ``_want_size`` bytes.
_WAKE, _LINE, _SOME = 0, 1, 2

#: A waiting read's idle timer may fire this early (uvloop rounds timers to
#: milliseconds): within it, the deadline counts as reached rather than re-armed.
_TIMER_SLACK_SECONDS = 0.001


def receive_buffer() -> memoryview:
    """A receive buffer for ``StreamReader``; one per server, shared by its connections.

    Sharing is safe because a transport fills it and calls ``buffer_updated`` in one go,
    which copies the bytes out before any other connection reads.
    """
    return memoryview(bytearray(RECEIVE_CHUNK_BYTES))


def _done(loop: asyncio.AbstractEventLoop, result: Any) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_result(result)
    return future


class StreamReader(asyncio.BufferedProtocol, asyncio.Protocol):
    """The receiving half of a connection: its transport's protocol and its reader.

    ``limit``: the longest line accepted (``LineTooLongError`` beyond it).
    ``timeout``: seconds a read may wait for data (``ReadTimeoutError``); None waits.
    The write flow-control state lives here too, because the transport reports it to
    its protocol; ``StreamWriter.drain`` asks for it.

    Both a ``BufferedProtocol`` and a ``Protocol``, on purpose: the stdlib loop checks
    for ``BufferedProtocol`` first and reads into the shared buffer (``recv_into``; its
    plain path mallocs 256 KiB per ``recv``); uvloop checks for ``Protocol`` first and
    calls ``data_received`` with a bytes object of exactly the size read, one Python call
    instead of two (``get_buffer`` + ``buffer_updated``, each in a context switch).
    That bytes object *is* what ``readline``/``read`` returns when it holds exactly what
    the waiting read wants, so the usual ping-pong message is never copied.

    How a read waits: ``readline()`` and ``read()`` are coroutines, as in asyncio, around
    a future; when the data is buffered the future is already done (no suspension),
    otherwise the protocol callback that completes the line sets the line as the
    future's result, so the handler resumes with it and the buffer is not scanned
    again. If the task is cancelled after its line was handed over but before it
    resumed (a timeout firing at that very moment), the line goes back into the buffer.
    """

    __slots__ = (
        "limit",
        "timeout",
        "_loop",
        "_receive_view",
        "_buffer",
        "_waiter",
        "_want",
        "_want_size",
        "_wait_started",
        "_timer",
        "_eof",
        "_exception",
        "_transport",
        "_is_reading_paused",
        "_is_writing_paused",
        "_drain_waiters",
        "_is_connection_lost",
        "_closed",
        "_ready",
        "_create_future",
        "_driver",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receive_view: memoryview,
        *,
        limit: int = DEFAULT_LINE_LIMIT,
        timeout: float | None = None,
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self._loop = loop
        self._receive_view = receive_view
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Any] | None = None
        self._want = _WAKE
        self._want_size = 0
        self._wait_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._exception: BaseException | None = None
        self._transport: Any = None
        self._is_reading_paused = False
        self._is_writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._is_connection_lost = False
        self._closed: asyncio.Future[None] | None = None
        #: What ``drain()`` returns when it need not wait: one done future per
        #: connection, awaited again and again (awaiting a done future never suspends).
        self._ready: asyncio.Future[None] = _done(loop, None)
        self._create_future = loop.create_future
        #: Resumes the handler when a read it waits in completes (``inline.py``), if the
        #: connection's task runs the handler through one.
        self._driver: InlineDriver | None = None

    # -- the protocol: called by the transport ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        # The stdlib loop's path; the bytes are copied out of the shared buffer here.
        self.data_received(self._receive_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        # The per-message path: a read is waiting and nothing is buffered, so when the
        # chunk is exactly what it wants, the chunk itself becomes its result.
        waiter = self._waiter
        buffer = self._buffer
        if waiter is not None and not buffer:
            want = self._want
            if (
                want == _LINE and data.find(b"\n") == len(data) - 1 and len(data) <= self.limit
            ) or (want == _SOME and len(data) <= self._want_size):
                self._waiter = None
                try:
                    waiter.set_result(data)
                except asyncio.InvalidStateError:  # the read was cancelled: keep the data
                    pass
                else:
                    if self._driver is not None:
                        self._driver.resume_inline(waiter)
                    return
        buffer += data
        if self._waiter is not None:
            self._serve_waiter()
        if len(buffer) > 2 * self.limit and not self._is_reading_paused:
            self._is_reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._serve_waiter()
        return True  # keep the write side open: a half-closed client still gets its reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_connection_lost = True
        self._eof = True
        if exc is not None:
            self._exception = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        # Last: the handler may be resumed right here, and must see the state above.
        self._serve_waiter()

    def pause_writing(self) -> None:
        self._is_writing_paused = True

    def resume_writing(self) -> None:
        self._is_writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def _serve_waiter(self) -> None:
        """Give the waiting read its result if what it wants is there now."""
        waiter = self._waiter
        if waiter is None:
            return
        if waiter.done():  # cancelled: whatever arrived stays buffered
            self._waiter = None
            return
        want = self._want
        result: Any = None
        if want != _WAKE:
            try:
                result = self._line_now() if want == _LINE else self._some_now(self._want_size)
            except BaseException as exc:
                self._waiter = None
                waiter.set_exception(exc)
                self._resume_handler(waiter)
                return
            if result is None:
                return  # not yet: keep waiting
        self._waiter = None
        waiter.set_result(result)
        self._resume_handler(waiter)

    def _resume_handler(self, read: asyncio.Future[Any]) -> None:
        if self._driver is not None:
            self._driver.resume_inline(read)

    # -- the reader: called by the handler --------------------------------------------

    def exception(self) -> BaseException | None:
        return self._exception

    def at_eof(self) -> bool:
        """True when the peer has finished sending and everything has been read."""
        return self._eof and not self._buffer

    async def readline(self) -> bytes:
        """One line including ``\\n``; at EOF whatever is left (b"" when nothing)."""
        waiter = self._readline_future()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._keep_if_handed_over(waiter)
            raise

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are there (all until EOF when ``n < 0``)."""
        if n < 0:
            return await self._read_all()
        waiter = self._read_future(n)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._keep_if_handed_over(waiter)
            raise

    def _readline_future(self) -> asyncio.Future[bytes]:
        if self._buffer or self._eof:
            line = self._line_now()
            if line is not None:
                return _done(self._loop, line)
        if self._waiter is None and self.timeout is None and not self._is_reading_paused:
            # _wait() inlined: this is every ping-pong message's read
            waiter = self._waiter = self._create_future()
            self._want = _LINE
            return waiter
        return self._wait(_LINE, 0)

    def _read_future(self, n: int) -> asyncio.Future[bytes]:
        if n > 0 and not self._buffer and not self._eof:
            if self._waiter is None and self.timeout is None and not self._is_reading_paused:
                # _wait() inlined, as in readline()
                waiter = self._waiter = self._create_future()
                self._want = _SOME
                self._want_size = n
                return waiter
            return self._wait(_SOME, n)
        if n == 0:
            return _done(self._loop, b"")
        data = self._some_now(n)
        if data is None:
            return self._wait(_SOME, n)
        return _done(self._loop, data)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Data up to and including ``separator``.

        At EOF first: ``asyncio.IncompleteReadError`` with the partial data. Separator
        beyond ``limit``: ``LineTooLongError``, the data left in the buffer.
        """
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        buffer = self._buffer
        start = 0
        while True:
            end = buffer.find(separator, start)
            if end >= 0:
                if end > self.limit:
                    raise self._too_long(end)
                return self._take(end + len(separator))
            if len(buffer) > self.limit:
                raise self._too_long(len(buffer))
            if self._eof:
                if self._exception is not None:
                    raise self._exception
                raise asyncio.IncompleteReadError(self._take(len(buffer)), None)
            start = max(0, len(buffer) + 1 - len(separator))
            await self._wait(_WAKE, 0)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if EOF comes first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if self._eof:
                if self._exception is not None:
                    raise self._exception
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), n)
            await self._wait(_WAKE, 0)
        return self._take(n)

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        waiter = self._readline_future()
        try:
            line = await waiter
        except asyncio.CancelledError:
            self._keep_if_handed_over(waiter)
            raise
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
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end >= 0:
            if end > self.limit:
                del buffer[: end + 1]
                raise self._too_long(end)
            return self._take(end + 1)
        if len(buffer) > self.limit:
            size = len(buffer)
            buffer.clear()
            raise self._too_long(size)
        if self._eof:
            if self._exception is not None and not buffer:
                raise self._exception
            return self._take(len(buffer))
        return None

    def _some_now(self, n: int) -> bytes | None:
        """Up to ``n`` buffered bytes (b"" at EOF); None: wait for some."""
        if self._buffer:
            return self._take(min(n, len(self._buffer)))
        if self._eof:
            if self._exception is not None:
                raise self._exception
            return b""
        return None

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        if size == len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        if self._is_reading_paused:
            self._resume_if_room()
        return data

    def _resume_if_room(self) -> None:
        if len(self._buffer) <= self.limit:
            self._resume_reading()

    def _wait(self, want: int, size: int) -> asyncio.Future[Any]:
        """A future the protocol completes with what ``want`` asks for (or an error)."""
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("another coroutine is already waiting for data on this reader")
        if self._is_reading_paused:
            self._resume_reading()  # the caller needs more than is buffered
        waiter = self._waiter = self._create_future()
        self._want = want
        self._want_size = size
        if self.timeout is not None:
            # One timer per connection, checked lazily, instead of a TimerHandle created
            # and cancelled per message: a read costs one clock reading.
            self._wait_started = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(
                    self._wait_started + self.timeout, self._check_timeout
                )
        return waiter

    def _keep_if_handed_over(self, waiter: asyncio.Future[bytes]) -> None:
        """The read's task was cancelled after its data was handed over (a timeout firing
        in that same instant): put the data back in front of the buffer, lose nothing.

        Written out in each read rather than wrapped in a helper coroutine: that would
        be one more coroutine per message on the ping-pong path."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._buffer[:0] = waiter.result()

    def _check_timeout(self) -> None:
        self._timer = None
        waiter = self._waiter
        timeout = self.timeout
        if waiter is None or waiter.done() or timeout is None:
            return  # nobody waits: the next wait arms the timer again
        deadline = self._wait_started + timeout
        if self._loop.time() + _TIMER_SLACK_SECONDS >= deadline:
            self._waiter = None
            waiter.set_exception(ReadTimeoutError(f"no data for {timeout} s"))
            self._resume_handler(waiter)
        else:  # the read that timer was for got its data; this one started later
            self._timer = self._loop.call_at(deadline, self._check_timeout)

    def _resume_reading(self) -> None:
        self._is_reading_paused = False
        if not self._is_connection_lost:
            self._transport.resume_reading()

    def _too_long(self, size: int) -> LineTooLongError:
        return LineTooLongError(
            f"line of more than {self.limit} bytes (max_line_length); {size} bytes seen", size
        )

    # -- for the writer ----------------------------------------------------------------

    def _writable(self) -> asyncio.Future[None]:
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        return waiter

    def _closed_future(self) -> asyncio.Future[None]:
        if self._closed is None:
            self._closed = self._loop.create_future()
            if self._is_connection_lost:
                self._closed.set_result(None)
        return self._closed
