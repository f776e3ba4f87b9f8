"""The same behavioural cases against both implementations of the async streams, in one run.

``fastpath.PURE_PYTHON`` (the Python classes) and ``fastpath.compiled()`` (their subclasses
with the per-message methods in C) are built side by side in one process, so each case
below runs against both whatever ``SOCKSERVE_PURE_PYTHON`` says (tools/test.py still runs
the other async tests twice, once per setting). The compiled parameter is skipped when
the extension was not built. Each case drives a handler through the implementation's
``InlineDriver`` on a fake transport, as ``connections.py`` does, feeding
``data_received`` from plain loop callbacks, as a transport would.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sockserve.aio import AsyncLineTooLongError, LineTooLongError, StreamReader
from sockserve.aio.fastpath import PURE_PYTHON, Implementation
from sockserve.aio.inline import INLINE_RESUMPTION
from sockserve.aio.streams import receive_buffer
from test_aio import LOOPS, _FakeTransport, _run

pytestmark = pytest.mark.skipif(not INLINE_RESUMPTION, reason="this Python has no _enter_task")

TIMEOUT = 10.0

Handler = Callable[[StreamReader, Any], Coroutine[Any, Any, Any]]


class _WritingTransport(_FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: Any) -> None:
        self.written += data


def _fill(reader: StreamReader, chunk: bytes) -> None:
    """Deliver ``chunk`` as the standard library's loop does: ``get_buffer``, a read
    into it (as much as fits), ``buffer_updated``; again until all of it is in."""
    while chunk:
        buffer = reader.get_buffer(-1)
        count = min(len(buffer), len(chunk))
        buffer[:count] = chunk[:count]
        reader.buffer_updated(count)
        chunk = chunk[count:]


async def _serve(
    implementation: Implementation,
    handler: Handler,
    chunks: list[bytes],
    *,
    limit: int = 64,
    feed: str = "data_received",
) -> tuple[Any, bytes]:
    """Run ``handler(reader, writer)`` inline, feed ``chunks`` then EOF from callbacks;
    return what the handler returned and what it wrote. ``feed``: "data_received" (as
    uvloop delivers) or "buffer" (``get_buffer``/``buffer_updated``, as the standard
    library's loop does)."""
    loop = asyncio.get_running_loop()
    reader = implementation.reader_class(loop, receive_buffer(), limit=limit)
    transport = _WritingTransport()
    reader.connection_made(transport)
    writer = implementation.writer_class(transport, reader)
    context = contextvars.copy_context()

    async def connection() -> Any:
        driver = implementation.driver_class(handler(reader, writer), reader, context)
        return await driver

    task = loop.create_task(connection(), context=context)
    for chunk in chunks:
        await asyncio.sleep(0)
        if feed == "buffer":
            loop.call_soon(_fill, reader, chunk)
        else:
            loop.call_soon(reader.data_received, chunk)
    await asyncio.sleep(0)
    loop.call_soon(reader.eof_received)
    result = await asyncio.wait_for(task, TIMEOUT)
    return result, bytes(transport.written)


def test_the_implementations_are_the_python_classes_and_their_subclasses(
    implementation: Implementation,
) -> None:
    assert issubclass(implementation.reader_class, PURE_PYTHON.reader_class)
    assert issubclass(implementation.writer_class, PURE_PYTHON.writer_class)
    assert issubclass(implementation.driver_class, PURE_PYTHON.driver_class)
    if implementation.is_compiled:
        # the compiled methods live in the subclasses; the Python classes keep their own
        for cls, names in (
            (implementation.reader_class, ("data_received", "readline", "read")),
            (implementation.writer_class, ("drain",)),
            (implementation.driver_class, ("resume_parked",)),
        ):
            for name in names:
                assert name in vars(cls)
                assert inspect.isfunction(vars(cls.__mro__[1])[name])


async def _echo_lines(reader: StreamReader, writer: Any) -> int:
    count = 0
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
        count += 1
    return count


CHUNKINGS = {
    "one line per chunk": [b"one\n", b"two\n", b"three\n"],
    "split lines": [b"on", b"e\ntw", b"o\nthree", b"\n"],
    "pipelined": [b"one\ntwo\nthree\n"],
    "unterminated last line": [b"one\ntwo\n", b"three"],
}


@pytest.mark.parametrize("event_loop", LOOPS)
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_readline_echo(implementation: Implementation, event_loop: str, chunking: str) -> None:
    chunks = CHUNKINGS[chunking]

    async def main() -> None:
        count, written = await _serve(implementation, _echo_lines, chunks)
        assert written == b"".join(chunks)
        assert count == 3

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_read_n_echo(implementation: Implementation, event_loop: str) -> None:
    async def handler(reader: StreamReader, writer: Any) -> list[bytes]:
        pieces = []
        while data := await reader.read(4):
            pieces.append(data)
            writer.write(data)
            await writer.drain()
        return pieces

    async def main() -> None:
        pieces, written = await _serve(implementation, handler, [b"abc", b"defghij", b"k"])
        assert written == b"abcdefghijk"
        assert all(0 < len(piece) <= 4 for piece in pieces)

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_line_over_the_limit_raises_and_the_next_line_still_reads(
    implementation: Implementation, event_loop: str
) -> None:
    async def handler(reader: StreamReader, writer: Any) -> list[Any]:
        outcomes: list[Any] = []
        try:
            await reader.readline()
        except LineTooLongError as exc:
            outcomes.append(type(exc))
        outcomes.append(await reader.readline())
        return outcomes

    async def main() -> None:
        outcomes, _ = await _serve(implementation, handler, [b"x" * 20 + b"\n", b"ok\n"], limit=8)
        assert outcomes == [AsyncLineTooLongError, b"ok\n"]
        assert issubclass(AsyncLineTooLongError, asyncio.LimitOverrunError)

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_readuntil_and_readexactly(implementation: Implementation, event_loop: str) -> None:
    async def handler(reader: StreamReader, writer: Any) -> list[Any]:
        first = await reader.readuntil(b";;")
        second = await reader.readexactly(3)
        try:
            await reader.readexactly(10)
        except asyncio.IncompleteReadError as exc:
            return [first, second, exc.partial]
        return [first, second, None]

    async def main() -> None:
        result, _ = await _serve(implementation, handler, [b"ab;", b";cdef", b"gh"])
        assert result == [b"ab;;", b"cde", b"fgh"]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_drain_waits_while_writing_is_paused(
    implementation: Implementation, event_loop: str
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = implementation.reader_class(loop, receive_buffer())
        transport = _WritingTransport()
        reader.connection_made(transport)
        writer = implementation.writer_class(transport, reader)
        assert writer.drain().done()
        reader.pause_writing()
        waiting = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        reader.resume_writing()
        await asyncio.wait_for(waiting, TIMEOUT)
        reader.pause_writing()
        lost = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0)
        reader.connection_lost(ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(lost, TIMEOUT)

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_reading_pauses_past_twice_the_limit_and_resumes(
    implementation: Implementation, event_loop: str
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = implementation.reader_class(loop, receive_buffer(), limit=8)
        transport = _WritingTransport()
        reader.connection_made(transport)
        reader.data_received(b"abcdefgh\n" * 2)  # 18 bytes > 2 * 8: pause
        assert transport.paused
        assert reader.flow.is_reading_paused
        assert await reader.readline() == b"abcdefgh\n"  # 9 left, still over 8
        assert transport.paused
        assert await reader.read(2) == b"ab"  # 7 left: resume
        assert not transport.paused
        assert not reader.flow.is_reading_paused

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_cancelled_parked_read_loses_nothing(
    implementation: Implementation, event_loop: str
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = implementation.reader_class(loop, receive_buffer())
        reader.connection_made(_WritingTransport())
        context = contextvars.copy_context()
        started = loop.create_future()

        async def handler() -> bytes:
            started.set_result(None)
            try:
                await reader.readline()
            except asyncio.CancelledError:
                pass
            return await reader.readline()

        driver = implementation.driver_class(handler(), reader, context)

        async def connection() -> Any:
            return await driver

        task = loop.create_task(connection(), context=context)
        await started
        await asyncio.sleep(0)
        task.cancel()
        reader.data_received(b"kept\n")  # arrives with the cancellation pending
        assert await asyncio.wait_for(task, TIMEOUT) == b"kept\n"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_reads_are_coroutines_to_asyncio(implementation: Implementation, event_loop: str) -> None:
    async def main() -> None:
        reader = implementation.reader_class(asyncio.get_running_loop(), receive_buffer())
        reader.connection_made(_WritingTransport())
        line = asyncio.ensure_future(reader.readline())
        await asyncio.sleep(0)
        reader.data_received(b"one\n")
        assert await asyncio.wait_for(line, TIMEOUT) == b"one\n"
        some = asyncio.create_task(reader.read(3))
        await asyncio.sleep(0)
        reader.data_received(b"abcdef")
        assert await asyncio.wait_for(some, TIMEOUT) == b"abc"
        reader.eof_received()
        assert await reader.read() == b"def"
        assert reader.at_eof()

    _run(main(), event_loop)
