"""The async mode: socketserver's model with ``async def handle()`` on one event loop.

::

    class Echo(AsyncStreamRequestHandler):
        async def handle(self):
            async for line in self.reader:
                self.writer.write(line)
                await self.writer.drain()

    with AsyncTCPServer(("127.0.0.1", 8000), Echo) as server:
        server.serve_forever()

The data path mirrors the synchronous one: listening socket (``listeners``) → admission
stages (``connection``) → one task per request (``aio.serve_loop``, ``aio.connections``)
→ handler (``aio.handlers``) over lean streams (``aio.streams``). ``aio.loop`` picks the
event loop (uvloop when installed); ``aio.watchdog`` names handlers that block it.
"""

from __future__ import annotations

import socket

from .handlers import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
    AsyncStreamRequestHandler,
)
from .loop import EVENT_LOOPS
from .servers import AsyncServerMixIn, AsyncTCPServer, AsyncUDPServer
from .streams import (
    AsyncLineTooLongError,
    LineTooLongError,
    ReadTimeoutError,
    StreamReader,
)
from .writer import StreamWriter

__all__ = [
    "AsyncServerMixIn",
    "AsyncTCPServer",
    "AsyncUDPServer",
    "AsyncBaseRequestHandler",
    "AsyncStreamRequestHandler",
    "AsyncDatagramRequestHandler",
    "StreamReader",
    "StreamWriter",
    "LineTooLongError",
    "AsyncLineTooLongError",
    "ReadTimeoutError",
    "EVENT_LOOPS",
]

if hasattr(socket, "AF_UNIX"):
    from .servers import AsyncUnixDatagramServer, AsyncUnixStreamServer

    __all__ += ["AsyncUnixStreamServer", "AsyncUnixDatagramServer"]
