"""Demo services for ``sockserve demo NAME``: small, complete, and safe to expose on loopback."""

from __future__ import annotations

import logging

from .handlers import StreamRequestHandler

log = logging.getLogger("sockserve.demo")

#: Bytes read per ``recv``: a demo echo has no framing, so it echoes what arrives.
ECHO_CHUNK_BYTES = 64 * 1024


class EchoHandler(StreamRequestHandler):
    """Echo every byte back until the client closes its side."""

    def handle(self) -> None:
        log.info("connection from %s", self.client_address)
        try:
            while data := self.request.recv(ECHO_CHUNK_BYTES):
                self.request.sendall(data)
        except ConnectionError as exc:  # the peer left, or a drain aborted us: routine
            log.info("connection from %s ended: %s", self.client_address, exc)


def async_echo_handler() -> type:
    """The async twin of ``EchoHandler``; built on first use, so asyncio loads only then."""
    from .aio import AsyncStreamRequestHandler

    class AsyncEchoHandler(AsyncStreamRequestHandler):
        """Echo every byte back until the client closes its side."""

        async def handle(self) -> None:
            log.info("connection from %s", self.client_address)
            while data := await self.reader.read(ECHO_CHUNK_BYTES):
                self.writer.write(data)
                await self.writer.drain()

    return AsyncEchoHandler


DEMOS = {"echo": EchoHandler}
#: Demos for ``--mode async``, by name: each entry builds its handler class.
ASYNC_DEMOS = {"echo": async_echo_handler}
