"""Resume a connection's handler from its protocol callbacks: no task wake-up per message.

Why: a handler that awaits ``reader.readline()`` in an ordinary task pays, per message, a
done-callback scheduled with ``call_soon``, a turn of the event loop and a task step
before it runs again; a ``Protocol`` that writes from ``data_received`` pays none of them.
That difference was most of the distance between sockserve's async handlers and a bare
uvloop ``Protocol`` in ping-pong (see docs/performance.md).

How: the connection's task awaits an ``InlineDriver``, which resumes the handler coroutine
itself (``send``/``throw``) instead of letting the task do it. While it does, the reader
knows (``StreamReader._driving``) that a read which has to wait comes from the handler's
own chain, and parks it inline: no loop future, the read yields the reader itself
(``parking.parked_read``). The driver then parks the task on a future of its own. The
reader, once it has completed the read (data, end of stream, error, idle timeout),
leaves the result on itself and calls ``resume_parked``, which resumes the handler right
there, inside the protocol callback. Anything else the handler awaits (a sleep, a lock, a
drain that has to wait, another task) is handed to the task, which waits for it as it
would for any coroutine; the handler's next read parks the task again. A read from any
other task waits in a loop future, as in asyncio. A connection whose handler only reads
and writes is served from the protocol callbacks alone, once its task has started it.

What handlers can rely on, inline or not:

* ``asyncio.current_task()`` is the connection's task (it is entered as the loop's
  current task around each inline resumption), so ``asyncio.timeout()``,
  ``asyncio.TaskGroup`` and the watchdog work unchanged;
* what the handler writes during a step (``writer.write``) reaches the transport, in
  order, when the step ends (the driver calls ``flow.flush_writes()``), so several
  writes between two suspensions are sent together (``flow.py``);
* context variables are the task's own (each resumption runs in the task's context);
* cancelling the task (``shutdown()``, ``drain()`` at its deadline, ``asyncio.timeout``)
  cancels the read it waits in, and the cancellation is delivered by the task, in order:
  once one is pending, arriving data is left in the reader, never handed to the handler
  ahead of it (``asyncio.timeout`` depends on that).

Costs: nothing per message beyond resuming the coroutine; per connection, one future for
each time the task parks. It relies on ``asyncio.tasks._enter_task``/``_leave_task``
(present in 3.11-3.13, the functions ``Task`` itself uses); where they are missing the
server awaits the handler in its task as before (``INLINE_RESUMPTION`` is False). On a
loop with a task factory (``asyncio.eager_task_factory`` runs a new task's first step
inside ``create_task``, so inside the handler's), reads wait in futures and each one is
handed to the task: correct, only slower.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

from .parking import NO_DRIVER
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
        "_may_park",
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
        #: Whether the handler's reads may park inline (see ``__await__``).
        self._may_park = False
        #: The future the task waits on while the handler is parked in a read.
        self._parking: asyncio.Future[None] | None = None
        self._outcome: int | None = None
        self._payload: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        # The reader's loop is the running one: naming it spares current_task() the
        # get_running_loop() call, a getpid system call on 3.11, once per connection.
        task = asyncio.current_task(self._reader._loop)
        if task is None:
            raise RuntimeError("InlineDriver must be awaited by a task")
        self._task = task
        loop = self._loop = task.get_loop()
        # With a task factory (say asyncio.eager_task_factory), create_task() may run a
        # new task's first step inside the handler's: a read started there must wait in a
        # future, not park, so reads wait in futures throughout (correct, only slower).
        self._may_park = loop.get_task_factory() is None
        handler = self._handler
        reader = self._reader
        reader._driver = self
        flow = reader.flow
        error: BaseException | None = None  # to throw into the handler when it resumes
        try:
            while True:
                reader._driving = self._may_park
                try:
                    if error is None:
                        yielded = handler.send(None)
                    else:
                        yielded, error = handler.throw(error), None
                except StopIteration as stop:
                    return stop.value
                finally:
                    reader._driving = False
                    if flow.pending_writes and not flow.holding:  # the step's writes, together
                        flow.flush_writes()
                if yielded is reader:  # parked in a read: resumed by the reader's callback
                    parking = self._park()
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
            reader._driver = NO_DRIVER  # no cycle left between reader and driver
            self._parking = self._payload = None

    def _park(self) -> asyncio.Future[None]:
        assert self._loop is not None
        parking = self._parking = self._loop.create_future()
        # what Future.__await__ sets before yielding: the task then waits on it
        parking._asyncio_future_blocking = True
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

        Still in a read (parked, or its resumption handed to the task): the read gives
        up where the error lands in it, putting back data it was handed
        (``_parked_read``). Handed something else meanwhile: cancel that, as a task
        cancels the future it awaits. Finished meanwhile: its result stands, as a task's
        does when it finishes before the cancellation.
        """
        outcome, payload = self._outcome, self._payload
        self._outcome = self._payload = None
        if outcome == _HANDOFF:
            cancel = getattr(payload, "cancel", None)
            if cancel is not None:
                cancel()
        elif outcome in (_RETURNED, _RAISED):
            return outcome, payload
        return _RESUME, None

    def resume_parked(self) -> None:
        """The reader completed the parked read: resume the handler now, inside the
        reader's callback, unless the task must resume it (see below)."""
        parking = self._parking
        if parking is None or parking.done():
            return  # a cancellation is on its way: the task resumes the handler with it
        loop, task = self._loop, self._task  # both set when parked
        try:
            _enter_task(loop, task)  # type: ignore[arg-type]
        except RuntimeError:  # called from inside another task's step: let ours resume it
            self._hand_to_task(_RESUME, None)
            return
        reader = self._reader
        reader._driving = True  # (a read parks only if reads may park)
        try:
            yielded = self._context.run(self._send, None)
        except StopIteration as stop:
            self._hand_to_task(_RETURNED, stop.value)
        except BaseException as exc:
            self._hand_to_task(_RAISED, exc)
        else:
            if yielded is not reader:  # parked again in its next read, or not
                self._hand_to_task(_HANDOFF, yielded)
        finally:
            reader._driving = False
            try:
                flow = reader.flow
                if flow.pending_writes and not flow.holding:  # the step's writes, together
                    flow.flush_writes()
            finally:
                _leave_task(loop, task)  # type: ignore[arg-type]

    #: The method above, under the name the compiled fast path calls for the cases it
    #: does not take itself (``fastpath.py``'s compiled subclass overrides ``resume_parked``).
    _resume_parked_slowly = resume_parked

    def _hand_to_task(self, outcome: int, payload: Any) -> None:
        self._outcome = outcome
        self._payload = payload
        parking = self._parking
        if parking is not None and not parking.done():
            parking.set_result(None)


async def await_handler(work: Any) -> Any:
    """A coroutine around any awaitable, for a handler whose ``__await__`` is its own."""
    return await work
