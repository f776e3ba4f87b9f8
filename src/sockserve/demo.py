"""Demo services for ``sockserve demo NAME``: small, complete, and safe to expose on loopback.

The classic small services, over streams (TCP or Unix sockets): echo (RFC 862), discard
(RFC 863), chargen (RFC 864), daytime (RFC 867), and upper, a line echo in upper case.
Each has an async twin for ``--mode async``, built on first use so that asyncio loads
only then. Nothing a client sends can make a demo hold more than one read's worth of
memory, and chargen stops after ``CHARGEN_MAX_BYTES``, so a demo cannot be turned into
a traffic amplifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache, partial

from .handlers import StreamRequestHandler

log = logging.getLogger("sockserve.demo")

#: Bytes read per ``recv``: echo and discard have no framing, so they take what arrives.
ECHO_CHUNK_BYTES = 64 * 1024
#: The longest line ``upper`` reads at once; a longer one is answered in pieces.
UPPER_MAX_LINE_BYTES = 64 * 1024
#: RFC 864's pattern: lines of 72 characters from the 95 printable ASCII characters, each
#: line starting one character further on.
CHARGEN_LINE_CHARACTERS = 72
CHARGEN_ALPHABET = bytes(range(0x20, 0x7F))
#: Chargen stops (and closes) after this much per connection: RFC 864 sends until the
#: client closes, which makes an open chargen a well-known amplifier; 1 MiB shows it works.
CHARGEN_MAX_BYTES = 1024 * 1024


def chargen_lines() -> Iterator[bytes]:
    """RFC 864's rotating pattern, CRLF-terminated, forever."""
    doubled = CHARGEN_ALPHABET * 2
    start = 0
    while True:
        yield doubled[start : start + CHARGEN_LINE_CHARACTERS] + b"\r\n"
        start = (start + 1) % len(CHARGEN_ALPHABET)


def daytime_line() -> bytes:
    """RFC 867 leaves the format open; this is UTC, human-readable, one line."""
    return datetime.now(UTC).strftime("%A, %B %d, %Y %H:%M:%S UTC\r\n").encode("ascii")


class _Demo(StreamRequestHandler):
    """Logs the connection; a peer that vanishes (or a drain's abort) is routine here."""

    def handle(self) -> None:
        log.info("connection from %s", self.client_address)
        try:
            self.serve()
        except ConnectionError as exc:
            log.info("connection from %s ended: %s", self.client_address, exc)

    def serve(self) -> None:
        raise NotImplementedError


class EchoHandler(_Demo):
    """Echo every byte back until the client closes its side (RFC 862)."""

    def serve(self) -> None:
        while data := self.request.recv(ECHO_CHUNK_BYTES):
            self.request.sendall(data)


class UpperHandler(_Demo):
    """Echo each line back in upper case."""

    def serve(self) -> None:
        while line := self.rfile.readline(UPPER_MAX_LINE_BYTES):
            self.wfile.write(line.upper())


class DiscardHandler(_Demo):
    """Read and drop everything until the client closes (RFC 863)."""

    def serve(self) -> None:
        while self.request.recv(ECHO_CHUNK_BYTES):
            pass


class DaytimeHandler(_Demo):
    """Send the time as one line, then close (RFC 867)."""

    def serve(self) -> None:
        self.wfile.write(daytime_line())


class ChargenHandler(_Demo):
    """Send the RFC 864 pattern until the client closes or ``CHARGEN_MAX_BYTES`` went."""

    def serve(self) -> None:
        sent = 0
        for line in chargen_lines():
            if sent + len(line) > CHARGEN_MAX_BYTES:
                return
            self.wfile.write(line)
            sent += len(line)


DEMOS: dict[str, type[StreamRequestHandler]] = {
    "echo": EchoHandler,
    "upper": UpperHandler,
    "discard": DiscardHandler,
    "daytime": DaytimeHandler,
    "chargen": ChargenHandler,
}


@cache
def async_demos() -> dict[str, type]:
    """The async twins of ``DEMOS``, by name; built on first use (asyncio loads then)."""
    from .aio import AsyncStreamRequestHandler

    class _AsyncDemo(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            log.info("connection from %s", self.client_address)
            try:
                await self.serve()
            except ConnectionError as exc:
                log.info("connection from %s ended: %s", self.client_address, exc)

        async def serve(self) -> None:
            raise NotImplementedError

    class AsyncEchoHandler(_AsyncDemo):
        """Echo every byte back until the client closes its side (RFC 862)."""

        async def serve(self) -> None:
            while data := await self.reader.read(ECHO_CHUNK_BYTES):
                self.writer.write(data)
                await self.writer.drain()

    class AsyncUpperHandler(_AsyncDemo):
        """Echo each line back in upper case."""

        async def serve(self) -> None:
            while line := await self.reader.readline():
                self.writer.write(line.upper())
                await self.writer.drain()

    class AsyncDiscardHandler(_AsyncDemo):
        """Read and drop everything until the client closes (RFC 863)."""

        async def serve(self) -> None:
            while await self.reader.read(ECHO_CHUNK_BYTES):
                pass

    class AsyncDaytimeHandler(_AsyncDemo):
        """Send the time as one line, then close (RFC 867)."""

        async def serve(self) -> None:
            self.writer.write(daytime_line())
            await self.writer.drain()

    class AsyncChargenHandler(_AsyncDemo):
        """Send the RFC 864 pattern until the client closes or the byte cap is reached."""

        async def serve(self) -> None:
            sent = 0
            for line in chargen_lines():
                if sent + len(line) > CHARGEN_MAX_BYTES:
                    return
                self.writer.write(line)
                await self.writer.drain()
                sent += len(line)

    return {
        "echo": AsyncEchoHandler,
        "upper": AsyncUpperHandler,
        "discard": AsyncDiscardHandler,
        "daytime": AsyncDaytimeHandler,
        "chargen": AsyncChargenHandler,
    }


def async_echo_handler() -> type:
    """The async twin of ``EchoHandler`` (kept for callers of the first demo module)."""
    return async_demos()["echo"]


def _async_demo(name: str) -> type:
    return async_demos()[name]


#: Demos for ``--mode async``, by name: each entry builds (once) its handler class.
ASYNC_DEMOS: dict[str, Callable[[], type]] = {name: partial(_async_demo, name) for name in DEMOS}
