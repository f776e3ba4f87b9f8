"""Resume a connection's handler from its protocol callbacks: no task wake-up per message.

Why: a handler that awaits ``reader.readline()`` in an ordinary task pays, per message, a
done-callback scheduled with ``call_soon``, a turn of the event loop and a task step
before it runs again; a ``Protocol`` that writes from ``data_received`` pays none of them.
That difference was most of the distance between sockserve's async handlers and a bare
uvloop ``Protocol`` in ping-pong (see docs/performance.md).

How: the connection's task awaits an ``InlineDriver``, which resumes the handler coroutine
itself (``send``/``throw``) instead of letting the task do it. When the handler waits on
its own reader (the future in ``StreamReader._waiter``), the driver parks the task on a
future of its own and records the read. The reader, once it has completed that read
(data, end of stream, error, idle timeout), calls ``resume_inline``, which resumes the
handler right there, inside the protocol callback. Anything else the handler awaits (a
sleep, a lock, a drain that has to wait, another task) is handed to the task, which waits
for it as it would for any coroutine; the handler's next read on its reader parks the task
again. A connection whose handler only reads and writes is served from the protocol
callbacks alone, once its task has started it.

What handlers can rely on, inline or not:

* ``asyncio.current_task()`` is the connection's task (it is entered as the loop's
  current task around each inline resumption), so ``asyncio.timeout()``,
  ``asyncio.TaskGroup`` and the watchdog work unchanged;
* context variables are the task's own (each resumption runs in the task's context);
* cancelling the task (``shutdown()``, ``drain()`` at its deadline, ``asyncio.timeout``)
  cancels the read it waits in, and the cancellation is delivered by the task, in order:
  once one is pending, arriving data is left in the reader, never handed to the handler
  ahead of it (``asyncio.timeout`` depends on that).

Costs: nothing per message beyond resuming the coroutine; per connection, one future for
each time the task parks. It relies on ``asyncio.tasks._enter_task``/``_leave_task``
(present in 3.11-3.13, the functions ``Task`` itself uses); where they are missing the
server awaits the handler in its task as before (``INLINE_RESUMPTION`` is False).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .streams import StreamReader

try:
    from asyncio.tasks import _enter_task, _leave_task
except ImportError:  # pragma: no cover - a Python that moved them: resume in the task
    INLINE_RESUMPTION = False
else:
    INLINE_RESUMPTION = True

#: What the driver tells the parked task to do when it wakes (``InlineDriver._outcome``).
_HANDOFF, _RESUME, _RETURNED, _RAISED = range(4)


class InlineDriver:
    """Runs ``handler`` (a coroutine) for the task that awaits it; see the module notes.

    ``reader``: the connection's reader; its reads are the ones resumed inline.
    ``context``: the context the awaiting task runs in (``create_task(context=...)``).
    """

    __slots__ = (
        "_handler",
        "_send",
        "_reader",
        "_context",
        "_loop",
        "_task",
        "_parked_on",
        "_parking",
        "_outcome",
        "_payload",
    )

    def __init__(
        self,
        handler: Coroutine[Any, Any, Any],
        reader: StreamReader,
        context: contextvars.Context,
    ) -> None:
        self._handler = handler
        self._send = handler.send
        self._reader = reader
        self._context = context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        #: The reader's future the handler waits in while the task is parked, else None.
        self._parked_on: asyncio.Future[Any] | None = None
        #: The future the task waits on while the handler is resumed inline.
        self._parking: asyncio.Future[None] | None = None
        self._outcome: int | None = None
        self._payload: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("InlineDriver must be awaited by a task")
        self._task = task
        self._loop = task.get_loop()
        handler = self._handler
        reader = self._reader
        reader._driver = self
        error: BaseException | None = None  # to throw into the handler when it resumes
        try:
            while True:
                try:
                    if error is None:
                        yielded = handler.send(None)
                    else:
                        yielded, error = handler.throw(error), None
                except StopIteration as stop:
                    return stop.value
                if yielded is not None and yielded is reader._waiter:
                    parking = self._park(yielded)
                    try:
                        yield parking
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # the task was cancelled
                        error = exc
                        outcome, payload = self._take_interrupted()
                    else:
                        outcome, payload = self._take_outcome()
                    if outcome == _RETURNED:
                        return payload
                    if outcome == _RAISED:
                        raise payload
                    if outcome == _RESUME:
                        continue
                    yielded = payload  # _HANDOFF
                # Anything else the task waits for itself, as for any coroutine.
                try:
                    yield yielded
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    error = exc
        except GeneratorExit:
            handler.close()
            raise
        finally:
            reader._driver = None
            self._parked_on = self._parking = self._payload = None

    def _park(self, read: asyncio.Future[Any]) -> asyncio.Future[None]:
        assert self._loop is not None
        parking = self._parking = self._loop.create_future()
        # what Future.__await__ sets before yielding: the task then waits on it
        parking._asyncio_future_blocking = True
        self._parked_on = read
        self._outcome = None
        return parking

    def _take_outcome(self) -> tuple[int, Any]:
        """The task woke: what the inline resumption left it to do next."""
        outcome, payload = self._outcome, self._payload
        self._outcome = self._payload = None
        assert outcome is not None
        return outcome, payload

    def _take_interrupted(self) -> tuple[int, Any]:
        """The task was cancelled while parked; the caller throws that into the handler.

        Still waiting in its read: cancel the read, as a task cancels the future it
        awaits. Handed something else meanwhile: cancel that instead. Finished meanwhile:
        its result stands, as a task's does when it finishes before the cancellation.
        """
        read = self._parked_on
        if read is not None:
            self._parked_on = None
            read.cancel()  # a read already given its data puts the data back (streams.py)
            return _RESUME, None
        outcome, payload = self._take_outcome()
        if outcome == _HANDOFF:
            cancel = getattr(payload, "cancel", None)
            if cancel is not None:
                cancel()
            return _RESUME, None
        return outcome, payload

    def resume_inline(self, read: asyncio.Future[Any]) -> None:
        """The reader completed ``read``: resume the handler now if it waits in that read."""
        if read is not self._parked_on:
            return  # another reader of this stream (a task of its own), or none
        if self._parking.done():  # type: ignore[union-attr]  # set when parked
            return  # a cancellation is on its way: the task resumes the handler with it
        self._parked_on = None
        loop, task = self._loop, self._task  # both set when parked
        try:
            _enter_task(loop, task)  # type: ignore[arg-type]
        except RuntimeError:  # called from inside another task's step: let ours resume it
            self._hand_to_task(_RESUME, None)
            return
        try:
            yielded = self._context.run(self._send, None)
        except StopIteration as stop:
            self._hand_to_task(_RETURNED, stop.value)
        except BaseException as exc:
            self._hand_to_task(_RAISED, exc)
        else:
            if yielded is not None and yielded is self._reader._waiter:
                self._parked_on = yielded  # the next read: stay parked
            else:
                self._hand_to_task(_HANDOFF, yielded)
        finally:
            _leave_task(loop, task)  # type: ignore[arg-type]

    def _hand_to_task(self, outcome: int, payload: Any) -> None:
        self._outcome = outcome
        self._payload = payload
        parking = self._parking
        if parking is not None and not parking.done():
            parking.set_result(None)


async def await_handler(work: Any) -> Any:
    """A coroutine around any awaitable, for a handler whose ``__await__`` is its own."""
    return await work
