"""The sending half of a connection: asyncio's ``StreamWriter`` interface, lean.

``write`` collects what the handler writes during one step of its own and the handler's
driver hands it to the transport when the step ends (``flow.py``, "Collected writes"):
one send for the four 64 KiB writes of an echo handler draining a 256 KB chunk, the
same one send for a ping-pong reply. Writes from any other task, and anything but a
``bytes`` object (a ``bytearray`` may change after ``write`` returns), go to the
transport at once, after what is collected. ``drain()`` is a plain method that returns
the reader's one done future unless the transport is paused or closing, so the usual
``write(); await drain()`` neither creates anything nor suspends.
The flow-control state is the connection's ``FlowControl`` (``flow.py``), which the reader,
the transport's protocol, keeps up to date; the writer takes it from ``reader.flow``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import IO, Any

from .sendfile import send_file
from .streams import StreamReader

__all__ = ["StreamWriter"]


class StreamWriter:
    """The sending half of a connection, with asyncio's ``StreamWriter`` interface.

    ``write(data)`` hands the bytes to the transport (which sends what the kernel takes
    and buffers the rest) at the latest when the handler next suspends; see the module
    notes. ``await drain()`` waits while that buffer is over the
    high-water mark, and raises if the connection is lost. ``sendfile(file)`` sends a
    file without copying it through Python where the transport allows it.
    """

    __slots__ = ("_transport", "_flow", "_reader", "_ready")

    def __init__(self, transport: asyncio.Transport, reader: StreamReader) -> None:
        self._transport = transport
        self._flow = reader.flow
        self._reader = reader
        #: ``_flow.ready`` (never replaced), one attribute lookup nearer for ``drain()``.
        self._ready = self._flow.ready

    @property
    def transport(self) -> asyncio.Transport:
        """The transport; whoever takes it may write to it, so writes stop being
        collected (what is collected goes first)."""
        self._flow.stop_collecting()
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: collected if the handler's driver runs it now, else at once."""
        flow = self._flow
        if type(data) is bytes and flow.collecting and self._reader._driving:
            if data:
                flow.pending_writes.append(data)
                flow.pending_bytes += len(data)
                if flow.pending_bytes >= flow.collect_limit:
                    flow.flush_writes()
            return
        if flow.pending_writes:
            flow.flush_writes()
        self._transport.write(data)

    #: The method above, which the compiled ``write`` calls for every case it does not
    #: take itself (``fastpath.py``'s compiled subclass overrides ``write``).
    _write_slowly = write

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._flow.flush_writes()
        self._transport.writelines(data)

    def write_eof(self) -> None:
        self._flow.stop_collecting()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        """Close after the buffered data is sent; see ``wait_closed``."""
        self._flow.stop_collecting()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    async def wait_closed(self) -> None:
        await self._flow.closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def drain(self) -> Awaitable[None]:
        """Wait until the transport's buffer is below the high-water mark.

        A plain method, not a coroutine: in the usual case (not paused, not closing) it
        returns the connection's one done future, so ``await writer.drain()`` creates no
        coroutine and never suspends.
        """
        if self._flow.is_writing_paused or self._transport.is_closing():
            return self._drain_slowly()
        return self._ready

    async def _drain_slowly(self) -> None:
        flow = self._flow
        if not flow.is_connection_lost:
            if flow.is_writing_paused:
                await flow.writable()
                return
            await asyncio.sleep(0)  # closing: let connection_lost run, then report it
        if flow.is_connection_lost:
            raise flow.exception or ConnectionResetError("Connection lost")

    async def sendfile(self, file: IO[bytes], offset: int = 0, count: int | None = None) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (None: to its end), by the
        kernel's ``sendfile`` where the connection allows it; return how many were sent
        (fewer only if the file ended). The file's position is left after them.
        Errors, partial sends and cancellation: ``sendfile.py``."""
        self._flow.flush_writes()
        return await send_file(self._transport, self._flow, file, offset, count)

    def __repr__(self) -> str:
        return f"<sockserve StreamWriter transport={self._transport!r}>"
