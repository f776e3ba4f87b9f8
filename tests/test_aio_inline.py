"""Handlers resumed from the reader's callbacks (``sockserve.aio.inline``).

What a handler must not be able to tell: it runs in its connection's task
(``current_task()``), with the task's context variables, cancellation reaches it at the
read it waits in and before any data that arrived after it, anything else it awaits works
as in a task, and what it returns or raises is its task's result. Each case runs on the
asyncio loop and on uvloop; the reader sits on a fake transport, and data is fed from a
loop callback, as a transport does. The last cases serve real connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer, StreamReader
from sockserve.aio.fastpath import IMPLEMENTATION
from sockserve.aio.inline import INLINE_RESUMPTION
from sockserve.aio.streams import receive_buffer
from sockserve.testing import serve_in_thread
from test_aio import LOOPS, _FakeTransport, _run

pytestmark = pytest.mark.skipif(not INLINE_RESUMPTION, reason="this Python has no _enter_task")

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

Handler = Callable[[StreamReader], Coroutine[Any, Any, Any]]


async def _start(handler: Handler, limit: int = 64) -> tuple[StreamReader, asyncio.Task[Any]]:
    """Run ``handler(reader)`` through an InlineDriver in a task, as the server does."""
    loop = asyncio.get_running_loop()
    reader = IMPLEMENTATION.reader_class(loop, receive_buffer(), limit=limit)
    reader.connection_made(_FakeTransport())
    context = contextvars.copy_context()

    async def connection() -> Any:
        return await IMPLEMENTATION.driver_class(handler(reader), reader, context)

    task = loop.create_task(connection(), context=context)
    for _ in range(3):  # the task starts the handler, which parks in its first read
        await asyncio.sleep(0)
    assert not task.done()
    return reader, task


async def _from_callback(action: Callable[[], None]) -> None:
    """Run ``action`` in a plain loop callback (no task running), as transports do."""
    done = asyncio.get_running_loop().create_future()

    def callback() -> None:
        action()
        done.set_result(None)

    asyncio.get_running_loop().call_soon(callback)
    await done


def _lines_surviving_cancellation(events: list[Any]) -> Handler:
    """A handler that records each line read, and "cancelled" for a cancellation it
    survives (uncancelling its task), until the end of the stream."""

    async def handler(reader: StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except asyncio.CancelledError:
                events.append("cancelled")
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                continue
            events.append(line)
            if not line:
                return

    return handler


@pytest.mark.parametrize("event_loop", LOOPS)
def test_the_handler_runs_inside_the_callback_as_its_task_in_its_context(
    event_loop: str,
) -> None:
    seen: list[tuple[bytes, bool, str]] = []

    async def main() -> None:
        async def handler(reader: StreamReader) -> None:
            task = asyncio.current_task()
            request_id.set("handler")
            while line := await reader.readline():
                seen.append((line, asyncio.current_task() is task, request_id.get()))

        reader, task = await _start(handler)
        await _from_callback(lambda: reader.data_received(b"one\n"))
        # resumed and back in its next read before data_received returned
        assert seen == [(b"one\n", True, "handler")]
        await _from_callback(lambda: reader.data_received(b"two\n"))
        assert seen[-1] == (b"two\n", True, "handler")
        assert request_id.get() == "-"  # the handler's variable stayed in its context
        await _from_callback(reader.eof_received)
        await asyncio.wait_for(task, CLIENT_TIMEOUT)

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_pending_cancellation_comes_before_data_that_arrives_after_it(
    event_loop: str,
) -> None:
    """The asyncio.timeout race: cancelled, then data, both before the task runs."""
    events: list[Any] = []

    async def main() -> None:
        reader, task = await _start(_lines_surviving_cancellation(events))

        def cancel_then_data() -> None:
            task.cancel()
            reader.data_received(b"just after\n")

        await _from_callback(cancel_then_data)
        await _from_callback(reader.eof_received)
        await asyncio.wait_for(task, CLIENT_TIMEOUT)
        assert events == ["cancelled", b"just after\n", b""]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_cancelling_the_parked_task_cancels_the_read(event_loop: str) -> None:
    finished: list[str] = []

    async def main() -> None:
        async def handler(reader: StreamReader) -> None:
            try:
                await reader.readline()
            finally:
                finished.append("finally")

        reader, task = await _start(handler)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["finally"]
        assert reader._waiter is None or reader._waiter.cancelled()

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_other_awaits_are_handed_to_the_task_and_reads_park_again(event_loop: str) -> None:
    lines: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        go_on = loop.create_future()

        async def handler(reader: StreamReader) -> str:
            lines.append(await reader.readline())
            await asyncio.sleep(0)  # a bare yield
            await go_on  # a future nobody has completed yet
            async with asyncio.timeout(CLIENT_TIMEOUT):  # needs current_task()
                lines.append(await reader.readline())  # buffered while it waited
            lines.append(await reader.readline())  # parked again: resumed inline
            return "done"

        reader, task = await _start(handler)
        await _from_callback(lambda: reader.data_received(b"first\n"))
        await _from_callback(lambda: reader.data_received(b"second\n"))
        assert lines == [b"first\n"]
        go_on.set_result(None)
        for _ in range(3):
            await asyncio.sleep(0)
        assert lines == [b"first\n", b"second\n"]
        await _from_callback(lambda: reader.data_received(b"third\n"))
        assert lines[-1] == b"third\n"
        assert await asyncio.wait_for(task, CLIENT_TIMEOUT) == "done"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_an_exception_raised_inline_is_the_task_s(event_loop: str) -> None:
    async def main() -> None:
        async def handler(reader: StreamReader) -> None:
            line = await reader.readline()
            raise ValueError(f"bad request {line!r}")

        reader, task = await _start(handler)
        await _from_callback(lambda: reader.data_received(b"boom\n"))
        with pytest.raises(ValueError, match="bad request b'boom"):
            await asyncio.wait_for(task, CLIENT_TIMEOUT)

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_asyncio_timeout_expires_in_a_parked_read(event_loop: str) -> None:
    outcomes: list[Any] = []

    async def main() -> None:
        timed_out = asyncio.get_running_loop().create_future()

        async def handler(reader: StreamReader) -> None:
            try:
                async with asyncio.timeout(0.01):
                    await reader.readline()
            except TimeoutError:
                outcomes.append("timeout")
                timed_out.set_result(None)
            outcomes.append(await reader.readline())

        reader, task = await _start(handler)
        await asyncio.wait_for(timed_out, CLIENT_TIMEOUT)
        await _from_callback(lambda: reader.data_received(b"after the timeout\n"))
        await asyncio.wait_for(task, CLIENT_TIMEOUT)
        assert outcomes == ["timeout", b"after the timeout\n"]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_another_task_may_read_and_data_fed_from_a_task_still_arrives(event_loop: str) -> None:
    async def main() -> None:
        async def handler(reader: StreamReader) -> list[bytes]:
            first = await asyncio.create_task(reader.readline())  # another task reads
            second = await reader.readline()
            return [first, second]

        reader, task = await _start(handler)
        await _from_callback(lambda: reader.data_received(b"by a task\n"))
        for _ in range(3):
            await asyncio.sleep(0)
        # data_received called inside a task (this one): the handler's own task resumes it
        reader.data_received(b"inline\n")
        assert await asyncio.wait_for(task, CLIENT_TIMEOUT) == [b"by a task\n", b"inline\n"]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_line_handed_over_then_cancelled_goes_back_into_the_buffer(event_loop: str) -> None:
    """Data fed from inside a task is handed to the handler's own task to resume; if the
    task is cancelled before it runs, the read gives way and the line is not lost."""
    events: list[Any] = []

    async def main() -> None:
        reader, task = await _start(_lines_surviving_cancellation(events))
        reader.data_received(b"handed over\n")  # inside this task: resumed by its own
        task.cancel()  # ... which is cancelled before it runs
        await _from_callback(reader.eof_received)
        await asyncio.wait_for(task, CLIENT_TIMEOUT)
        assert events == ["cancelled", b"handed over\n", b""]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_with_a_task_factory_reads_wait_in_futures_and_still_arrive(event_loop: str) -> None:
    """A task factory may start tasks eagerly, inside the handler's step: reads must then
    wait in loop futures (a parked read would reach the wrong task)."""
    lines: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Eager tasks are the stdlib loop's (3.12+; uvloop passes arguments they refuse).
        factory = getattr(asyncio, "eager_task_factory", None) if event_loop == "asyncio" else None
        if factory is None:

            def factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
                return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        try:
            await check()
        finally:
            loop.set_task_factory(None)

    async def check() -> None:

        async def handler(reader: StreamReader) -> None:
            lines.append(await asyncio.create_task(reader.readline()))
            while line := await reader.readline():
                lines.append(line)

        reader, task = await _start(handler)
        await _from_callback(lambda: reader.data_received(b"by a task\n"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert isinstance(reader._waiter, asyncio.Future)  # the handler's own read
        await _from_callback(lambda: reader.data_received(b"by the handler\n"))
        await _from_callback(reader.eof_received)
        await asyncio.wait_for(task, CLIENT_TIMEOUT)
        assert lines == [b"by a task\n", b"by the handler\n"]

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_errors_reach_a_parked_read(event_loop: str) -> None:
    """An idle timeout and a line over the limit end the parked read with their error."""
    outcomes: list[Any] = []

    async def main() -> None:
        timed_out = asyncio.get_running_loop().create_future()

        async def handler(reader: StreamReader) -> None:
            reader.timeout = 0.01
            try:
                await reader.readline()
            except TimeoutError as exc:
                outcomes.append(type(exc).__name__)
                timed_out.set_result(None)
            reader.timeout = None
            try:
                await reader.readline()
            except ValueError as exc:
                outcomes.append(type(exc).__name__)
            outcomes.append(await reader.readline())

        reader, task = await _start(handler)
        await asyncio.wait_for(timed_out, CLIENT_TIMEOUT)
        await _from_callback(lambda: reader.data_received(b"x" * 100 + b"\n"))  # limit 64
        await _from_callback(lambda: reader.data_received(b"fine\n"))
        await asyncio.wait_for(task, CLIENT_TIMEOUT)
        assert outcomes == ["ReadTimeoutError", "AsyncLineTooLongError", b"fine\n"]

    _run(main(), event_loop)


class TaggingHandler(AsyncStreamRequestHandler):
    """Replies to each line with the connection's own tag, kept in a context variable."""

    async def setup(self) -> None:
        await super().setup()
        self.task = asyncio.current_task()

    async def handle(self) -> None:
        while line := await self.reader.readline():
            if line.startswith(b"tag "):
                request_id.set(line[4:].strip().decode())
            same_task = asyncio.current_task() is self.task
            async with asyncio.TaskGroup() as group:  # needs the current task, too
                echo = group.create_task(asyncio.sleep(0, request_id.get()))
            self.writer.write(f"{echo.result()} {same_task}\n".encode())
            await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_connections_keep_their_own_context_and_task(event_loop: str) -> None:
    server = AsyncTCPServer(("127.0.0.1", 0), TaggingHandler, event_loop=event_loop)
    with serve_in_thread(server):
        clients = [
            socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)
            for _ in range(2)
        ]
        try:
            files = [client.makefile("rwb") for client in clients]

            def ask(index: int, line: bytes) -> bytes:
                files[index].write(line)
                files[index].flush()
                return files[index].readline()

            assert ask(0, b"tag alpha\n") == b"alpha True\n"
            assert ask(1, b"hello\n") == b"- True\n"
            assert ask(1, b"tag beta\n") == b"beta True\n"
            assert ask(0, b"again\n") == b"alpha True\n"
            assert ask(1, b"again\n") == b"beta True\n"
        finally:
            for client in clients:
                client.close()
