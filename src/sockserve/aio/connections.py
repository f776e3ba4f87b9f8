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
* cancelled (``shutdown()``, ``drain()`` at its deadline): the connection is closed;
* cut for breaking a slow-client limit (``serving/connection_watch.py``; swept here by a
  timer on the loop, ``sweep_on_loop``): the transport is aborted and the handler's
  pending read raises the breach (``IdleTimeoutError``...), its ``drain()`` a reset;
  either way the breach is what is counted and reported.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import socket
import ssl
from functools import partial
from typing import Any

from ..admission.tls_prelude import tls_holder
from ..errors import SlowPeerError, TLSHandshakeError
from ..serving.connection_watch import ConnectionWatch
from ..serving.job import SERVED, UNVERIFIED, RequestJob
from ..tls import tls_info
from ..tls_handshake import handshake_failure
from .endings import (
    end_lost_before_serving,
    end_unverified,
    end_verify_error,
    measure_traffic,
    report_ending,
)
from .fastpath import IMPLEMENTATION
from .gathered_sends import pieces_sender
from .handlers import AsyncBaseRequestHandler
from .inline import INLINE_RESUMPTION, await_handler
from .opening import Opening
from .receive_switch import switchable
from .streams import StreamReader
from .writer import StreamWriter

#: The classes connections are built from: compiled or pure Python (``fastpath.py``).
_Reader, _Writer, _Driver = (
    IMPLEMENTATION.reader_class,
    IMPLEMENTATION.writer_class,
    IMPLEMENTATION.driver_class,
)


class _TLSProtocol(asyncio.BufferedProtocol):
    """The protocol the event loop's TLS transport calls: the reader's own methods.

    Why not the reader itself: uvloop's ``SSLProtocol`` hands decrypted bytes to a
    protocol that is an ``asyncio.Protocol`` (the reader is both kinds, for the plain
    transports) with ``SSLObject.read(256 KiB)``, a fresh 256 KiB bytes object per
    record: glibc serves it with mmap, mremap and munmap, three system calls, page
    faults and TLB flushes per message (strace, perf): two thirds of the server's CPU
    per TLS echo (``bench/tls_quick.py``: 27-32 µs a message before, 9-11 µs after).
    To a protocol that is only a ``BufferedProtocol`` it decrypts into
    ``get_buffer()``, the server's shared receive buffer, as the stdlib loop's TLS does
    anyway.

    The attributes are the reader's bound methods, so the transport calls them with no
    layer in between; only ``eof_received`` is this class's: a TLS stream cannot be
    half-closed (the client's close_notify or EOF ends it), so asyncio and uvloop ignore
    "keep the write side open" and asyncio logs a warning each time it is asked: say no.
    And the reader stays of the compiled class itself, whose C methods the interpreter's
    specialised calls take only for instances of exactly that class (``fastpath.py``).

    ``connection_lost`` is this class's too: uvloop's ``SSLProtocol`` keeps the bound
    ``get_buffer``/``buffer_updated`` after the connection is lost (it clears only its
    protocol), and the reader's flow control holds the transport, which holds that
    ``SSLProtocol``: a cycle that kept every closed connection (its reader, transport
    and OpenSSL state) until the garbage collector ran, 3 page faults and 11 KiB of
    resident memory per handshake more (measured). Dropping the flow control's
    transport at the end frees a connection by reference counting, as before.
    """

    __slots__ = (
        "reader",
        "connection_made",
        "get_buffer",
        "buffer_updated",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, reader: StreamReader) -> None:
        # Stores written out, not a loop of setattr(): this runs once per connection.
        self.reader = reader
        self.connection_made = reader.connection_made  # type: ignore[method-assign]
        self.get_buffer = reader.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = reader.buffer_updated  # type: ignore[method-assign]
        self.pause_writing = reader.pause_writing  # type: ignore[method-assign]
        self.resume_writing = reader.resume_writing  # type: ignore[method-assign]

    def eof_received(self) -> bool:
        self.reader.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reader = self.reader
        reader.connection_lost(exc)
        reader.flow.transport = None  # the cycle's link (above); nothing reads it now


#: After the handler, how long buffered replies may take to reach a client before the
#: connection is aborted: long enough for a slow client, short enough that a client that
#: never reads cannot pin a connection (and its buffer) forever.
CLOSE_FLUSH_SECONDS = 10.0


async def serve_stream(
    job: RequestJob,
    receive_view: memoryview,
    context: contextvars.Context | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    opening: Opening,
) -> None:
    """Serve one accepted stream socket to the end, then close it.

    ``context``: the context this task runs in (``create_task(context=...)``). Given, the
    handler is resumed from the reader's callbacks between reads (``inline.py``);
    otherwise the task resumes it after each wait. ``loop``: the running loop, if the
    caller has it (``asyncio.get_running_loop()`` costs a ``getpid`` system call on
    3.11, and this runs once per connection). ``opening``: what the accept callback did
    (``opening.begin_stream``: the verdict, and a plain connection's transport begun).
    """
    server, sock, client_address = job.server, job.request, job.client_address
    if loop is None:
        loop = asyncio.get_running_loop()
    if opening.reader is not None:
        # Verified and begun in the accept callback: take the transport over.
        reader = opening.reader
        try:
            transport = opening.made()
            if transport is None:  # connection_made has not run yet: wait for it
                transport = await opening
        except OSError as exc:
            end_lost_before_serving(job, exc)
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        holder = None
    else:
        opened = await _open_in_task(job, receive_view, loop, opening)
        if opened is None:
            return
        reader, transport, holder = opened
    if holder is None:
        reader._switch = switchable(transport)  # bulk reads may use recv(n)
    reader.flow.send_pieces = pieces_sender(transport)
    writer = _Writer(transport, reader)
    request = (reader, writer)
    details = job.details
    if holder is not None:
        details = {**(details or {}), "tls": tls_info(transport.get_extra_info("ssl_object"))}
    if details:  # what the preludes learnt, readable as handler.proxy / handler.tls
        server._core.register_details(request, details)
    flush_seconds = 0.0  # unless the handler ends normally: cancelled, interrupted
    watch: ConnectionWatch | None = server._core.connection_watch
    watched = None
    if watch is not None:
        watched = watch.add(transport.get_extra_info("socket"), partial(_cut, reader, transport))
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
        job.ticket.outcome = SERVED
        breach, watched = _unwatch(watch, watched), None
        if breach is not None:  # the handler took the cut for an end of stream
            job.ticket.outcome = _report_breach(server, breach, None, request, client_address)
    except Exception as exc:
        flush_seconds = CLOSE_FLUSH_SECONDS
        breach, watched = _unwatch(watch, watched), None
        if breach is None or breach is exc:
            job.ticket.outcome = report_ending(server, exc, request, client_address)
        else:
            job.ticket.outcome = _report_breach(server, breach, exc, request, client_address)
    finally:
        _unwatch(watch, watched)
        if details:
            server._core.forget_details(request)
        if server._core.traffic is not None:
            measure_traffic(job, transport.get_extra_info("socket"))
        await close_stream(writer, reader, flush_seconds, is_tls=holder is not None)


async def _open_in_task(
    job: RequestJob,
    receive_view: memoryview,
    loop: asyncio.AbstractEventLoop,
    opening: Opening,
) -> tuple[StreamReader, asyncio.Transport, Any] | None:
    """Open a connection in its task, where the accept callback could not: a
    ``verify_request`` that is a coroutine (its verdict awaited here), or a TLS
    handshake. Returns the reader, the transport and the TLS holder (None: plain); None
    if the request ended here (refused, failed, lost), reported and closed."""
    server, sock, client_address = job.server, job.request, job.client_address
    try:
        verdict = opening.verdict
        if verdict is not True:
            verdict = await verdict
        is_verified = bool(verdict)
    except Exception as exc:
        end_verify_error(job, exc)
        return None
    except BaseException:
        sock.close()
        raise
    if not is_verified:
        end_unverified(job)
        return None
    holder = tls_holder(server)
    reader = _Reader(loop, receive_view)
    try:
        if holder is None:
            transport, _ = await loop.connect_accepted_socket(lambda: reader, sock)
        else:
            transport = await start_tls(server, reader, sock, holder.context, loop)
    except TLSHandshakeError as exc:
        server._core.note_refusal(exc.reason, client_address, str(exc))
        sock.close()
        return None
    except OSError as exc:
        end_lost_before_serving(job, exc)
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return reader, transport, holder


async def start_tls(
    server: Any,
    reader: Any,
    sock: socket.socket,
    context: ssl.SSLContext,
    loop: asyncio.AbstractEventLoop | None = None,
) -> asyncio.Transport:
    """The event loop's TLS on an accepted socket: the transport once the handshake is done.

    ``context`` is the holder's at accept time, so ``reload_tls`` reaches new connections
    only. The loop bounds the handshake with ``handshake_timeout``. A failure raises
    ``TLSHandshakeError`` with the reason the synchronous modes count, mapped from what
    asyncio and uvloop raise: ``ssl.SSLError`` (OpenSSL's reason), ``ConnectionError``
    (the client went away), a timeout (asyncio: ``ConnectionAbortedError`` or
    ``TimeoutError``, uvloop: ``TimeoutError``). ``loop``: the running loop, if the
    caller has it (as for ``serve_stream``).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    timeout = float(server.handshake_timeout)
    try:
        transport, _ = await loop.connect_accepted_socket(
            partial(_TLSProtocol, reader), sock, ssl=context, ssl_handshake_timeout=timeout
        )
    except ssl.SSLError as exc:
        raise handshake_failure(exc) from exc
    except (TimeoutError, ConnectionAbortedError) as exc:
        if isinstance(exc, TimeoutError) or "longer than" in str(exc):
            raise TLSHandshakeError(
                "tls_timeout", f"tls not complete within {timeout:g} s"
            ) from exc
        raise handshake_failure(exc) from exc
    except OSError as exc:
        raise handshake_failure(exc) from exc
    return transport


def _unwatch(watch: ConnectionWatch | None, watched: Any) -> SlowPeerError | None:
    """Stop watching (if watched); the limit the connection broke, or None."""
    if watch is None or watched is None:
        return None
    breach: SlowPeerError | None = watch.remove(watched)
    return breach


def _cut(reader: StreamReader, transport: Any, breach: SlowPeerError) -> None:
    """Cut a connection over a slow-client limit: its pending read raises ``breach``."""
    if reader.flow.exception is None:
        reader.flow.exception = breach
    transport.abort()


def _report_breach(
    server: Any,
    breach: SlowPeerError,
    cause: BaseException | None,
    request: Any,
    client_address: Any,
) -> str:
    try:
        raise breach from cause  # handle_error reads the exception being handled
    except SlowPeerError as exc:
        return report_ending(server, exc, request, client_address)


def sweep_on_loop(watch: ConnectionWatch) -> None:
    """The async mode's sweeper: a timer on the running loop, re-armed while it has work."""
    loop = asyncio.get_running_loop()
    interval = watch.limits.sweep_seconds

    def sweep() -> None:
        if watch.sweep():
            loop.call_later(interval, sweep)

    loop.call_later(interval, sweep)


def _is_plain_handler(work: object) -> bool:
    """A handler whose ``__await__`` is the base class's: setup, handle, finish."""
    cls = type(work)
    is_plain = _PLAIN_HANDLER_CLASSES.get(cls)
    if is_plain is None:
        is_plain = _PLAIN_HANDLER_CLASSES[cls] = (
            issubclass(cls, AsyncBaseRequestHandler)
            and getattr(cls, "__await__", None) is AsyncBaseRequestHandler.__await__
            and getattr(cls, "_serve", None) is AsyncBaseRequestHandler._serve
        )
    return is_plain


#: ``_is_plain_handler``'s answers, by class: a handful per process (a class is plain or
#: not for good; one that is changed after serving starts is not looked at again).
_PLAIN_HANDLER_CLASSES: dict[type, bool] = {}


async def serve_datagram(job: RequestJob) -> None:
    """Serve one datagram ``(packet, sender)``; the socket is the server's, left open.

    ``shutdown_request(request)`` follows every datagram, served or refused, as in the
    synchronous servers (where it closes nothing for a datagram either): an override
    that counts or logs requests sees the same calls in both modes.
    """
    server, request, client_address = job.server, job.request, job.client_address
    ticket = job.ticket
    try:
        if await verify(server, request, client_address):
            await server.finish_request(request, client_address)
            ticket.outcome = SERVED
        else:
            ticket.outcome = UNVERIFIED
    except Exception as exc:
        ticket.outcome = report_ending(server, exc, request, client_address)
    finally:
        measure_traffic(job, request)
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
    writer: StreamWriter,
    reader: StreamReader,
    flush_seconds: float = CLOSE_FLUSH_SECONDS,
    *,
    is_tls: bool = False,
) -> None:
    """Close after the buffered replies are sent; abort if that takes over ``flush_seconds``.

    ``flush_seconds=0``: the request was cancelled or interrupted: close at once, and
    abort if replies are still buffered. Cancelled while closing: abort. Either way the
    socket is closed (or, on the stdlib loop, closes on the next loop turn, with nothing
    left to send) when this returns; a TLS connection's close_notify is waited for.
    """
    flow = reader.flow
    # flow.transport, not writer.transport: that property also stops collecting writes
    # (a call chain per connection), and the handler's last step has sent them already.
    # A TLS connection the client closed first has dropped its flow's link already
    # (_TLSProtocol.connection_lost): then the writer's is the one left.
    transport = flow.transport if flow.transport is not None else writer._transport
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
                except OSError:
                    # The peer reset already: the stdlib loop's write_eof() calls
                    # shutdown() at once, which raises ENOTCONN then. Raising here would
                    # skip close() and leak the socket (the fault battery found one per
                    # client that sent a request and closed before the reply).
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
        if not is_tls and not transport.get_write_buffer_size():
            # Nothing left to send: uvloop has closed the socket already, the stdlib
            # loop closes it on its next turn; waiting for connection_lost would cost a
            # future, a timer and a wake-up of this task per connection (churn: 3 µs of
            # server CPU a connection, of 46; python -m bench --workloads churn).
            return
        if flush_seconds <= 0:
            transport.abort()
        closed = flow.closed()
        if closed.done():
            return
        timer = reader._loop.call_later(flush_seconds, transport.abort)
        try:
            await closed
        finally:
            timer.cancel()
    except asyncio.CancelledError:
        transport.abort()
        await flow.closed()  # abort() closes the socket on the next loop turn: see it done
        raise
