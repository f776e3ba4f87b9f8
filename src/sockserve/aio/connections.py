"""One request's life on the event loop: verify, wrap, run the handler, report, close.

Each admitted connection (or received datagram) becomes one task running
``serve_stream`` (or ``serve_datagram``) with its ``RequestJob`` (``serving/job.py``).
The task owns the connection: whatever happens in the handler, the connection is closed
when the task ends, and the task's end finishes the job.

How a request can end (the same policy as the synchronous modes, ``handler_errors.py``):

* the handler returned: nothing;
* a peer fault: the peer went away (``ConnectionError``), stayed idle past ``timeout``
  (``ReadTimeoutError``) or sent a line over ``max_line_length``: counted by kind in
  ``stats().peer_faults`` and given to ``handle_error``, whose default logs one line
  per episode, without a traceback;
* any other exception: counted as a handler error and given to ``handle_error`` (which
  logs the traceback with the client address);
* cancelled (``shutdown()``, ``drain()`` at its deadline): the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from typing import Any

from ..addresses import format_address
from ..handler_errors import call_handle_error, peer_fault_kind
from ..serving.job import HANDLER_ERROR, RequestJob
from .fastpath import IMPLEMENTATION
from .handlers import AsyncBaseRequestHandler
from .inline import INLINE_RESUMPTION, await_handler
from .streams import StreamReader
from .writer import StreamWriter

#: The classes connections are built from: compiled or pure Python (``fastpath.py``).
_Reader, _Writer, _Driver = (
    IMPLEMENTATION.reader_class,
    IMPLEMENTATION.writer_class,
    IMPLEMENTATION.driver_class,
)

log = logging.getLogger("sockserve.aio.connections")

#: After the handler, how long buffered replies may take to reach a client before the
#: connection is aborted: long enough for a slow client, short enough that a client that
#: never reads cannot pin a connection (and its buffer) forever.
CLOSE_FLUSH_SECONDS = 10.0


async def serve_stream(
    job: RequestJob,
    receive_view: memoryview,
    context: contextvars.Context | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Serve one accepted stream socket to the end, then close it.

    ``context``: the context this task runs in (``create_task(context=...)``). Given, the
    handler is resumed from the reader's callbacks between reads (``inline.py``);
    otherwise the task resumes it after each wait. ``loop``: the running loop, if the
    caller has it (``asyncio.get_running_loop()`` costs a ``getpid`` system call on
    3.11, and this runs once per connection).
    """
    server, sock, client_address = job.server, job.request, job.client_address
    if loop is None:
        loop = asyncio.get_running_loop()
    try:
        # verify()'s steps written out: one coroutine less per connection.
        verdict = server.verify_request(sock, client_address)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        is_verified = bool(verdict)
    except Exception as exc:
        report_ending(server, exc, sock, client_address)
        sock.close()
        return
    except BaseException:
        sock.close()
        raise
    if not is_verified:
        server.shutdown_request(sock)
        return
    reader = _Reader(loop, receive_view)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: reader, sock)
    except OSError as exc:
        server._core.count_outcome("reset")
        server._core.peer_fault_log.note(
            "reset", f"{format_address(client_address)}: lost before serving: {exc}"
        )
        sock.close()
        return
    except BaseException:
        sock.close()
        raise
    writer = _Writer(transport, reader)
    request = (reader, writer)
    if job.details:  # what the preludes learnt, readable as handler.proxy / handler.tls
        server._core.register_details(request, job.details)
    flush_seconds = 0.0  # unless the handler ends normally: cancelled, interrupted
    try:
        work = server.finish_request(request, client_address)
        if context is None or not INLINE_RESUMPTION:
            await work
        elif _is_plain_handler(work):
            # AsyncBaseRequestHandler._serve's steps, run here, so that the coroutine the
            # driver resumes per message is handle() itself: two frames fewer each time.
            await work.setup()
            try:
                await _Driver(work.handle(), reader, context)
            finally:
                await work.finish()
        else:
            await _Driver(await_handler(work), reader, context)
        flush_seconds = CLOSE_FLUSH_SECONDS
    except Exception as exc:
        flush_seconds = CLOSE_FLUSH_SECONDS
        report_ending(server, exc, request, client_address)
    finally:
        if job.details:
            server._core.forget_details(request)
        await close_stream(writer, reader, flush_seconds)


def _is_plain_handler(work: object) -> bool:
    """A handler whose ``__await__`` is the base class's: setup, handle, finish."""
    cls = type(work)
    return (
        isinstance(work, AsyncBaseRequestHandler)
        and getattr(cls, "__await__", None) is AsyncBaseRequestHandler.__await__
        and getattr(cls, "_serve", None) is AsyncBaseRequestHandler._serve
    )


async def serve_datagram(job: RequestJob) -> None:
    """Serve one datagram ``(packet, sender)``; the socket is the server's, left open.

    ``shutdown_request(request)`` follows every datagram, served or refused, as in the
    synchronous servers (where it closes nothing for a datagram either): an override
    that counts or logs requests sees the same calls in both modes.
    """
    server, request, client_address = job.server, job.request, job.client_address
    try:
        if await verify(server, request, client_address):
            await server.finish_request(request, client_address)
    except Exception as exc:
        report_ending(server, exc, request, client_address)
    finally:
        try:
            server.shutdown_request(request)
        except Exception as exc:
            report_ending(server, exc, request, client_address)


async def verify(server: Any, request: Any, client_address: Any) -> bool:
    """``server.verify_request``, which may be a plain function or a coroutine."""
    verdict = server.verify_request(request, client_address)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


async def close_stream(
    writer: StreamWriter, reader: StreamReader, flush_seconds: float = CLOSE_FLUSH_SECONDS
) -> None:
    """Close after the buffered replies are sent; abort if that takes over ``flush_seconds``.

    ``flush_seconds=0``: the request was cancelled or interrupted: close at once, and
    abort if replies are still buffered. Cancelled while closing: abort. Either way the
    socket is closed when this returns.
    """
    transport = writer.transport
    closed = reader.flow.closed()
    try:
        if not transport.is_closing():
            if not reader.is_eof_received and transport.can_write_eof():
                # FIN first (after the buffered replies), as the synchronous servers'
                # shutdown(SHUT_WR) does: the client reads a clean end of stream even if
                # the close below resets the connection for bytes it sent meanwhile.
                # Once the client's own end arrived nothing more can, so close() alone
                # sends that FIN (a system call less per connection).
                try:
                    transport.write_eof()
                except OSError:  # the peer already reset it (ENOTCONN): close anyway
                    pass
            if flush_seconds > 0 and not reader.is_eof_received:
                # The server closes first: let the transport read what the client has
                # already sent, since closing with unread bytes resets the connection (a
                # Unix socket client then sees ECONNRESET, not the end of stream). Two
                # turns: one to poll, one for the read callback the stdlib loop queues
                # behind us.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            transport.close()
        if flush_seconds <= 0 and transport.get_write_buffer_size():
            transport.abort()
        if closed.done():
            return
        timer = reader._loop.call_later(flush_seconds, transport.abort)
        try:
            await closed
        finally:
            timer.cancel()
    except asyncio.CancelledError:
        transport.abort()
        await closed  # abort() closes the socket on the next loop turn: see it done
        raise


def report_ending(server: Any, exc: Exception, request: Any, client_address: Any) -> None:
    """Count how a request ended and give it to ``handle_error``; call inside the
    ``except`` block (``handle_error`` reads the exception being handled)."""
    server._core.count_outcome(peer_fault_kind(exc) or HANDLER_ERROR)
    call_handle_error(server, request, client_address, log)
