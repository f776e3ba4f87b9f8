"""The async servers: ``socketserver``'s surface, one event loop, ``async def handle()``.

Each class is the synchronous server of the same transport (``servers.py``) with the
loop replaced: construction, binding, bind errors, ``dual_stack``, Unix socket file
cleanup, ``handle_error`` and ``handle_overload`` are the core's own code, so they behave
identically. What runs requests is ``serve_loop.AsyncServeLoop``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import Any

from ..errors import ConfigurationError
from ..metrics import DrainReport
from ..servers import TCPServer, UDPServer
from ..serving.connection_watch import ConnectionWatch
from ..serving.core import ServingCore
from ..slow_clients import SlowClientLimits
from .connections import sweep_on_loop
from .loop import LoopFactory, choose_loop_factory
from .serve_loop import AsyncServeLoop

#: A handler step longer than this (seconds) is logged as blocking the loop: asyncio's
#: own ``slow_callback_duration`` default.
DEFAULT_SLOW_CALLBACK_SECONDS = 0.1


class AsyncServerMixIn:
    """Runs a server's requests as tasks on one event loop; put it before the server class.

    Methods for the caller (beyond the stdlib's, which keep their meaning):

    - ``serve_forever(poll_interval=0.5)``: create an event loop (see ``event_loop``),
      serve until ``shutdown()``, close the loop. Blocks; may run on any thread, or in a
      forked child (no loop exists before it runs).
    - ``await serve(poll_interval=0.5)``: the same inside an event loop you already run.
    - ``shutdown()``: from any thread; wakes the loop at once and waits for it to stop.
      From a handler it only asks (no deadlock). Requests still running are cancelled:
      their ``finish()`` runs and their connections are closed.
    - ``drain(timeout)`` (another thread) / ``await drain_async(timeout)`` (the loop):
      stop accepting, let running requests finish until the deadline, cancel the rest,
      stop serving; returns a ``DrainReport``.
    - ``handle_request()``: serve one request on a fresh loop, honouring ``timeout``.
    - ``stats()``: a ``ServerStats``, the same fields as the synchronous servers'.

    Methods that may be overridden: ``get_request``, ``verify_request`` (a plain method
    or a coroutine), ``async finish_request``, ``handle_error``, ``handle_overload``,
    ``handle_timeout``, ``service_actions``, ``server_close``. ``process_request`` is not
    used: every request runs as a task on the loop.

    Class attributes, also constructor keywords: ``event_loop`` (``"auto"``: uvloop if
    installed, else asyncio; ``"asyncio"``; ``"uvloop"``: ConfigurationError if missing),
    ``max_connections`` and ``overload_policy`` (``"wait"``: stop accepting at the cap;
    ``"reject"``: accept, ``handle_overload``, close), ``slow_callback_duration`` (a
    handler holding the loop longer is logged by name; None turns the check off).

    Requests: for stream servers ``request`` is the accepted socket in
    ``verify_request`` and ``handle_overload`` (before the event loop wraps it) and the
    ``(reader, writer)`` pair in the handler and in ``handle_error``; for datagram
    servers it is ``(packet, sender)`` everywhere, ``sender`` replying like a socket.

    Error handling: see ``connections.py``. In short, a handler exception reaches
    ``handle_error`` (logged with the client address and traceback) and the connection
    is closed; a vanished peer or an idle timeout is one INFO line; the server goes on.
    """

    event_loop: str = "auto"
    #: ``ssl_context``: the event loop's own TLS does the handshake (``connections.py``),
    #: not the selector loop's prelude.
    _tls_on_event_loop = True
    #: The event loop reads each accepted socket's family and type: read them cheaply
    #: (``sockets.accepted_socket_class``).
    _accepted_sockets_know_their_kind = True
    slow_callback_duration: float | None = DEFAULT_SLOW_CALLBACK_SECONDS

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any,
        bind_and_activate: bool = True,
        *,
        event_loop: str | None = None,
        slow_callback_duration: float | None = None,
        **kwargs: Any,
    ) -> None:
        if event_loop is not None:
            self.event_loop = event_loop
        if slow_callback_duration is not None:
            self.slow_callback_duration = slow_callback_duration
        server: Any = super()
        server.__init__(server_address, RequestHandlerClass, bind_and_activate, **kwargs)

    def _make_serve_loop(self, core: ServingCore) -> Any:
        """The event loop drives the same core; no synchronous loop is built."""
        self._aio = AsyncServeLoop(core)
        return None

    def _make_connection_watch(self, limits: SlowClientLimits) -> ConnectionWatch:
        """Slow clients are judged on the event loop (a timer), not on a thread."""
        return ConnectionWatch(limits, sweep_on_loop)

    def _check_settings(self) -> None:
        """Called by the base constructor before the socket exists: fail early, leak nothing."""
        self._loop_factory: LoopFactory = choose_loop_factory(self.event_loop)
        slow = self.slow_callback_duration
        if slow is not None and (isinstance(slow, bool) or not slow > 0):
            raise ConfigurationError(
                f"slow_callback_duration must be a positive number or None, got {slow!r}"
            )
        super()._check_settings()  # type: ignore[misc]

    # -- running -------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve on a new event loop until ``shutdown()``."""
        with asyncio.Runner(loop_factory=self._loop_factory) as runner:
            runner.run(self.serve(poll_interval))

    async def serve(self, poll_interval: float | None = 0.5) -> None:
        """Serve on the running event loop until ``shutdown()`` (or until cancelled)."""
        server: Any = self
        server._stop_connection_watch()  # its sweeper was a timer on the last loop
        server._configure_connection_watch()
        await self._aio.serve(self, poll_interval)

    def shutdown(self) -> None:
        """Stop serving; from another thread, wait until the loop has stopped."""
        self._aio.shutdown(self)

    def _request_stop(self, *, drain_timeout: float | None = None) -> None:
        """Ask the loop to stop without waiting; with ``drain_timeout``, drain first."""
        self._aio.ask_to_stop(self, drain_timeout)

    def handle_request(self) -> Any:
        """Serve one request, waiting at most ``timeout`` (then ``handle_timeout()``)."""
        server: Any = self
        timeout = server.socket.gettimeout()
        server_timeout: float | None = server.timeout
        if timeout is None:
            timeout = server_timeout
        elif server_timeout is not None:
            timeout = min(timeout, server_timeout)
        server._stop_connection_watch()  # its sweeper was a timer on the last loop
        server._configure_connection_watch()
        with asyncio.Runner(loop_factory=self._loop_factory) as runner:
            return runner.run(self._aio.handle_one(self, timeout))

    def drain(self, timeout: float) -> DrainReport:
        """Stop accepting; let requests finish for up to ``timeout`` s; cancel the rest."""
        _check_drain_timeout(timeout)
        return self._aio.drain(self, timeout)

    async def drain_async(self, timeout: float) -> DrainReport:
        """``drain`` for code running on the server's own event loop."""
        _check_drain_timeout(timeout)
        return await self._aio.drain_async(self, timeout)

    # -- hooks -----------------------------------------------------------------------------

    def finish_request(self, request: Any, client_address: Any) -> Awaitable[None]:
        """The request's work: the handler instance, which serves the request when awaited.

        An override may be a coroutine (``async def``) that awaits ``super()``'s result.
        Not itself a coroutine so that every resumption of the handler passes through
        one frame fewer.
        """
        server: Any = self
        handler: Awaitable[None] = server.RequestHandlerClass(request, client_address, self)
        return handler

    def process_request(self, request: Any, client_address: Any) -> None:
        raise NotImplementedError(
            "async servers run each request as a task on their event loop; "
            "override finish_request() (a coroutine) or the handler instead"
        )


def _check_drain_timeout(timeout: float) -> None:
    if timeout < 0:
        raise ConfigurationError(f"drain timeout must be >= 0, got {timeout!r}")


# The ignores below: finish_request returns an awaitable here, None in the sync base.


class AsyncTCPServer(AsyncServerMixIn, TCPServer):  # type: ignore[misc]
    """A TCP server whose handlers are coroutines (``AsyncStreamRequestHandler``)."""


class AsyncUDPServer(AsyncServerMixIn, UDPServer):  # type: ignore[misc]
    """A UDP server whose handlers are coroutines (``AsyncDatagramRequestHandler``)."""


if hasattr(socket, "AF_UNIX"):
    from ..servers import UnixDatagramServer, UnixStreamServer

    class AsyncUnixStreamServer(AsyncServerMixIn, UnixStreamServer):  # type: ignore[misc]
        """A Unix stream socket server whose handlers are coroutines."""

    class AsyncUnixDatagramServer(AsyncServerMixIn, UnixDatagramServer):  # type: ignore[misc]
        """A Unix datagram socket server whose handlers are coroutines."""
