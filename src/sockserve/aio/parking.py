"""How a read of the handler's own waits without a loop future: it parks inline.

While the connection's ``InlineDriver`` (``inline.py``) runs the handler, a read that has
to wait yields the reader itself (``parked_read``); the driver parks the task, and the
protocol callback that completes the read leaves the result (or the error) on the
reader and calls the driver's ``resume_parked``, which resumes the handler right there.
A generator rather than a loop future: creating and completing a future per message
cost about 0.2 µs on uvloop (measured), a third of what separated the handler from a
bare ``Protocol``. The reader (``streams.py``) owns the state; this module holds the
protocol between the reader and its driver, and the constants naming what a pending
read waits for.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..errors import ReadTimeoutError

if TYPE_CHECKING:
    from .streams import StreamReader

__all__ = ["NO_DRIVER", "Driver", "check_timeout", "keep_if_handed_over", "parked_read", "wait"]

#: A waiting read's idle timer may fire this early (uvloop rounds timers to
#: milliseconds): within it, the deadline counts as reached rather than re-armed.
_TIMER_SLACK_SECONDS = 0.001

#: What a pending read waits for (``StreamReader._want``): any change (the coroutine
#: re-checks), a whole line, up to ``_want_size`` bytes, or bytes to copy into the
#: buffer ``readinto`` was given. ``_fastpath.c`` knows the first three by value.
WAKE, LINE, SOME, INTO = 0, 1, 2, 3


class Driver(Protocol):
    """What resumes a handler whose read parked inline: its ``InlineDriver``."""

    def resume_parked(self) -> None:
        """The parked read is complete (its result is on the reader): resume the handler."""


class _NoDriver:
    """The reader's driver while none is attached: reads never park then."""

    def resume_parked(self) -> None:
        raise RuntimeError("a read parked inline, but no InlineDriver runs the handler")


NO_DRIVER: Driver = _NoDriver()


@types.coroutine
def parked_read(reader: StreamReader) -> Generator[StreamReader, None, Any]:
    """A read of the handler's own, waiting while its ``InlineDriver`` runs it.

    It yields the reader itself, which tells the driver to park the connection's task.
    The result is taken from the reader, not from ``send``, so a resumption with
    ``send(None)``, as a task would do, gets it too.
    """
    try:
        yield reader
    except BaseException:  # cancelled or closed while waiting: the read gives up
        reader._give_up_parked_read()
        raise
    error = reader._parked_error
    if error is not None:
        reader._parked_error = None
        raise error
    result = reader._parked_result
    reader._parked_result = None
    return result


def wait(reader: StreamReader, want: int, size: int) -> Awaitable[Any]:
    """An awaitable the protocol completes with what ``want`` asks for (or an error).

    The handler's own read (``_driving``) parks inline; a read from any other task
    gets a loop future.
    """
    waiter = reader._waiter
    if waiter is not None and (waiter is reader or not cast("asyncio.Future[Any]", waiter).done()):
        raise RuntimeError("another coroutine is already waiting for data on this reader")
    if reader.flow.is_reading_paused:
        reader.flow.resume_reading()  # the caller needs more than is buffered
    reader._want = want
    reader._want_size = size
    if reader.timeout is not None:
        # One timer per connection, checked lazily, instead of a TimerHandle created
        # and cancelled per message: a read costs one clock reading.
        reader._wait_started = reader._loop.time()
        if reader._timer is None:
            reader._timer = reader._loop.call_at(
                reader._wait_started + reader.timeout, reader._check_timeout
            )
    if reader._driving:
        reader._waiter = reader
        return parked_read(reader)
    future = reader._waiter = reader._create_future()
    return future


def keep_if_handed_over(reader: StreamReader, read: Awaitable[Any]) -> None:
    """The read's task was cancelled after its data was handed over (a timeout firing
    in that same instant): put the data back in front of the buffer, lose nothing.
    (A parked read does this itself, in ``_parked_read``.)

    Written out in each read rather than wrapped in a helper coroutine: that would
    be one more coroutine per message on the ping-pong path."""
    if (
        isinstance(read, asyncio.Future)
        and read.done()
        and not read.cancelled()
        and read.exception() is None
        and read.result()
    ):
        reader._put_back(read.result())


def check_timeout(reader: StreamReader) -> None:
    reader._timer = None
    waiter = reader._waiter
    timeout = reader.timeout
    if (
        waiter is None
        or timeout is None
        or (waiter is not reader and cast("asyncio.Future[Any]", waiter).done())
    ):
        return  # nobody waits: the next wait arms the timer again
    deadline = reader._wait_started + timeout
    if reader._loop.time() + _TIMER_SLACK_SECONDS >= deadline:
        reader._complete(waiter, None, ReadTimeoutError(f"no data for {timeout} s"))
    else:  # the read that timer was for got its data; this one started later
        reader._timer = reader._loop.call_at(deadline, reader._check_timeout)
