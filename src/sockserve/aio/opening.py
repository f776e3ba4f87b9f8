"""A connection's opening, done in the accept callback: verify it, make its transport.

Why here and not in the connection's task: the event loop calls a new transport's
``connection_made`` one loop turn after the transport is made. Made in the task, that
turn came between two of the task's steps: the task waited on the loop's future, was
woken when ``connection_made`` had run, and only then started the handler, a future, a
wake-up and a task step per connection for nothing but waiting. Made here, the
``connection_made`` call and the task's first step are queued in that order for the same
loop turn, and the task finds the transport ready (``python bench/bulk_quick.py --mode
churn``: docs/async.md, "What a connection costs").

``verify_request`` is asked here too, as the synchronous servers ask it in their accept
loop: a request it refuses never gets a task. A ``verify_request`` that is a coroutine is
awaited by the task, which then makes the transport itself, as does a TLS connection (its
handshake takes loop turns whatever is done).

How the task takes over: the loop's ``connect_accepted_socket`` is a coroutine; it is run
here up to its one wait (for ``connection_made``), and the task resumes it (``await
opening``), which costs no wait when ``connection_made`` has run, the rule.
Should the task be cancelled before it starts (``shutdown()`` in the same turn), the
coroutine is closed when the task is freed, which closes the transport and its socket.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine, Generator
from typing import Any

from ..addresses import format_address
from ..admission.tls_prelude import tls_holder
from ..serving.job import RequestJob
from .endings import (
    end_lost_before_serving,
    end_unverified,
    end_verify_error,
)
from .fastpath import IMPLEMENTATION
from .streams import StreamReader

log = logging.getLogger("sockserve.aio.serve_loop")

#: The reader class, compiled or pure Python (``fastpath.py``), as in ``connections.py``.
_Reader = IMPLEMENTATION.reader_class


class Opening:
    """What the accept callback did for a connection, for its task (``serve_stream``).

    ``verdict``: ``verify_request``'s answer: True, or an awaitable for the task to await.
    ``reader`` and ``connecting``: when it was True and the connection is plain, its
    reader and the loop's ``connect_accepted_socket`` coroutine, suspended in its wait
    for ``connection_made`` on ``waiting``; None otherwise (the task makes the transport).
    ``transport``: set instead of those when the loop made it without waiting.
    """

    __slots__ = ("verdict", "reader", "connecting", "waiting", "transport")

    def __init__(
        self,
        verdict: Any,
        reader: StreamReader | None = None,
        connecting: Coroutine[Any, Any, Any] | None = None,
        waiting: Any = None,
    ) -> None:
        self.verdict = verdict
        self.reader = reader
        self.connecting = connecting
        self.waiting = waiting
        self.transport: asyncio.Transport | None = None

    def made(self) -> asyncio.Transport | None:
        """The transport, if the loop has called ``connection_made`` (the rule: the
        task's first step comes after it); else None, and ``await`` the opening."""
        if self.transport is not None:
            return self.transport
        waiting, connecting = self.waiting, self.connecting
        if waiting is not None and not _is_done(waiting):
            return None
        assert connecting is not None
        try:
            self.waiting = connecting.send(None)
        except StopIteration as made:
            self.connecting = self.waiting = None
            transport: asyncio.Transport = made.value[0]
            return transport
        return None  # it waits again, for something else: await the opening

    def __await__(self) -> Generator[Any, Any, asyncio.Transport]:
        """In the task: the transport the accept callback began (``_finish``)."""
        return _finish(self)


def begin_stream(
    job: RequestJob, receive_view: memoryview, loop: asyncio.AbstractEventLoop
) -> Opening | None:
    """Verify ``job``'s connection and, if it is plain, start its transport; run in the
    connection's own context (``context.run``), the one its task runs in.

    None: the request ended here (``verify_request`` raised or said no, or the connection
    was lost), counted, reported and closed; the caller finishes the job.
    """
    server, sock, client_address = job.server, job.request, job.client_address
    try:
        verdict = server.verify_request(sock, client_address)
    except Exception as exc:
        end_verify_error(job, exc)
        return None
    except BaseException:
        sock.close()
        raise
    if verdict is not True:
        if inspect.isawaitable(verdict):
            return Opening(verdict)
        if not verdict:
            end_unverified(job)
            return None
    if tls_holder(server) is not None:
        return Opening(True)
    reader = _Reader(loop, receive_view)
    try:
        connecting = loop.connect_accepted_socket(lambda: reader, sock)
        waiting = connecting.send(None)
    except StopIteration as made:  # a loop that made it without waiting
        opening = Opening(True, reader)
        opening.transport = made.value[0]
        return opening
    except OSError as exc:
        end_lost_before_serving(job, exc)
        sock.close()
        return None
    except Exception:
        # Not the peer's doing (the loop refused the socket): sockserve's own fault, said
        # loudly, as when a connection's task fails; this connection only.
        log.exception("internal error opening %s", format_address(client_address))
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return Opening(True, reader, connecting, waiting)


def _finish(opening: Opening) -> Generator[Any, Any, asyncio.Transport]:
    """The transport ``begin_stream`` started, for the task that awaits ``opening``.

    While the loop has not called ``connection_made``, what the loop's coroutine waits on
    is handed to the task, as the coroutine would have; cancelled meanwhile, the
    coroutine gets the cancellation and closes the transport, as when it is awaited.
    """
    while (transport := opening.made()) is None:
        connecting = opening.connecting
        assert connecting is not None
        try:
            yield opening.waiting
        except BaseException as exc:
            opening.waiting = connecting.throw(exc)
    return transport


def _is_done(waiting: Any) -> bool:
    done = getattr(waiting, "done", None)
    return done is not None and bool(done())
