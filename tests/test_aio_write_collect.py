"""Collected writes: what a handler writes during one step reaches the transport when the
step ends, together, in order (``flow.py``, "Collected writes"), on both implementations.

Each case drives a handler through the implementation's ``InlineDriver`` on a transport
that records every call, and feeds ``data_received`` from loop callbacks as a transport
would; a last case runs a real server on both event loops.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pytest

from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer, StreamReader
from sockserve.aio.fastpath import Implementation
from sockserve.aio.flow import WRITE_COLLECT_LIMIT_BYTES
from sockserve.aio.inline import INLINE_RESUMPTION
from sockserve.aio.streams import receive_buffer
from sockserve.testing import serve_in_thread
from test_aio import LOOPS, _FakeTransport, _run

pytestmark = pytest.mark.skipif(not INLINE_RESUMPTION, reason="this Python has no _enter_task")

TIMEOUT = 10.0

Handler = Callable[[StreamReader, Any], Coroutine[Any, Any, Any]]


class _RecordingTransport(_FakeTransport):
    """Every write, as ("write", bytes) or ("writelines", [bytes, ...]), in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        self.calls.append(("writelines", [bytes(data) for data in list_of_data]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def sent(self) -> bytes:
        return b"".join(
            data if name == "write" else b"".join(data)
            for name, data in self.calls
            if name in ("write", "writelines")
        )


async def _serve(
    implementation: Implementation, handler: Handler, chunks: list[bytes]
) -> tuple[Any, _RecordingTransport]:
    """Run ``handler(reader, writer)`` inline, feed ``chunks`` then EOF from callbacks."""
    loop = asyncio.get_running_loop()
    reader = implementation.reader_class(loop, receive_buffer(), limit=64)
    transport = _RecordingTransport()
    reader.connection_made(transport)
    writer = implementation.writer_class(transport, reader)
    context = contextvars.copy_context()

    async def connection() -> Any:
        driver = implementation.driver_class(handler(reader, writer), reader, context)
        return await driver

    task = loop.create_task(connection(), context=context)
    for chunk in chunks:
        await asyncio.sleep(0)
        loop.call_soon(reader.data_received, chunk)
    await asyncio.sleep(0)
    loop.call_soon(reader.eof_received)
    result = await asyncio.wait_for(task, TIMEOUT)
    return result, transport


@pytest.mark.parametrize("event_loop", LOOPS)
def test_the_writes_of_one_step_reach_the_transport_together_in_order(
    implementation: Implementation, event_loop: str
) -> None:
    async def echo_in_pieces(reader: StreamReader, writer: Any) -> None:
        while data := await reader.read(4):
            writer.write(data)
            await writer.drain()

    async def main() -> None:
        # one chunk of 10 bytes: three reads served from it in one step, then a wait
        _, transport = await _serve(implementation, echo_in_pieces, [b"0123456789", b"ab"])
        assert transport.calls == [
            ("writelines", [b"0123", b"4567", b"89"]),
            ("write", b"ab"),
        ]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_step_that_suspends_elsewhere_sends_first(
    implementation: Implementation, event_loop: str
) -> None:
    seen_before_sleep: list[list[tuple[str, Any]]] = []

    async def greet_then_wait(reader: StreamReader, writer: Any) -> None:
        writer.write(b"hello ")
        writer.write(b"there\n")
        transport = writer._transport  # (not .transport: that stops collecting)
        await asyncio.sleep(0)  # a suspension that is not a read
        seen_before_sleep.append(list(transport.calls))
        writer.write(b"bye\n")
        # returns: the last step's write is sent as the handler ends

    async def main() -> None:
        _, transport = await _serve(implementation, greet_then_wait, [])
        assert seen_before_sleep == [[("writelines", [b"hello ", b"there\n"])]]
        assert transport.sent() == b"hello there\nbye\n"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_other_buffers_and_other_tasks_write_at_once_after_what_is_collected(
    implementation: Implementation, event_loop: str
) -> None:
    async def mixed(reader: StreamReader, writer: Any) -> None:
        writer.write(b"a")
        buffer = bytearray(b"b")
        writer.write(buffer)  # may change once write returns: not collected
        buffer[:] = b"X"
        writer.write(b"c")

        async def elsewhere() -> None:
            writer.write(b"d")  # another task: not the handler's step

        await asyncio.get_running_loop().create_task(elsewhere())

    async def main() -> None:
        _, transport = await _serve(implementation, mixed, [])
        assert transport.calls == [
            ("write", b"a"),
            ("write", b"b"),
            ("write", b"c"),
            ("write", b"d"),
        ]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_step_that_never_suspends_sends_at_the_collect_limit(
    implementation: Implementation, event_loop: str
) -> None:
    piece = b"x" * (WRITE_COLLECT_LIMIT_BYTES // 4)
    counts: list[int] = []

    async def flood(reader: StreamReader, writer: Any) -> None:
        for _ in range(6):
            writer.write(piece)
        counts.append(len(writer._transport.calls))
        counts.append(writer._flow.pending_bytes)

    async def main() -> None:
        _, transport = await _serve(implementation, flood, [])
        assert counts == [1, 2 * len(piece)]  # four sent at the limit, two held
        assert [len(data) for _, data in transport.calls] == [4, 2]
        assert transport.sent() == piece * 6

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_close_write_eof_and_the_transport_send_what_is_collected_first(
    implementation: Implementation, event_loop: str
) -> None:
    async def closes(reader: StreamReader, writer: Any) -> None:
        writer.write(b"one")
        assert writer.transport.calls == [("write", b"one")]  # taking it flushed
        writer.write(b"two")  # no longer collected: the caller holds the transport
        assert writer.transport.calls[-1] == ("write", b"two")
        writer.close()

    async def main() -> None:
        _, transport = await _serve(implementation, closes, [])
        assert transport.calls == [("write", b"one"), ("write", b"two"), ("close", None)]

    _run(main(), event_loop)

    async def closes_at_once(reader: StreamReader, writer: Any) -> None:
        writer.write(b"last")
        writer.close()

    async def main_close() -> None:
        _, transport = await _serve(implementation, closes_at_once, [])
        assert transport.calls == [("write", b"last"), ("close", None)]

    _run(main_close(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_handler_that_raises_still_sends_what_it_wrote(
    implementation: Implementation, event_loop: str
) -> None:
    writers: list[Any] = []

    async def fails(reader: StreamReader, writer: Any) -> None:
        writers.append(writer)
        await reader.read(10)
        writer.write(b"partial ")
        writer.write(b"reply")
        raise ValueError("handler bug")

    async def main() -> None:
        with pytest.raises(ValueError, match="handler bug"):
            await _serve(implementation, fails, [b"request"])
        assert writers[0]._transport.calls == [("writelines", [b"partial ", b"reply"])]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_collected_writes_to_a_failed_transport_are_dropped_quietly(
    implementation: Implementation, event_loop: str
) -> None:
    async def writes_after_failure(reader: StreamReader, writer: Any) -> int:
        writer._transport.closing = True  # as a transport that failed mid-step
        writer.write(b"lost")
        return 7

    async def main() -> None:
        result, transport = await _serve(implementation, writes_after_failure, [])
        assert result == 7
        assert transport.calls == []

    _run(main(), event_loop)


class _PieceEcho(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        while data := await self.reader.read(1000):
            self.writer.write(data)
            await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_real_server_echoes_every_byte_in_order(event_loop: str) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, read back in 1,000-byte pieces
    server = AsyncTCPServer(("127.0.0.1", 0), _PieceEcho, event_loop=event_loop)
    with (
        serve_in_thread(server),
        socket.create_connection(server.server_address, timeout=TIMEOUT) as client,
    ):

        def send() -> None:  # while the main thread reads: no deadlock on full buffers
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        try:
            while chunk := client.recv(1 << 16):
                received += chunk
        finally:
            sender.join(TIMEOUT)
    assert received == payload
