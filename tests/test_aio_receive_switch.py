"""Bulk reads on real connections, where the standard library's loop switches between
``recv(n)`` and its shared buffer (``aio/receive_switch.py``), and uvloop does not.

What a handler relies on, checked on both loops and both implementations: every byte
comes back once and in order whatever the client's write sizes, no ``read(n)`` returns
more than ``n``, and a connection that moves from bulk reads to lines, ``readexactly``
or ``readinto`` (and back) loses nothing. On the stdlib loop it is also checked that the
switch is really made (its private names are looked up at run time; a Python that
renamed them would silently keep the slower path).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer
from sockserve.aio.receive_switch import BULK_READ_BYTES, RECV_MAX_BYTES
from sockserve.testing import serve_in_thread
from test_aio import LOOPS

TIMEOUT = 10.0
READ_BYTES = 65536


class PhasedEcho(AsyncStreamRequestHandler):
    """A line ``<mode> <count>`` starts a phase: echo ``count`` bytes read with ``mode``
    (``read``, ``small``, ``exactly``, ``into``), then the next phase; ``lines N`` echoes
    N lines. What the handler saw goes to the server's ``seen`` list."""

    async def handle(self) -> None:
        reader, writer = self.reader, self.writer
        seen: dict[str, Any] = {"largest_read": 0, "recv_sizes": set()}
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        while header := await reader.readline():
            mode, count_text = header.split()
            count = int(count_text)
            if mode == b"lines":
                for _ in range(count):
                    writer.write(await reader.readline())
                await writer.drain()
                continue
            left = count
            into = bytearray(10_000)
            while left:
                if mode == b"read":
                    data = await reader.read(min(READ_BYTES, left))
                    seen["largest_read"] = max(seen["largest_read"], len(data))
                    seen["recv_sizes"].add(reader._recv_size)
                elif mode == b"small":
                    data = await reader.read(min(1000, left))
                elif mode == b"exactly":
                    data = await reader.readexactly(min(5000, left))
                else:
                    got = await reader.readinto(memoryview(into)[: min(len(into), left)])
                    data = bytes(into[:got])
                if not data:
                    return
                left -= len(data)
                writer.write(data)
                await writer.drain()


@pytest.fixture(params=LOOPS)
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    instance = AsyncTCPServer(("127.0.0.1", 0), PhasedEcho, event_loop=request.param)
    instance.seen = []  # type: ignore[attr-defined]
    with serve_in_thread(instance):
        yield instance


def _exchange(address: Any, script: list[tuple[bytes, bytes]], sizes: list[int]) -> bytes:
    """Send each (header, body) in writes cut to ``sizes`` (cycled) from a thread, read
    everything echoed until the server closes; the echoed bytes."""
    client = socket.create_connection(address, timeout=TIMEOUT)
    stream = b"".join(header + body for header, body in script)
    cuts = iter(sizes * (len(stream) // max(1, min(sizes)) + 1))
    failure: list[BaseException] = []

    def send() -> None:
        try:
            position = 0
            while position < len(stream):
                size = next(cuts)
                client.sendall(stream[position : position + size])
                position += size
            client.shutdown(socket.SHUT_WR)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    with client:
        while chunk := client.recv(1 << 20):
            received += chunk
    sender.join(TIMEOUT)
    assert not sender.is_alive()
    assert not failure
    return bytes(received)


def _bulk(mode: bytes, body: bytes) -> tuple[bytes, bytes]:
    return b"%s %d\n" % (mode, len(body)), body


def test_a_bulk_echo_returns_every_byte_once_in_order(server: Any) -> None:
    body = os.urandom(3 * 1024 * 1024 + 777)
    assert _exchange(server.server_address, [_bulk(b"read", body)], [65536]) == body
    assert 0 < server.seen[0]["largest_read"] <= READ_BYTES


def test_phases_of_every_kind_of_read_lose_and_repeat_nothing(server: Any) -> None:
    rng = random.Random(1234)
    bodies = [rng.randbytes(size) for size in (700_000, 20_000, 300_001, 150_000, 90_000)]
    lines = b"".join(b"line %d\n" % number for number in range(200))
    script = [
        _bulk(b"read", bodies[0]),
        (b"lines 200\n", lines),
        _bulk(b"read", bodies[1]),
        _bulk(b"into", bodies[2]),
        _bulk(b"read", bodies[3]),
        _bulk(b"exactly", bodies[4]),
        _bulk(b"small", bodies[0][:5000]),
        _bulk(b"read", bodies[2]),
    ]
    expected = b"".join([bodies[0], lines, *bodies[1:], bodies[0][:5000], bodies[2]])
    sizes = [rng.randrange(1, 200_000) for _ in range(50)]
    assert _exchange(server.server_address, script, sizes) == expected


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 300_000), min_size=1, max_size=8))
@pytest.mark.parametrize("event_loop", LOOPS)
def test_every_split_of_a_bulk_stream_comes_back_whole(event_loop: str, sizes: list[int]) -> None:
    body = random.Random(len(sizes)).randbytes(1_000_000)
    script = [_bulk(b"read", body), (b"lines 2\n", b"one\ntwo\n"), _bulk(b"read", body[:70_000])]
    instance = AsyncTCPServer(("127.0.0.1", 0), PhasedEcho, event_loop=event_loop)
    instance.seen = []  # type: ignore[attr-defined]
    with serve_in_thread(instance):
        received = _exchange(instance.server_address, script, sizes)
    assert received == body + b"one\ntwo\n" + body[:70_000]


def test_the_stdlib_loop_receives_a_bulk_read_as_one_recv_of_its_size() -> None:
    instance = AsyncTCPServer(("127.0.0.1", 0), PhasedEcho, event_loop="asyncio")
    instance.seen = []  # type: ignore[attr-defined]
    body = os.urandom(2 * 1024 * 1024)
    with serve_in_thread(instance):
        assert _exchange(instance.server_address, [_bulk(b"read", body)], [RECV_MAX_BYTES]) == body
    # once the first read had waited, the rest were served by recv(65536)
    assert READ_BYTES in instance.seen[0]["recv_sizes"]
    assert READ_BYTES >= BULK_READ_BYTES


def test_uvloop_never_switches() -> None:
    pytest.importorskip("uvloop")
    instance = AsyncTCPServer(("127.0.0.1", 0), PhasedEcho, event_loop="uvloop")
    instance.seen = []  # type: ignore[attr-defined]
    body = os.urandom(1024 * 1024)
    with serve_in_thread(instance):
        assert _exchange(instance.server_address, [_bulk(b"read", body)], [65536]) == body
    assert instance.seen[0]["recv_sizes"] == {0}


class BigReadPingPong(AsyncStreamRequestHandler):
    """Echoes whatever ``read(65536)`` returns, noting the reader's receive size."""

    async def handle(self) -> None:
        sizes: set[int] = set()
        self.server.seen.append(sizes)  # type: ignore[attr-defined]
        while data := await self.reader.read(READ_BYTES):
            sizes.add(self.reader._recv_size)
            self.writer.write(data)
            await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_small_messages_under_a_large_read_stay_on_the_shared_buffer(event_loop: str) -> None:
    instance = AsyncTCPServer(("127.0.0.1", 0), BigReadPingPong, event_loop=event_loop)
    instance.seen = []  # type: ignore[attr-defined]
    with serve_in_thread(instance), socket.create_connection(instance.server_address) as client:
        client.settimeout(TIMEOUT)
        for number in range(200):
            message = b"ping %d\n" % number
            client.sendall(message)
            received = b""
            while len(received) < len(message):
                received += client.recv(100)
            assert received == message
    # recv(65536) per 8-byte message would allocate 64 KiB each time
    assert instance.seen[0] == {0}
