"""The battery's protocol: checksummed line requests, and the handlers that answer them.

A request is one line, ``<client>.<number> <payload>\\n``; the reply is
``<client>.<number> <crc32 of payload, 8 hex digits> <payload length>\\n``, so a reply
proves the server saw every byte of that very request. A stream connection carries any
number of requests; bytes left without a newline when the client half-closes (a
truncated request) are answered ``TRUNC <length>\\n``. A payload starting ``BIG`` is
answered with ``BIG_REPLY_BYTES`` more bytes after the reply line (what
``reset_mid_reply`` needs: the server is still writing when the client resets); one
starting ``HOLD`` keeps the handler busy ``HOLD_SECONDS``; ``BLOCK`` waits for a second
line that never comes (a handler blocked forever, for the drain deadline); ``HANG``
blocks the worker's whole process (``time.sleep``: a hung pre-fork worker).

Handlers run in the test process, in forked children, in pre-fork workers and in
``serve_process.py``'s own process, so this module imports only sockserve and the
standard library, and everything a handler records crosses processes through files
(one ``O_APPEND`` write per line: lines never interleave).
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from typing import Any

import sockserve

#: Bytes after a ``BIG`` reply's line: more than loopback's socket buffers take at once
#: (Linux starts a connection at 128 KiB each way), so the server is still writing.
BIG_REPLY_BYTES = 4 * 1024 * 1024
#: How long a ``HOLD`` request keeps its handler (and its connection slot) busy.
HOLD_SECONDS = 0.03
#: How long ``HANG`` freezes a process: longer than any worker_timeout a case sets.
HANG_SECONDS = 30.0


def request_line(client: int, number: int, payload: bytes) -> bytes:
    return b"%d.%d %s\n" % (client, number, payload)


def answer(line: bytes) -> bytes:
    """The reply to one received line (complete or truncated)."""
    if not line.endswith(b"\n"):
        return b"TRUNC %d\n" % len(line)
    ident, _, payload = line[:-1].partition(b" ")
    return b"%s %08x %d\n" % (ident, zlib.crc32(payload), len(payload))


def request_number(line: bytes) -> int:
    """The ``<number>`` of a request line; -1 if it has none."""
    ident = line.split(b" ", 1)[0]
    try:
        return int(ident.rsplit(b".", 1)[1])
    except (IndexError, ValueError):
        return -1


class HandlerFailure(Exception):
    """Raised on purpose by a handler told to fail every Nth request."""


class Behaviour:
    """What a handler does beyond answering, set per server by the case.

    ``fail_every``: raise ``HandlerFailure`` for requests whose number is a multiple
    of it (0: never). ``record_to``: a file that gets ``<pid> + <number>`` when a
    request starts and ``<pid> - <number>`` when it ends (concurrency, and which
    requests the server saw).
    """

    fail_every = 0
    record_to: str | None = None


def record(path: str | None, line: str) -> None:
    if path is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {line}\n".encode())
    finally:
        os.close(fd)


def _prepare(behaviour: type[Behaviour], line: bytes) -> tuple[bytes, bytes]:
    """The reply and what follows it; raises on a request chosen to fail."""
    number = request_number(line)
    if behaviour.fail_every and number >= 0 and number % behaviour.fail_every == 0:
        raise HandlerFailure(f"request {number} fails on purpose")
    payload = line.split(b" ", 1)[1] if b" " in line else b""
    extra = b"b" * BIG_REPLY_BYTES if payload.startswith(b"BIG") else b""
    return answer(line), extra


def stream_handler(behaviour: type[Behaviour] = Behaviour) -> Any:
    class ChecksumHandler(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                number = request_number(line)
                record(behaviour.record_to, f"+ {number}")
                try:
                    if line.startswith(b"HANG") or b" HANG" in line:
                        time.sleep(HANG_SECONDS)
                    if b" HOLD" in line:
                        time.sleep(HOLD_SECONDS)
                    if b" BLOCK" in line:
                        self.rfile.readline()  # never comes: blocked until aborted
                        return
                    reply, extra = _prepare(behaviour, line)
                    self.wfile.write(reply + extra)
                finally:
                    record(behaviour.record_to, f"- {number}")

    return ChecksumHandler


def async_stream_handler(behaviour: type[Behaviour] = Behaviour) -> Any:
    class AsyncChecksumHandler(sockserve.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            while line := await self.reader.readline():
                number = request_number(line)
                record(behaviour.record_to, f"+ {number}")
                try:
                    if b" HOLD" in line:
                        await asyncio.sleep(HOLD_SECONDS)
                    if b" BLOCK" in line:
                        await self.reader.readline()
                        return
                    reply, extra = _prepare(behaviour, line)
                    self.writer.write(reply + extra)
                    await self.writer.drain()
                finally:
                    record(behaviour.record_to, f"- {number}")

    return AsyncChecksumHandler


def datagram_handler(behaviour: type[Behaviour] = Behaviour) -> Any:
    class DatagramChecksumHandler(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            line = self.rfile.read()
            number = request_number(line)
            record(behaviour.record_to, f"+ {number}")
            try:
                self.wfile.write(_prepare(behaviour, line)[0])
            finally:
                record(behaviour.record_to, f"- {number}")

    return DatagramChecksumHandler


def async_datagram_handler(behaviour: type[Behaviour] = Behaviour) -> Any:
    class AsyncDatagramChecksumHandler(sockserve.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            line = self.rfile.read()
            number = request_number(line)
            record(behaviour.record_to, f"+ {number}")
            try:
                self.wfile.write(_prepare(behaviour, line)[0])
            finally:
                record(behaviour.record_to, f"- {number}")

    return AsyncDatagramChecksumHandler


def handler_for(*, is_stream: bool, is_async: bool, behaviour: type[Behaviour] = Behaviour) -> Any:
    if is_stream:
        return async_stream_handler(behaviour) if is_async else stream_handler(behaviour)
    return async_datagram_handler(behaviour) if is_async else datagram_handler(behaviour)
