"""The serve loop: the one place that wires listener, stages, strategy and handler together.

How it works
    ``serve_forever`` waits in a selector on two things: the server's listening socket and
    the read end of a socket pair. ``shutdown()`` writes a byte to the pair, so the loop
    wakes at once instead of at the next ``poll_interval`` tick; ``poll_interval`` only
    paces ``service_actions()``. When the listener is readable the loop accepts a batch
    of pending connections (adapting its size, up to ``ACCEPT_BATCH``), and each one
    goes: ``get_request`` → admission stages (``connection.py``) → ``verify_request`` →
    ``process_request`` (which hands the work to the dispatch strategy) → handler.

Threads
    Several threads may run ``serve_forever`` on one server at once (the classic
    "pre-allocated pool" recipe). The listening descriptor is non-blocking, so the threads
    that lose an accept race go back to waiting instead of blocking inside accept().
    A stop request is seen by every loop; the last one out clears it.

Error handling
    An accept error never escapes and never spins: ``listeners.py`` names the policy.
    A handler exception goes to ``handle_error`` and the request is closed even if
    ``handle_error`` itself raises (that is logged, and the loop goes on).

The stdlib's private names ``_BaseServer__shutdown_request`` and
``_BaseServer__is_shut_down`` remain the flag and the event, because real code sets the
first to stop a loop without waiting and waits on the second.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .addresses import format_address
from .connection import Rejected, Stage, run_stages
from .limits import ConnectionLimiter, Ticket, untracked_ticket
from .listeners import CAPACITY_ACCEPT_ERRNOS, TRANSIENT_ACCEPT_ERRNOS, AcceptBackoff
from .metrics import DrainReport, ServerStats

log = logging.getLogger("sockserve.serve_loop")

#: While the loop has stopped accepting for lack of room, it also looks every so often:
#: a forked child's end is only seen when it is reaped, which no wake-up announces.
ROOM_POLL_SECONDS = 0.05

#: After ``drain`` aborts the stragglers, how long it gives them to unwind.
ABORT_GRACE_SECONDS = 2.0

#: Connections accepted per wake-up before the loop checks for shutdown and runs
#: ``service_actions``: large enough to drain a burst in few wake-ups, small enough that a
#: flood cannot starve the stop check.
ACCEPT_BATCH = 64

_ServerSelector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)

_STOP_FLAG = "_BaseServer__shutdown_request"
_STOPPED_EVENT = "_BaseServer__is_shut_down"


class Server(Protocol):
    """The hooks of a stdlib-style server that the loop calls, in this order."""

    server_address: Any
    timeout: float | None
    overload_policy: str

    def _capacity(self) -> tuple[int | None, str]: ...
    def handle_overload(self, request: Any, client_address: Any) -> None: ...
    def _reap_finished_work(self) -> None: ...

    def fileno(self) -> int: ...
    def get_request(self) -> tuple[Any, Any]: ...
    def verify_request(self, request: Any, client_address: Any) -> bool: ...
    def process_request(self, request: Any, client_address: Any) -> None: ...
    def handle_error(self, request: Any, client_address: Any) -> None: ...
    def shutdown_request(self, request: Any) -> None: ...
    def handle_timeout(self) -> None: ...
    def service_actions(self) -> None: ...
    def _handle_request_noblock(self) -> Any: ...


class ServeLoop:
    """Runtime state of one server's loops: who is running, how to wake them, back-off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop_threads: set[int] = set()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.backoff = AcceptBackoff()
        self.stages: list[Stage] = []
        self.accepted = 0
        self.limiter = ConnectionLimiter()
        self.limiter.on_release = self._on_release
        self._handoff = threading.local()
        self._is_waiting_for_room = False
        self._errors_lock = threading.Lock()
        self.handler_errors = 0
        self._watches: dict[int, Callable[[], None]] = {}
        self._batch = 1
        self._watch_generation = 0

    @property
    def is_running(self) -> bool:
        return bool(self._loop_threads)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on a loop thread whenever ``fd`` is readable (until unwatched).

        Strategies use it for events that only a descriptor announces, such as a forked
        child's exit. Call it from a loop thread; unwatch before closing ``fd``.
        """
        with self._lock:
            self._watches[fd] = callback
            self._watch_generation += 1

    def unwatch(self, fd: int) -> None:
        with self._lock:
            if self._watches.pop(fd, None) is not None:
                self._watch_generation += 1

    def _sync_watches(self, selector: selectors.BaseSelector, watched: set[int]) -> None:
        with self._lock:
            wanted = set(self._watches)
        for fd in watched - wanted:
            selector.unregister(fd)
        for fd in wanted - watched:
            selector.register(fd, selectors.EVENT_READ, fd)
        watched.clear()
        watched.update(wanted)

    # -- serve_forever / shutdown --------------------------------------------------------

    def serve_forever(self, server: Server, poll_interval: float) -> None:
        if not self._enter(server):
            return
        try:
            with _ServerSelector() as selector:
                selector.register(server, selectors.EVENT_READ, "listener")
                wakeup = self._wakeup
                assert wakeup is not None
                selector.register(wakeup[0], selectors.EVENT_READ, "wakeup")
                listener_registered = True
                watched: set[int] = set()
                synced_generation = -1
                while not getattr(server, _STOP_FLAG):
                    if synced_generation != self._watch_generation:
                        synced_generation = self._watch_generation
                        self._sync_watches(selector, watched)
                    wants_listener, pause = self._should_accept(server)
                    if wants_listener != listener_registered:
                        # Out of the selector while we cannot accept: the listener stays
                        # readable, and polling it would spin.
                        if wants_listener:
                            selector.register(server, selectors.EVENT_READ, "listener")
                        else:
                            selector.unregister(server)
                        listener_registered = wants_listener
                    timeout = poll_interval
                    if pause is not None:
                        timeout = pause if timeout is None else min(timeout, pause)
                    ready = selector.select(timeout)
                    if getattr(server, _STOP_FLAG):
                        break
                    for key, _ in ready:
                        if key.data == "listener":
                            self._accept_batch(server)
                        elif key.data == "wakeup":
                            _drain(wakeup[0])
                        else:
                            callback = self._watches.get(key.data)
                            if callback is not None:
                                callback()
                    server.service_actions()
        finally:
            self._leave(server)

    def _should_accept(self, server: Server) -> tuple[bool, float | None]:
        """Whether to watch the listener now, and how long at most to wait otherwise."""
        if self.backoff.is_backing_off:
            pause = self.backoff.seconds_left()
            if pause > 0:
                return False, pause
        capacity, what = server._capacity()
        has_room = self.limiter.has_room(capacity)
        policy = server.overload_policy
        self.limiter.note_capacity(not has_room, capacity, what, policy)
        self._is_waiting_for_room = policy == "wait" and not has_room
        if self._is_waiting_for_room:
            return False, ROOM_POLL_SECONDS
        return True, None

    def _on_release(self) -> None:
        if self._is_waiting_for_room:
            self.wake()

    def wake(self) -> None:
        """Make every loop look at its state now.

        Lock-free on purpose: it runs in signal handlers, which interrupt the loop's own
        thread at any bytecode, possibly while that thread holds ``self._lock``.
        """
        pair = self._wakeup
        if pair is not None:
            try:
                pair[1].send(b"\0")
            except OSError:
                pass  # the pair is full (wake-ups pending anyway) or was just closed

    def _enter(self, server: Server) -> bool:
        """Register the calling thread as a loop; False if a stop is already pending."""
        with self._lock:
            if getattr(server, _STOP_FLAG) and not self._loop_threads:
                # shutdown() came before serve_forever(): honour it, as the stdlib does.
                setattr(server, _STOP_FLAG, False)
                getattr(server, _STOPPED_EVENT).set()
                return False
            if not self._loop_threads:
                pair = socket.socketpair()
                for end in pair:
                    end.setblocking(False)
                self._wakeup = pair
                getattr(server, _STOPPED_EVENT).clear()
            self._loop_threads.add(threading.get_ident())
        _make_listener_nonblocking(server)
        return True

    def _leave(self, server: Server) -> None:
        with self._lock:
            self._loop_threads.discard(threading.get_ident())
            if self._loop_threads:
                return
            if self._wakeup is not None:
                for end in self._wakeup:
                    end.close()
                self._wakeup = None
            setattr(server, _STOP_FLAG, False)
            getattr(server, _STOPPED_EVENT).set()

    def shutdown(self, server: Server) -> None:
        """Ask every loop to stop; wait for them unless called from inside one.

        Called from a handler running on the loop's thread, or from a signal handler
        that interrupted it, waiting would deadlock: then it only asks and returns.
        Called while no loop runs, it leaves the request pending for the next loop.
        """
        # No lock here (see wake()): a signal handler may call this on the loop's thread.
        setattr(server, _STOP_FLAG, True)
        loop_threads = self._loop_threads.copy()
        must_wait = bool(loop_threads) and threading.get_ident() not in loop_threads
        self.wake()
        if must_wait:
            getattr(server, _STOPPED_EVENT).wait()

    # -- handle_request ------------------------------------------------------------------

    def handle_request(self, server: Server, socket_timeout: float | None) -> Any:
        """One request, honouring ``server.timeout`` and the listening socket's timeout."""
        timeout = socket_timeout
        if timeout is None:
            timeout = server.timeout
        elif server.timeout is not None:
            timeout = min(timeout, server.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        _make_listener_nonblocking(server)
        with _ServerSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    return server._handle_request_noblock()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        return server.handle_timeout()

    # -- one connection ------------------------------------------------------------------

    def _accept_batch(self, server: Server) -> None:
        """Accept up to the current batch size; adapt the size to what was queued.

        Asking accept() once more than there are connections costs a failed system call
        and an exception (4.7 µs measured here), paid on every wake-up of a lightly
        loaded server; not batching costs a selector round per connection in a burst.
        So the batch doubles while every accept succeeds and halves when one finds the
        queue empty: one accept per wake-up when quiet, up to ACCEPT_BATCH in a burst.
        """
        limit = self._batch
        accepted = 0
        while accepted < limit:
            if server._handle_request_noblock() is not True:
                self._batch = max(1, limit // 2)
                return
            accepted += 1
            if getattr(server, _STOP_FLAG):
                return
            if server.overload_policy == "wait" and not self.limiter.has_room(
                server._capacity()[0]
            ):
                return
        self._batch = min(ACCEPT_BATCH, limit * 2)

    def handle_one(self, server: Server) -> bool:
        """Accept one request and carry it to the strategy; False if none was accepted."""
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            self._on_accept_error(server, exc)
            return False
        self.backoff.record_success(server.server_address)
        self.accepted += 1
        admitted = admit(server, self.limiter, self.stages, request, client_address, log)
        if admitted is None:
            return True
        request, client_address, ticket = admitted
        self._handoff.ticket = ticket
        try:
            if server.verify_request(request, client_address):
                server.process_request(request, client_address)
            else:
                server.shutdown_request(request)
        except Exception:
            report_handler_error(server, request, client_address)
        except BaseException:
            server.shutdown_request(request)
            raise
        finally:
            if self._handoff.ticket is ticket:  # no strategy took it: the work is done
                self._handoff.ticket = None
                ticket.finish()
        return True

    def take_ticket(self) -> Ticket:
        """For a strategy inside ``process_request``: the request's ticket, now its to finish.

        Outside the loop (``process_request`` called directly) it is a ticket that counts
        nothing, so strategies need no special case.
        """
        ticket: Ticket | None = getattr(self._handoff, "ticket", None)
        if ticket is None:
            return untracked_ticket()
        self._handoff.ticket = None
        return ticket

    def count_handler_error(self) -> None:
        with self._errors_lock:
            self.handler_errors += 1

    # -- stats and drain -----------------------------------------------------------------

    def stats(self) -> ServerStats:
        return self.limiter.snapshot(
            accepted=self.accepted,
            handler_errors=self.handler_errors,
            accept_errors=self.backoff.total_errors,
        )

    def drain(self, server: Server, timeout: float) -> DrainReport:
        """Stop accepting, let in-flight work finish until the deadline, abort the rest."""
        started = time.monotonic()
        deadline = started + timeout
        admitted_before = self.limiter.admitted - self.limiter.active
        setattr(server, _STOP_FLAG, True)  # ask, never wait: a loop may be mid-request
        self.wake()
        idle = self._wait_idle(server, deadline)
        aborted = 0
        if not idle:
            stragglers = self.limiter.in_flight()
            aborted = len(stragglers)
            log.warning(
                "drain: %d request(s) still running after %.1f s; aborting them",
                aborted,
                timeout,
            )
            for ticket in stragglers:
                ticket.abort()
            self._wait_idle(server, time.monotonic() + ABORT_GRACE_SECONDS)
        if self.is_running:
            getattr(server, _STOPPED_EVENT).wait(ABORT_GRACE_SECONDS)
        finished = self.limiter.admitted - admitted_before - aborted - self.limiter.active
        return DrainReport(
            finished=max(finished, 0), aborted=aborted, seconds=time.monotonic() - started
        )

    def _wait_idle(self, server: Server, deadline: float) -> bool:
        while True:
            server._reap_finished_work()
            step = min(deadline, time.monotonic() + ROOM_POLL_SECONDS)
            if self.limiter.wait_idle(step):
                return True
            if time.monotonic() >= deadline:
                return False

    def _on_accept_error(self, server: Server, exc: OSError) -> None:
        if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
            return  # this connection is gone (or none was there); the next accept may work
        if exc.errno in CAPACITY_ACCEPT_ERRNOS or self.is_running:
            self.backoff.record_failure(exc, server.server_address)
        else:
            log.error("accept() on %s failed", format_address(server.server_address), exc_info=exc)


def admit(
    server: Any,
    limiter: ConnectionLimiter,
    stages: list[Stage],
    request: Any,
    client_address: Any,
    logger: logging.Logger,
) -> tuple[Any, Any, Ticket] | None:
    """Run the admission stages, then the overload policy, for one accepted request.

    Returns the (possibly rewritten) request and address with the request's ticket, or
    None when it was refused: then it has been counted, logged on ``logger`` and closed
    (after ``handle_overload`` for a server at capacity under the "reject" policy).
    Shared by the synchronous and the async serve loops.
    """
    try:
        request, client_address = run_stages(stages, request, client_address)
    except Rejected as why:
        limiter.reject(why.reason)
        logger.info("refused %s: %s", format_address(client_address), why)
        server.shutdown_request(request)
        return None
    capacity, what = server._capacity()
    if server.overload_policy == "reject" and not limiter.has_room(capacity):
        limiter.reject(what)
        limiter.note_capacity(True, capacity, what, "reject")
        try:
            server.handle_overload(request, client_address)
        except Exception:
            logger.exception("handle_overload() raised for %s", format_address(client_address))
        finally:
            server.shutdown_request(request)
        return None
    return request, client_address, limiter.admit(request, client_address)


def report_handler_error(server: Server, request: Any, client_address: Any) -> None:
    """Give the current exception to ``handle_error``; close the request whatever happens."""
    loop = getattr(server, "_serve_loop", None)
    if isinstance(loop, ServeLoop):
        loop.count_handler_error()
    try:
        call_handle_error(server, request, client_address, log)
    finally:
        server.shutdown_request(request)


def call_handle_error(
    server: Any, request: Any, client_address: Any, logger: logging.Logger
) -> None:
    """Give the current exception to ``handle_error``; if that raises too, log it on
    ``logger`` instead of letting it end the loop or the connection's task."""
    try:
        server.handle_error(request, client_address)
    except Exception:
        logger.exception(
            "handle_error() itself raised while reporting an error for %s",
            format_address(client_address),
        )


def _make_listener_nonblocking(server: Server) -> None:
    """Put the listening descriptor in non-blocking mode, leaving the Python-level timeout.

    ``os.set_blocking`` changes the descriptor's O_NONBLOCK flag only, so
    ``server.socket.gettimeout()`` (which ``handle_request`` reads) keeps the user's
    value, accepted sockets stay blocking (Linux does not inherit the flag through
    accept), and an accept that lost a race raises BlockingIOError instead of hanging.
    Datagram servers are left alone: their socket also sends replies.
    """
    sock = getattr(server, "socket", None)
    if isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM:
        try:
            os.set_blocking(sock.fileno(), False)
        except OSError:
            pass  # closed already: the selector will report it


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, OSError):
        pass
