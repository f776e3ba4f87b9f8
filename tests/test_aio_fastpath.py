"""The compiled per-message path (``sockserve.aio.fastpath``) and what it must keep.

The async tests run twice (tools/test.py): with the compiled path when it was built, and
with ``SOCKSERVE_PURE_PYTHON=1``. These cases pin what only the compiled path could get
wrong: that it is in use when it should be, that what ``readline()``/``read()`` return is
a coroutine to asyncio and keeps a coroutine's rules (no step inside its own step, PEP
479, no second await, nothing lost when thrown at or dropped), and that any way of
cutting a byte stream into chunks gives the handler the same lines and bytes as the
stream itself. tools/test.py runs this file in both passes too.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve.aio import StreamReader, fastpath
from sockserve.aio.fastpath import IMPLEMENTATION
from sockserve.aio.inline import INLINE_RESUMPTION
from sockserve.aio.streams import receive_buffer
from test_aio import LOOPS, _FakeTransport, _run
from test_aio_inline import _start

#: Bounds each case: a failing one must not hang the suite.
TIMEOUT = 10.0


def test_the_compiled_path_is_in_use_exactly_when_built_and_wanted() -> None:
    built = importlib.util.find_spec("sockserve.aio._fastpath") is not None
    wanted = os.environ.get(fastpath.PURE_PYTHON_VARIABLE, "0") in ("", "0")
    expected = built and wanted and INLINE_RESUMPTION
    assert expected is fastpath.ACTIVE


@pytest.mark.parametrize("event_loop", LOOPS)
def test_reads_are_coroutines_to_asyncio(event_loop: str) -> None:
    async def main() -> None:
        reader = IMPLEMENTATION.reader_class(asyncio.get_running_loop(), receive_buffer())
        reader.connection_made(_FakeTransport())
        unawaited = reader.readline()
        assert asyncio.iscoroutine(unawaited)
        unawaited.close()  # never started: nothing to give back
        line = asyncio.ensure_future(reader.readline())
        await asyncio.sleep(0)  # the task's first step: it waits now
        reader.data_received(b"one\n")
        assert await asyncio.wait_for(line, TIMEOUT) == b"one\n"
        some = asyncio.create_task(reader.read(3))
        await asyncio.sleep(0)
        reader.data_received(b"abcdef")
        assert await asyncio.wait_for(some, TIMEOUT) == b"abc"
        assert await asyncio.wait_for(reader.read(n=2), TIMEOUT) == b"de"  # keyword
        assert await asyncio.gather(reader.read(1)) == [b"f"]
        reader.eof_received()
        assert await reader.readline() == b""
        assert await reader.read() == b""

    _run(main(), event_loop)


def _reader_of(loop: asyncio.AbstractEventLoop) -> StreamReader:
    reader = IMPLEMENTATION.reader_class(loop, receive_buffer())
    reader.connection_made(_FakeTransport())
    return reader


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_read_refuses_to_be_stepped_from_inside_its_own_step(event_loop: str) -> None:
    """As a coroutine does ("already executing"), instead of freeing what is running."""
    nested: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = _reader_of(loop)
        read = reader.readline()

        def create_future() -> asyncio.Future[Any]:  # called inside read's first step
            try:
                read.send(None)
            except ValueError as exc:
                nested.append(str(exc))
            return loop.create_future()

        reader._create_future = create_future  # type: ignore[method-assign]
        assert isinstance(read.send(None), asyncio.Future)
        read.close()

    _run(main(), event_loop)
    assert nested == ["coroutine already executing"]


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_parked_read_keeps_the_coroutine_rules(event_loop: str) -> None:
    """A StopIteration thrown in is a RuntimeError (PEP 479); a line handed over and then
    thrown at goes back into the buffer; a read a task runs cannot be awaited again."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = _reader_of(loop)
        reader._driving = True  # as while a driver runs the handler: the read parks
        read = reader.readline()
        assert read.send(None) is reader
        reader._driving = False
        reader._waiter, reader._parked_result = None, b"handed over\n"
        with pytest.raises(RuntimeError, match="StopIteration"):
            read.throw(StopIteration(7))
        assert bytes(reader._buffer) == b"handed over\n"

        task = asyncio.ensure_future(reader.readline())
        await asyncio.sleep(0)  # the task's first step: it takes the buffered line
        assert await task == b"handed over\n"
        running = reader.readline()
        task = asyncio.ensure_future(running)
        await asyncio.sleep(0)  # now it waits

        async def second() -> Any:
            return await running

        with pytest.raises(RuntimeError, match="awaited already"):
            await second()
        task.cancel()

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_parked_read_dropped_unfinished_gives_its_line_back(event_loop: str) -> None:
    async def main() -> None:
        reader = _reader_of(asyncio.get_running_loop())
        reader._driving = True
        read = reader.readline()
        assert read.send(None) is reader
        reader._driving = False
        reader._waiter, reader._parked_result = None, b"handed over\n"
        del read
        gc.collect()
        assert bytes(reader._buffer) == b"handed over\n"

    _run(main(), event_loop)


#: Chunks rich in newlines: a whole line, several, a line's start or end, none.
chunked_streams = st.lists(
    st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\xff\x00"]), min_size=1, max_size=10).map(
        b"".join
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(chunks=chunked_streams, use_readline=st.booleans(), size=st.integers(1, 50))
def test_any_chunking_gives_the_handler_the_stream(
    chunks: list[bytes], use_readline: bool, size: int
) -> None:
    """Chunks that are exactly a line (the compiled case) or not (the Python one), in
    any order: the handler's parked reads see the stream's lines and bytes, in order."""
    stream = b"".join(chunks)
    received: list[bytes] = []

    async def handler(reader: StreamReader) -> None:
        while piece := await (reader.readline() if use_readline else reader.read(size)):
            received.append(piece)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader, task = await _start(handler, limit=4096)
        for chunk in chunks:
            done = loop.create_future()
            loop.call_soon(lambda c=chunk, d=done: (reader.data_received(c), d.set_result(None)))
            await done
        loop.call_soon(reader.eof_received)
        await asyncio.wait_for(task, TIMEOUT)

    _run(main(), "asyncio")
    assert b"".join(received) == stream
    if use_readline:
        assert received == stream.splitlines(keepends=True)
    else:
        assert all(len(piece) <= size for piece in received)
