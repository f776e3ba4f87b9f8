"""``BaseServer``: the stdlib's server hooks over the serving core, in the stdlib's order.

The hooks keep their names, call order and meaning (``socketserver``'s contract); each
one is a thin call into the object that does the work: ``serving/core.py`` (admission,
counters, stats), ``serving/selector_loop.py`` (the loop and its drain), the mixins'
dispatchers (``mixins.py``). The sockserve settings that every server shares (limits,
PROXY, slow clients, access lists) are class attributes here, and constructor keywords.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any, Self, Unpack, cast

from ..access import DEFAULT_IPV6_PREFIX, NetworkList
from ..access_log import AccessLog
from ..addresses import format_address
from ..admission.checks import AdmissionCheck
from ..admission.client_checks import ClientLimits, ClientLimitSettings
from ..admission.limits import OVERLOAD_POLICIES
from ..admission.preludes import DEFAULT_MAX_PENDING_PRELUDES, Prelude
from ..admission.proxy_header import DEFAULT_PROXY_HEADER_TIMEOUT, proxy_protocol_setup
from ..client_limits import DEFAULT_MAX_CLIENTS
from ..errors import ConfigurationError, HandlerClassError
from ..handler_errors import peer_fault_kind
from ..metrics import DrainReport, ServerStats
from ..policy import ServerPolicy, current_policy
from ..proxy_protocol import V2_DEFAULT_MAX_BYTES
from ..serving.connection_watch import ConnectionWatch, SweepThread, threaded_watch
from ..serving.core import ServingCore
from ..serving.selector_loop import ServeLoop, Server
from ..slow_clients import DEFAULT_MIN_TRANSFER_WINDOW, LIMIT_NAMES, SlowClientLimits

log = logging.getLogger("sockserve.servers")


class BaseServer:
    """Base class for servers: the request loop and the hooks around it.

    Methods for the caller:

    - ``__init__(server_address, RequestHandlerClass)``
    - ``serve_forever(poll_interval=0.5)``: serve until ``shutdown()``; ``poll_interval``
      paces ``service_actions()`` (shutdown itself wakes the loop at once)
    - ``shutdown()``: stop ``serve_forever``; safe from a handler or a signal handler
    - ``handle_request()``: serve one request, honouring ``timeout``
    - ``fileno()``: for selectors; the context manager calls ``server_close()``

    Methods that may be overridden, in the order the loop calls them:

    - ``server_bind()``, ``server_activate()`` (at construction)
    - ``get_request() -> (request, client_address)``
    - ``verify_request(request, client_address) -> bool``
    - ``process_request(request, client_address)`` (the mixins replace this)
    - ``finish_request(request, client_address)``: instantiate the handler
    - ``shutdown_request(request)`` then ``close_request(request)``
    - ``handle_error(request, client_address)``, ``handle_timeout()``,
      ``service_actions()``, ``server_close()``

    Beyond the stdlib:

    - ``stats()``: a ``ServerStats`` snapshot (accepted, active, peak, rejected, errors).
    - ``drain(timeout)``: stop accepting, let in-flight requests finish until the
      deadline, then abort the rest (their sockets are shut down); returns a
      ``DrainReport``. ``server_close()`` still only closes.
    - ``handle_overload(request, client_address)``: called for a request refused at
      capacity under ``overload_policy = "reject"``, before it is closed.
    - ``add_admission_check(check)`` and ``add_prelude(prelude)`` (or the class
      attributes ``admission_checks`` and ``preludes``): connection setup, run in the
      order ``admission/checks.py`` writes down, in every mode.
    - ``draining``: True once ``drain()`` began; a handler may end a keep-alive
      connection early.
    - Behind a proxy (stream servers): ``proxy_protocol`` (None, ``"v1"``, ``"v2"``,
      ``"any"``), ``trusted_proxies`` (CIDRs; required for IP servers),
      ``proxy_header_timeout``, ``proxy_header_max``, as attributes or keywords; the
      handler sees the real client as ``client_address`` and the header as
      ``self.proxy``. See docs/behind-a-proxy.md.
    - Slow-client limits for stream servers (``slow_clients.py``), class attributes
      and constructor keywords, each None (off, the stdlib's behaviour) by default:
      ``idle_timeout``, ``connection_deadline``, ``min_transfer_rate`` (bytes/s over
      ``min_transfer_window`` seconds, default 10) and ``write_timeout``. A connection
      over one is cut, counted in ``stats().peer_faults`` (``"idle_timeout"``,
      ``"deadline"``, ``"too_slow"``, ``"write_timeout"``) and logged once per episode.
    - ``allow``/``deny`` and per-client limits, judged before any handler runs (see
      the class attributes); ``client_limits`` holds the checks they built.
    - ``record_traffic()``, ``set_access_log(log)``, ``reopen_logs()``: bytes and
      durations in ``stats()``, a line per connection (docs/observability.md).

    Class attributes: ``timeout``, ``address_family``, ``socket_type``,
    ``allow_reuse_address``, ``allow_reuse_port``; and sockserve's ``max_connections``
    (None: no limit) and ``overload_policy`` (``"wait"``: stop accepting at capacity, so
    clients wait in the kernel backlog; ``"reject"``: accept and refuse), which may also
    be given to the constructor as keywords.

    Error handling: an exception from the handler (or ``verify_request``) goes to
    ``handle_error`` and the request is closed; if ``handle_error`` raises too, that is
    logged and the request is still closed. Accept errors never stop the loop.
    """

    timeout: float | None = None
    max_connections: int | None = None
    overload_policy: str = "wait"
    #: Admission checks and preludes every instance starts with (see ``admission/``).
    admission_checks: Sequence[AdmissionCheck] = ()
    preludes: Sequence[Prelude] = ()
    #: Connections that may be in their preludes at once; past it the loop stops
    #: accepting until one finishes (stalled clients cannot exhaust descriptors).
    max_pending_preludes: int = DEFAULT_MAX_PENDING_PRELUDES
    #: The PROXY protocol (``admission/proxy_header.py``).
    proxy_protocol: str | None = None
    trusted_proxies: NetworkList | Sequence[str] | None = None
    proxy_header_timeout: float = DEFAULT_PROXY_HEADER_TIMEOUT
    proxy_header_max: int = V2_DEFAULT_MAX_BYTES
    #: Slow-client limits (``slow_clients.py``); None turns one off.
    idle_timeout: float | None = None
    connection_deadline: float | None = None
    min_transfer_rate: float | None = None
    min_transfer_window: float = DEFAULT_MIN_TRANSFER_WINDOW
    write_timeout: float | None = None
    #: Who may connect and how much one client may take (``admission/client_checks.py``),
    #: also constructor keywords: CIDR lists (None: no list); open connections per
    #: client (stream servers) and new connections or datagrams per second per client,
    #: with a burst (None: no limit). IPv6 clients count per ``client_ipv6_prefix``.
    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None
    max_connections_per_client: int | None = None
    client_rate: float | None = None
    client_burst: int | None = None
    client_ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    client_rate_max_clients: int = DEFAULT_MAX_CLIENTS
    #: Whether the dispatcher runs requests off the loop's thread (the mixins say yes);
    #: only then does ``drain`` serve the connections the kernel had already queued.
    _dispatches_off_loop = False
    #: Whether other processes accept on this listening socket too (pre-fork workers on
    #: a shared socket): then its backlog is theirs to serve, and a drain leaves it.
    _listener_is_shared = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any,
        *,
        max_connections: int | None = None,
        overload_policy: str | None = None,
        proxy_protocol: str | None = None,
        trusted_proxies: NetworkList | Sequence[str] | None = None,
        proxy_header_timeout: float | None = None,
        proxy_header_max: int | None = None,
        idle_timeout: float | None = None,
        connection_deadline: float | None = None,
        min_transfer_rate: float | None = None,
        min_transfer_window: float | None = None,
        write_timeout: float | None = None,
        **client_limits: Unpack[ClientLimitSettings],
    ) -> None:
        if not callable(RequestHandlerClass):
            raise HandlerClassError(
                "RequestHandlerClass must be a class (or a callable taking request, "
                f"client_address, server), got {RequestHandlerClass!r} "
                f"for the server on {format_address(server_address)}"
            )
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        self._core = ServingCore()
        self.client_limits = ClientLimits.for_server(self, client_limits)
        for check in self.client_limits.checks:  # first: before the class's own checks
            self._core.add_check(check)
        for check in self.admission_checks:
            self._core.add_check(check)
        for prelude in self.preludes:
            self._core.add_prelude(prelude)
        self._serve_loop: ServeLoop = self._make_serve_loop(self._core)
        if max_connections is not None:
            self.max_connections = max_connections
        if overload_policy is not None:
            self.overload_policy = overload_policy
        given = (idle_timeout, connection_deadline, min_transfer_rate, min_transfer_window)
        for name, value in zip(LIMIT_NAMES, (*given, write_timeout), strict=True):
            if value is not None:
                setattr(self, name, value)
        policy = current_policy()
        if policy is not None:
            self._apply_policy(policy)
        self._check_settings()
        self._configure_connection_watch()
        proxy = proxy_protocol_setup(
            self,
            proxy_protocol=proxy_protocol,
            trusted_proxies=trusted_proxies,
            proxy_header_timeout=proxy_header_timeout,
            proxy_header_max=proxy_header_max,
        )
        if proxy is not None:  # the trusted-proxy check and the header prelude
            self._core.add_check(proxy[0])
            self._core.add_prelude(proxy[1])
        if policy is not None:
            for configure in policy.configure:
                configure(self)

    def _apply_policy(self, policy: ServerPolicy) -> None:
        """Take the process-wide policy's settings (``policy.py``); mixins extend this."""
        if policy.max_connections is not None:
            self.max_connections = policy.max_connections

    def _check_settings(self) -> None:
        """Refuse nonsensical settings at construction; mixins extend this."""
        SlowClientLimits.of(self)
        limit = self.max_connections
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigurationError(
                f"max_connections must be a positive int or None, got {limit!r}"
            )
        if self.overload_policy not in OVERLOAD_POLICIES:
            raise ConfigurationError(
                f"overload_policy must be one of {', '.join(map(repr, OVERLOAD_POLICIES))},"
                f" got {self.overload_policy!r}"
            )

    def _make_serve_loop(self, core: ServingCore) -> ServeLoop:
        """The loop that drives ``core``; the async mode builds its own instead."""
        return ServeLoop(core)

    # -- slow clients ------------------------------------------------------------------

    def _configure_connection_watch(self) -> None:
        """Watch connections for the slow-client limits now set (at construction, and
        again when serving starts, so attributes set in between count)."""
        limits = SlowClientLimits.of(self)
        core = self._core
        current = core.connection_watch
        if current is not None and current.limits == limits and not current.is_closed:
            return
        self._stop_connection_watch()
        is_stream = getattr(self, "socket_type", socket.SOCK_STREAM) == socket.SOCK_STREAM
        if limits.is_on and is_stream:
            core.connection_watch = self._make_connection_watch(limits)

    def _make_connection_watch(self, limits: SlowClientLimits) -> ConnectionWatch:
        """A watch swept by a thread; the async mode sweeps on its event loop instead."""
        watch, self._connection_sweeper = threaded_watch(limits)
        return watch

    def _stop_connection_watch(self) -> None:
        watch = self._core.connection_watch
        if watch is None:
            return
        self._core.connection_watch = None
        sweeper: SweepThread | None = vars(self).pop("_connection_sweeper", None)
        if sweeper is not None:
            sweeper.stop(watch)
        else:
            watch.close()

    def add_admission_check(self, check: AdmissionCheck) -> None:
        """Add an instant check (see ``admission/checks.py``); after the built-in ones."""
        self._core.add_check(check)

    def add_prelude(self, prelude: Prelude) -> None:
        """Add a prelude (see ``admission/preludes.py``), run after those added before."""
        self._core.add_prelude(prelude)

    def record_traffic(self) -> None:
        """Count bytes in and out and connection durations in ``stats()`` from now on
        (``serving/traffic.py``: one ``TCP_INFO`` read per connection as it closes)."""
        self._core.record_traffic()

    def set_access_log(self, access_log: AccessLog) -> None:
        """Write a line per connection (or datagram) to ``access_log`` as it ends, in
        every mode (``access_log.py``); records traffic too. Set it before serving: a
        pre-fork server's workers take it with them when they fork."""
        self._core.record_traffic(access_log)

    def reopen_logs(self) -> None:
        """Reopen the access log file before its next line (after a rotation); safe in
        a signal handler. A pre-fork master passes it on to its workers."""
        traffic = self._core.traffic
        if traffic is not None and traffic.access_log is not None:
            traffic.access_log.reopen_soon()

    @property
    def draining(self) -> bool:
        """True once ``drain()`` began: end keep-alive connections at the next chance."""
        return self._core.is_draining

    def _capacity(self) -> tuple[int | None, str]:
        """How many requests may be in flight, and the name of the limit that says so."""
        return self.max_connections, "max_connections"

    def _reap_finished_work(self) -> None:
        """Notice work that ended without telling anyone (forked children); mixins extend."""

    def _dispatch_stats(self) -> tuple[int, int]:
        """``(queue_depth, workers_alive)`` of the dispatch strategy; mixins override."""
        return 0, 0

    def stats(self) -> ServerStats:
        """A snapshot of the server's counters (see ``ServerStats``)."""
        queue_depth, workers_alive = self._dispatch_stats()
        return self._core.stats(queue_depth=queue_depth, workers_alive=workers_alive)

    def drain(self, timeout: float) -> DrainReport:
        """Stop listening; let in-flight requests finish for ``timeout`` s; abort the rest.

        Call it from a thread other than the one running ``serve_forever``. Connections
        the kernel had already queued are served (by the thread and pool mixins), then
        the listening socket is closed: new clients are refused at once (a load
        balancer's health check fails) instead of queueing to be reset. Datagram
        sockets stay open until ``server_close()``. ``DrainReport`` says what finished
        and what was aborted.
        """
        if timeout < 0:
            raise ConfigurationError(f"drain timeout must be >= 0, got {timeout!r}")
        return self._serve_loop.drain(
            self._hooks(),
            timeout,
            takes_backlog=self._dispatches_off_loop and not self._listener_is_shared,
        )

    def handle_overload(self, request: Any, client_address: Any) -> None:
        """Called for a request refused at capacity (``overload_policy = "reject"``).

        Override it to send a protocol-specific "busy" reply; the request is closed after.
        """

    def _hooks(self) -> Server:
        # BaseServer leaves fileno() and get_request() to its subclasses, as the stdlib
        # does; the loop only runs on servers that have them.
        return cast(Server, self)

    def server_activate(self) -> None:
        """Called by the constructor to activate the server (listen, for streams)."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until ``shutdown()``; ``service_actions`` every turn."""
        self._configure_connection_watch()
        self._serve_loop.serve_forever(self._hooks(), poll_interval)

    def shutdown(self) -> None:
        """Stop every ``serve_forever`` loop of this server.

        From another thread it waits until the loops have returned. From the loop's own
        thread (a handler, a signal handler) it only asks, and the loop stops when the
        current request is done. Before any loop runs, it makes the next one return.
        """
        self._serve_loop.shutdown(self._hooks())

    def _request_stop(self, *, drain_timeout: float | None = None) -> None:
        """Ask the loops to stop and return at once, from any thread or signal handler.

        ``drain_timeout``: the caller will drain after the loop returns (the synchronous
        loop leaves in-flight requests running); the async mode starts its drain here,
        on its loop, since its requests end with the loop. Where ``shutdown()`` would
        not wait (on a loop's own thread, in a signal handler, or with no loop running)
        this is ``shutdown()``, so an override of ``shutdown`` still sees the stop.
        """
        if drain_timeout is not None:
            self._core.begin_draining()  # what finishes from now on counts as drained
        loop = self._serve_loop
        if loop.is_running and not loop.is_loop_thread():
            loop.ask_to_stop(self)  # shutdown() would wait here
        else:
            self.shutdown()

    def service_actions(self) -> None:
        """Called once per loop turn; override for periodic work."""

    def handle_request(self) -> Any:
        """Handle one request, waiting at most ``timeout`` (then ``handle_timeout()``)."""
        sock = getattr(self, "socket", None)
        socket_timeout = sock.gettimeout() if sock is not None else None
        self._configure_connection_watch()
        return self._serve_loop.handle_request(self._hooks(), socket_timeout)

    def _handle_request_noblock(self) -> bool:
        """Accept one pending request and process it; False when none was pending."""
        return self._serve_loop.handle_one(self._hooks())

    def handle_timeout(self) -> None:
        """Called when ``handle_request`` waited ``timeout`` seconds for nothing."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return False to refuse the request (it is then closed)."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the request here and now (``finish_request``, then ``shutdown_request``;
        ``handle_error`` if it raised); the mixins override this."""
        self._core.claim(self, request, client_address).run()

    def server_close(self) -> None:
        """Release the server's resources; write the access log's pending lines."""
        self._stop_connection_watch()
        self._flush_access_log()

    def _flush_access_log(self) -> None:
        """Write the access log's pending lines (``log_batches.py``): the server closes,
        and a pre-fork worker leaves with ``os._exit`` soon after."""
        traffic = self._core.traffic
        if traffic is not None and traffic.access_log is not None:
            traffic.access_log.flush()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler on the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """End the request cleanly, then close it."""
        self._core.closing(request)
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Release the request's resources."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the exception being handled, with the client address and traceback.

        A peer fault (the client reset, vanished or timed out: ``handler_errors.py``) is
        the client's doing, not an error of the server: one line per episode, with
        counts, and no traceback.
        """
        exc = sys.exc_info()[1]
        kind = None if exc is None else peer_fault_kind(exc)
        if kind is not None:
            self._core.peer_fault_log.note(kind, f"{format_address(client_address)}: {exc}")
            return
        log.error(
            "exception while handling a request from %s",
            format_address(client_address),
            exc_info=True,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()
