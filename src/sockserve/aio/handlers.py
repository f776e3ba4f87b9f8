"""Async request handlers: the synchronous handlers' contract with coroutines.

A handler is instantiated once per request, and *awaiting* the instance serves it:
``await setup()``, then ``await handle()``, then ``await finish()``. ``finish()`` runs even
when ``handle()`` raised, but not when ``setup()`` did, exactly as in ``handlers.py``.
Exceptions propagate to the server, which closes the connection and reports them.
Handlers speak the protocol; they never choose concurrency and never close the
connection themselves (the server does, after ``finish``).
"""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import Any

from ..handlers import connection_detail
from .streams import DEFAULT_LINE_LIMIT, StreamReader
from .writer import StreamWriter


class AsyncBaseRequestHandler:
    """Base class for async handlers: ``self.request``, ``self.client_address``, ``self.server``.

    Override the coroutine ``handle()`` (and optionally ``setup()`` / ``finish()``).
    Never block the event loop in them: a call that holds it longer than the server's
    ``slow_callback_duration`` is logged with this handler's name.
    """

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server

    def __await__(self) -> Generator[Any, None, None]:
        return self._serve().__await__()

    async def _serve(self) -> None:
        # connections.serve_stream runs these same steps itself for a handler that does
        # not override __await__/_serve (two frames fewer per resumption): keep them alike.
        await self.setup()
        try:
            await self.handle()
        finally:
            await self.finish()

    async def setup(self) -> None:
        """Prepare for ``handle()``."""

    async def handle(self) -> None:
        """Serve the request."""

    async def finish(self) -> None:
        """Clean up after ``handle()``, even if it raised."""

    @property
    def proxy(self) -> Any:
        """The PROXY protocol header this connection came with, or None."""
        return connection_detail(self.server, self.request, "proxy")

    @property
    def tls(self) -> Any:
        """The negotiated TLS details (``sockserve.tls.TLSInfo``), or None (no TLS)."""
        return connection_detail(self.server, self.request, "tls")


class AsyncStreamRequestHandler(AsyncBaseRequestHandler):
    """A handler for stream connections with ``self.reader`` and ``self.writer``.

    They offer asyncio's ``StreamReader`` / ``StreamWriter`` interface, so the body of an
    ``asyncio.start_server`` callback moves here unchanged. ``self.request`` is the
    ``(reader, writer)`` pair.

    ``timeout``: seconds a read may wait for data; past it the read raises
    ``ReadTimeoutError`` (a ``TimeoutError``) and, unless ``handle`` catches it, the
    server closes the connection with one log line. None (default): wait forever.
    ``max_line_length``: the longest line ``reader.readline()`` accepts (newline
    excluded); a longer one raises ``LineTooLongError`` (a ``ValueError``) and, unless
    caught, the connection is closed with one logged error. Default: 64 KiB, asyncio's.

    Back-pressure: ``await self.writer.drain()`` after writing a lot; it waits while the
    client reads slower than the handler writes, so the server's buffer stays bounded.
    """

    timeout: float | None = None
    max_line_length: int = DEFAULT_LINE_LIMIT

    reader: StreamReader
    writer: StreamWriter

    async def setup(self) -> None:
        self.reader, self.writer = self.request
        self.reader.limit = self.max_line_length
        self.reader.timeout = self.timeout


class AsyncDatagramRequestHandler(AsyncBaseRequestHandler):
    """A handler for one datagram: ``self.packet``, ``self.socket``, ``rfile`` and ``wfile``.

    What the handler writes to ``wfile`` is sent back to the client as one datagram in
    ``finish()``, as ``DatagramRequestHandler`` does. Or reply at once with
    ``await self.send(data)`` (then an empty ``wfile`` sends nothing).
    ``self.socket.sendto(data, address)`` works as on a socket and never blocks.
    """

    async def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()
        self._has_sent = False

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` to the client as one datagram now."""
        self._has_sent = True
        self.socket.sendto(data, self.client_address)
        await self.socket.drain()

    async def finish(self) -> None:
        reply = self.wfile.getvalue()
        if reply or not self._has_sent:
            await self.send(reply)
