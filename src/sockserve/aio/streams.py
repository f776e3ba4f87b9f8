"""Lean asyncio streams for handlers: the reader *is* the connection's protocol.

Design: asyncio's ``StreamReader`` sits behind a ``StreamReaderProtocol``; every chunk
comes from a fresh ``recv`` (256 KiB per call on the stdlib loop, which glibc serves with
mmap/mremap/munmap each time: about 27 µs of server CPU per 64-byte echo, measured here)
and reaches the reader through two more layers. Here the reader is an
``asyncio.BufferedProtocol``: the transport reads into one receive buffer shared by all
connections of the server (``recv_into``, no allocation), ``buffer_updated`` appends the
new bytes to this connection's ``bytearray`` and wakes a waiting read with one future. A
read that finds its data already buffered returns without creating a future. Writes go
straight to the transport.

Trade-off: the surface is the one handlers call on asyncio's ``StreamReader`` and
``StreamWriter`` (``read``, ``readline``, ``readexactly``, ``readuntil``, ``at_eof``,
``write``, ``writelines``, ``drain``, ``close``, ``is_closing``, ``wait_closed``,
``get_extra_info``...), not their private attributes; ``readuntil`` takes one separator.

Resource limits: a line longer than ``limit`` raises ``LineTooLongError``; a reader that
buffers more than ``2 * limit`` unread bytes pauses the transport (so a client cannot
make the server hold more than that plus one receive chunk); ``drain()`` waits while
the transport's write buffer is over its high-water mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import SockserveError

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


class LineTooLongError(SockserveError, asyncio.LimitOverrunError, ValueError):
    """A line (or ``readuntil`` chunk) longer than the reader's ``limit``.

    It is a ``ValueError`` because asyncio's ``readline`` raises one here, and a
    ``LimitOverrunError`` because asyncio's ``readuntil`` raises that, so existing
    ``except`` clauses keep matching.
    """


class ReadTimeoutError(SockserveError, TimeoutError):
    """No data arrived within the handler's ``timeout`` seconds."""


def receive_buffer() -> memoryview:
    """A receive buffer for ``StreamReader``; one per server, shared by its connections.

    Sharing is safe because a transport fills it and calls ``buffer_updated`` in one go,
    which copies the bytes out before any other connection reads.
    """
    return memoryview(bytearray(RECEIVE_CHUNK_BYTES))


class StreamReader(asyncio.BufferedProtocol):
    """The receiving half of a connection: its transport's protocol and its reader.

    ``limit``: the longest line accepted (``LineTooLongError`` beyond it).
    ``timeout``: seconds a read may wait for data (``ReadTimeoutError``); None waits.
    The write flow-control state lives here too, because the transport reports it to
    its protocol; ``StreamWriter.drain`` asks for it.
    """

    __slots__ = (
        "limit",
        "timeout",
        "_loop",
        "_receive_view",
        "_buffer",
        "_waiter",
        "_timer",
        "_eof",
        "_exception",
        "_transport",
        "_is_reading_paused",
        "_is_writing_paused",
        "_drain_waiters",
        "_is_connection_lost",
        "_closed",
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
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._exception: BaseException | None = None
        self._transport: Any = None
        self._is_reading_paused = False
        self._is_writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._is_connection_lost = False
        self._closed: asyncio.Future[None] | None = None

    # -- the protocol: called by the transport ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        # The per-message path: kept to a few attribute reads, no further Python calls.
        buffer = self._buffer
        buffer += self._receive_view[:nbytes]
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not waiter.done():
                waiter.set_result(None)
        if len(buffer) > 2 * self.limit and not self._is_reading_paused:
            self._is_reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open: a half-closed client still gets its reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_connection_lost = True
        self._eof = True
        if exc is not None:
            self._exception = exc
        self._wake_reader()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._is_writing_paused = True

    def resume_writing(self) -> None:
        self._is_writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the reader: called by the handler --------------------------------------------

    def exception(self) -> BaseException | None:
        return self._exception

    def at_eof(self) -> bool:
        """True when the peer has finished sending and everything has been read."""
        return self._eof and not self._buffer

    async def readline(self) -> bytes:
        """One line including ``\\n``; at EOF whatever is left (b"" when nothing)."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                if end > self.limit:
                    del buffer[: end + 1]
                    raise self._too_long(end)
                end += 1
                if end == len(buffer):  # the usual case: exactly one line is buffered
                    line = bytes(buffer)
                    buffer.clear()
                else:
                    line = bytes(buffer[:end])
                    del buffer[:end]
                if self._is_reading_paused:
                    self._resume_if_room()
                return line
            if len(buffer) > self.limit:
                size = len(buffer)
                buffer.clear()
                raise self._too_long(size)
            if self._eof:
                if self._exception is not None and not buffer:
                    raise self._exception
                return self._take(len(buffer))
            if self._waiter is None and self.timeout is None and not self._is_reading_paused:
                # _data_arrival() inlined for the per-message path
                waiter = self._waiter = self._loop.create_future()
                await waiter
            else:
                await self._data_arrival()

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
            await self._data_arrival()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are there (all until EOF when ``n < 0``)."""
        if n == 0:
            return b""
        if n < 0:
            blocks = []
            while block := await self.read(self.limit):
                blocks.append(block)
            return b"".join(blocks)
        while not self._buffer:
            if self._eof:
                if self._exception is not None:
                    raise self._exception
                return b""
            await self._data_arrival()
        return self._take(min(n, len(self._buffer)))

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if EOF comes first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if self._eof:
                if self._exception is not None:
                    raise self._exception
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), n)
            await self._data_arrival()
        return self._take(n)

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

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

    def _data_arrival(self) -> asyncio.Future[None]:
        """A future done when bytes, EOF, an error or the idle timeout arrive."""
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("another coroutine is already waiting for data on this reader")
        if self._is_reading_paused:
            self._resume_reading()  # the caller needs more than is buffered
        waiter = self._waiter = self._loop.create_future()
        if self.timeout is not None:
            self._timer = self._loop.call_later(self.timeout, self._time_out, waiter)
        return waiter

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if self._waiter is waiter:
            self._waiter = None
            self._timer = None
        if not waiter.done():
            waiter.set_exception(ReadTimeoutError(f"no data for {self.timeout} s"))

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


class StreamWriter:
    """The sending half of a connection, with asyncio's ``StreamWriter`` interface.

    ``write(data)`` hands the bytes to the transport at once (it sends what the kernel
    takes and buffers the rest): it *is* the transport's ``write``, bound once, so a
    message costs no extra call. ``await drain()`` waits while that buffer is over the
    high-water mark, and raises if the connection is lost.
    """

    __slots__ = ("_transport", "_reader", "write")

    def __init__(self, transport: asyncio.Transport, reader: StreamReader) -> None:
        self._transport = transport
        self._reader = reader
        self.write: Callable[[bytes | bytearray | memoryview], None] = transport.write

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._transport.writelines(data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        """Close after the buffered data is sent; see ``wait_closed``."""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    async def wait_closed(self) -> None:
        await self._reader._closed_future()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below the high-water mark."""
        reader = self._reader
        if reader._is_writing_paused or self._transport.is_closing():
            if not reader._is_connection_lost:
                if reader._is_writing_paused:
                    await reader._writable()
                    return
                await asyncio.sleep(0)  # closing: let connection_lost run, then report it
            if reader._is_connection_lost:
                raise reader._exception or ConnectionResetError("Connection lost")

    def __repr__(self) -> str:
        return f"<sockserve StreamWriter transport={self._transport!r}>"
