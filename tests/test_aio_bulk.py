"""Bulk transfer in the async mode: sized reads of held chunks, ``readinto``, ``sendfile``.

The reads are checked against every split of the incoming data (hypothesis) on both
implementations (pure Python and compiled), through the same in-process harness as
``test_aio_both_paths.py``. ``sendfile`` runs on real servers on both event loops:
whole files, ranges, files shorter than ``count``, a client that stops reading, a
cancellation mid-transfer (what arrives is an exact prefix, then the end of the
connection), and the copying fallback over TLS (certificates from ``trustme``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer, StreamReader
from sockserve.aio.fastpath import Implementation
from sockserve.aio.sendfile import send_file, send_file_by_copy, uses_tls
from sockserve.aio.streams import receive_buffer
from sockserve.testing import serve_in_thread
from test_aio import LOOPS, _run
from test_aio_both_paths import _serve

TIMEOUT = 10.0
FILE_BYTES = 3 * 1024 * 1024 + 12345  # a few socket buffers, not a multiple of anything


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


# -- sized reads and readinto, every split --------------------------------------------

#: The implementation fixture is the same for every example: no reset needed.
EVERY_SPLIT = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
payloads = st.binary(min_size=0, max_size=600)
cut_lists = st.lists(st.integers(min_value=0, max_value=600), max_size=12)
#: How chunks arrive: uvloop's ``data_received``, or the standard library's loop reading
#: into ``get_buffer`` (where a chunk larger than a waiting ``read(n)`` is cut in pieces).
FEEDS = ["data_received", "buffer"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=payloads, cuts=cut_lists, size=st.integers(min_value=1, max_value=300))
@pytest.mark.parametrize("feed", FEEDS)
def test_readinto_returns_every_byte_once_for_every_split(
    implementation: Implementation, feed: str, data: bytes, cuts: list[int], size: int
) -> None:
    async def handler(reader: StreamReader, writer: Any) -> list[int]:
        buffer = bytearray(size)
        counts = []
        while count := await reader.readinto(buffer):
            assert 0 < count <= size
            writer.write(bytes(buffer[:count]))
            counts.append(count)
        assert await reader.readinto(buffer) == 0  # and it stays at the end
        return counts

    async def main() -> None:
        _counts, written = await _serve(implementation, handler, _splits(data, cuts), feed=feed)
        assert written == data

    asyncio.run(main())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=0, max_size=600).map(lambda b: b.replace(b"\n", b"") + b"\n" + b),
    cuts=cut_lists,
    steps=st.lists(st.sampled_from(["read", "into", "line", "exactly"]), min_size=1, max_size=8),
    size=st.integers(min_value=1, max_value=200),
)
@pytest.mark.parametrize("feed", FEEDS)
def test_mixed_reads_lose_and_repeat_nothing_for_every_split(
    implementation: Implementation,
    feed: str,
    data: bytes,
    cuts: list[int],
    steps: list[str],
    size: int,
) -> None:
    """read(n), readinto, readline and readexactly in turn, whatever the chunks: a held
    chunk is handed out in pieces, and spilled into the line buffer when a line is
    wanted, without losing or repeating a byte."""

    async def handler(reader: StreamReader, writer: Any) -> None:
        buffer = bytearray(size)
        for turn in range(10_000):
            step = steps[turn % len(steps)]
            if step == "read":
                piece = await reader.read(size)
                assert len(piece) <= size
            elif step == "into":
                piece = bytes(buffer[: await reader.readinto(buffer)])
            elif step == "line":
                piece = await reader.readline()
            else:
                try:
                    piece = await reader.readexactly(size)
                except asyncio.IncompleteReadError as exc:
                    piece = exc.partial
            writer.write(piece)
            if not piece and reader.at_eof():
                return

    async def main() -> None:
        _, written = await _serve(
            implementation, handler, _splits(data, cuts), limit=4096, feed=feed
        )
        assert written == data

    asyncio.run(main())


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=1, max_size=3000),
    cuts=cut_lists,
    size=st.integers(min_value=1, max_value=700),
)
def test_sized_reads_of_buffered_reads_lose_and_repeat_nothing(
    implementation: Implementation, data: bytes, cuts: list[int], size: int
) -> None:
    """The standard library's loop: a read larger than the waiting ``read(size)`` is cut
    into pieces of ``size`` (the last one shorter) as it is copied out."""

    async def handler(reader: StreamReader, writer: Any) -> list[int]:
        lengths = []
        while piece := await reader.read(size):
            assert len(piece) <= size
            lengths.append(len(piece))
            writer.write(piece)
        return lengths

    async def main() -> None:
        chunks = _splits(data, [cut * 5 for cut in cuts])
        _lengths, written = await _serve(implementation, handler, chunks, feed="buffer")
        assert written == data

    asyncio.run(main())


def test_a_buffered_read_is_cut_into_pieces_of_the_waiting_read(
    implementation: Implementation,
) -> None:
    data = bytes(range(256)) * 4  # 1,024 bytes, one read; pieces of 300: 300, 300, 300, 124

    async def handler(reader: StreamReader, writer: Any) -> list[int]:
        lengths = []
        while piece := await reader.read(300):
            lengths.append(len(piece))
            writer.write(piece)
        return lengths

    async def main() -> None:
        lengths, written = await _serve(implementation, handler, [data], feed="buffer")
        assert lengths == [300, 300, 300, 124]
        assert written == data

    asyncio.run(main())


def test_read_hands_out_a_fitting_chunk_itself_and_slices_a_larger_one(
    implementation: Implementation,
) -> None:
    big = bytes(range(256)) * 64  # 16 KiB
    small = b"s" * 100
    seen: list[bytes] = []

    async def handler(reader: StreamReader, writer: Any) -> None:
        seen.append(await reader.read(len(small)))  # arrives exactly: handed as is
        while piece := await reader.read(4096):  # 16 KiB held, handed in 4 slices
            seen.append(piece)

    async def main() -> None:
        await _serve(implementation, handler, [small, big])

    asyncio.run(main())
    assert seen[0] is small or seen[0] == small
    assert [len(piece) for piece in seen[1:]] == [4096] * 4
    assert b"".join(seen[1:]) == big


def test_readinto_rejects_a_read_only_buffer(implementation: Implementation) -> None:
    async def handler(reader: StreamReader, writer: Any) -> None:
        with pytest.raises(TypeError):
            await reader.readinto(b"read only")

    async def main() -> None:
        await _serve(implementation, handler, [b"x"])

    asyncio.run(main())


# -- a real server: readinto and sendfile ---------------------------------------------


@pytest.fixture(scope="module")
def content_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "content.bin"
        path.write_bytes(os.urandom(FILE_BYTES))
        yield path


class RangeServer(AsyncStreamRequestHandler):
    """Reads ``offset count\\n`` (count "-": to the end), sends that range of the file
    with ``writer.sendfile``, and reports the result on the server's ``results`` queue."""

    async def handle(self) -> None:
        server: Any = self.server
        offset_text, count_text = (await self.reader.readline()).split()
        count = None if count_text == b"-" else int(count_text)
        with open(server.path, "rb") as file:
            try:
                sent = await self.writer.sendfile(file, int(offset_text), count)
            except BaseException as exc:
                server.results.put((type(exc), file.tell()))
                raise
            server.results.put((sent, file.tell()))


@contextlib.contextmanager
def range_server(event_loop: str, path: Path) -> Iterator[Any]:
    server: Any = AsyncTCPServer(("127.0.0.1", 0), RangeServer, event_loop=event_loop)
    server.path = path
    server.results = queue.Queue()
    with serve_in_thread(server):
        yield server


def _fetch(address: Any, request: bytes, *, receive_buffer_bytes: int | None = None) -> bytes:
    with socket.socket() as client:
        client.settimeout(TIMEOUT)
        if receive_buffer_bytes is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        client.connect(address)
        client.sendall(request)
        return _read_to_end(client)


def _read_to_end(client: socket.socket) -> bytes:
    received = bytearray()
    try:
        while chunk := client.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass  # an aborted connection: what arrived before still counts
    return bytes(received)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_sendfile_sends_ranges_whole_files_and_short_files(
    event_loop: str, content_file: Path
) -> None:
    content = content_file.read_bytes()
    cases = [
        (0, None, content),
        (1000, 5000, content[1000:6000]),
        (FILE_BYTES - 10, 1000, content[-10:]),  # the file is shorter than count
        (FILE_BYTES, None, b""),  # nothing left
    ]
    with range_server(event_loop, content_file) as server:
        for offset, count, expected in cases:
            request = f"{offset} {'-' if count is None else count}\n".encode()
            assert _fetch(server.server_address, request) == expected
            sent, position = server.results.get(timeout=TIMEOUT)
            assert sent == len(expected)
            assert position == offset + len(expected)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_sendfile_waits_for_a_client_that_stops_reading(
    event_loop: str, content_file: Path
) -> None:
    """A client that stops reading with a small receive window: sendfile waits (partial
    sends), and delivers everything, in order, once the client reads again."""
    content = content_file.read_bytes()
    with range_server(event_loop, content_file) as server, socket.socket() as client:
        client.settimeout(TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.server_address)
        client.sendall(b"0 -\n")
        first = client.recv(1000)
        with pytest.raises(queue.Empty):  # not finished: the client holds it back
            server.results.get(timeout=0.3)
        received = first + _read_to_end(client)
        assert received == content
        assert server.results.get(timeout=TIMEOUT) == (len(content), len(content))


@pytest.mark.parametrize("event_loop", LOOPS)
def test_sendfile_to_a_client_that_leaves_raises_a_connection_error(
    event_loop: str, content_file: Path
) -> None:
    with range_server(event_loop, content_file) as server, socket.socket() as client:
        client.settimeout(TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.server_address)
        client.sendall(b"0 -\n")
        client.recv(1000)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the server is told at its next send
        error, _position = server.results.get(timeout=TIMEOUT)
        assert issubclass(error, ConnectionError)
        assert server.stats().active == 0 or _wait_idle(server)


def _wait_idle(server: Any) -> bool:
    done = threading.Event()
    for _ in range(100):
        if server.stats().active == 0:
            return True
        done.wait(0.05)
    return False


class CancelledMidTransfer(AsyncStreamRequestHandler):
    """Sends the whole file under a short timeout: the client is not reading yet, so it
    is cancelled mid-transfer; then tells the client to read."""

    async def handle(self) -> None:
        server: Any = self.server
        await self.reader.readline()
        with open(server.path, "rb") as file:
            try:
                async with asyncio.timeout(0.3):
                    await self.writer.sendfile(file)
            except TimeoutError:
                server.results.put(("cancelled", file.tell()))
            else:
                server.results.put(("finished", file.tell()))


@pytest.mark.parametrize("event_loop", LOOPS)
def test_sendfile_cancelled_mid_transfer_leaves_an_exact_prefix(
    event_loop: str, content_file: Path
) -> None:
    content = content_file.read_bytes()
    server: Any = AsyncTCPServer(("127.0.0.1", 0), CancelledMidTransfer, event_loop=event_loop)
    server.path = content_file
    server.results = queue.Queue()
    with serve_in_thread(server), socket.socket() as client:
        client.settimeout(TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.server_address)
        client.sendall(b"go\n")
        outcome, position = server.results.get(timeout=TIMEOUT)
        received = _read_to_end(client)  # then the server closes: the end of the stream
    assert outcome == "cancelled"
    assert 0 < len(received) < len(content)
    assert received == content[: len(received)]  # nothing twice, no gap
    assert position == len(received)  # the file position: after the last byte sent


@pytest.mark.parametrize("event_loop", LOOPS)
def test_shutdown_during_sendfile_closes_the_connection(
    event_loop: str, content_file: Path
) -> None:
    content = content_file.read_bytes()
    server: Any = AsyncTCPServer(("127.0.0.1", 0), RangeServer, event_loop=event_loop)
    server.path = content_file
    server.results = queue.Queue()
    with socket.socket() as client:
        with serve_in_thread(server):
            client.settimeout(TIMEOUT)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(server.server_address)
            client.sendall(b"0 -\n")
            client.recv(1)
        received = _read_to_end(client)  # the server has shut down: the stream ends
    error, position = server.results.get(timeout=TIMEOUT)
    assert error is asyncio.CancelledError
    assert len(received) + 1 <= position < len(content)
    assert received == content[1 : len(received) + 1]


class IntoEcho(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        buffer = bytearray(10_000)
        view = memoryview(buffer)
        while count := await self.reader.readinto(view):
            self.writer.write(bytes(view[:count]))
            await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_readinto_echoes_a_stream_on_a_real_server(event_loop: str) -> None:
    payload = os.urandom(500_000)
    server = AsyncTCPServer(("127.0.0.1", 0), IntoEcho, event_loop=event_loop)
    with serve_in_thread(server), socket.create_connection(server.server_address) as client:
        client.settimeout(TIMEOUT)
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(1)))
        sender.start()
        received = _read_to_end(client)
        sender.join(TIMEOUT)
    assert received == payload


# -- TLS: the copying fallback --------------------------------------------------------


@pytest.mark.parametrize("event_loop", LOOPS)
@pytest.mark.parametrize("direct", [False, True], ids=["send_file", "send_file_by_copy"])
def test_sendfile_over_tls_copies(event_loop: str, direct: bool, content_file: Path) -> None:
    """On a TLS transport the kernel cannot send the file: the bounded copy does, with the
    same result and file position (asyncio's own loop.create_server(ssl=...))."""
    content = content_file.read_bytes()
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def send(transport: Any, reader: StreamReader) -> None:
            with open(content_file, "rb") as file:
                outcome["tls"] = uses_tls(transport)
                sender = send_file_by_copy if direct else send_file
                outcome["sent"] = await sender(transport, reader.flow, file, 100, None)
                outcome["position"] = file.tell()
            transport.close()
            done.set_result(None)

        class Sending(StreamReader):
            __slots__ = ()

            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                loop.create_task(send(transport, self))

        def make_protocol() -> StreamReader:
            return Sending(loop, receive_buffer())

        server = await loop.create_server(make_protocol, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client_reader, client_writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
            )
            received = bytearray()
            while chunk := await asyncio.wait_for(client_reader.read(1 << 20), TIMEOUT):
                received += chunk
            outcome["received"] = bytes(received)
            client_writer.close()
            await asyncio.wait_for(done, TIMEOUT)

    _run(main(), event_loop)
    assert outcome["tls"] is True
    assert outcome["received"] == content[100:]
    assert outcome["sent"] == len(content) - 100
    assert outcome["position"] == len(content)
