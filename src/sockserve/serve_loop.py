"""The serve loop: the one place that wires listener, stages, strategy and handler together.

How it works
    ``serve_forever`` waits in a selector on two things: the server's listening socket and
    the read end of a socket pair. ``shutdown()`` writes a byte to the pair, so the loop
    wakes at once instead of at the next ``poll_interval`` tick; ``poll_interval`` only
    paces ``service_actions()``. When the listener is readable the loop accepts a batch
    of pending connections (adapting its size, up to ``ACCEPT_BATCH``), and each one
    goes: ``get_request`` → admission (``admission.py``) → ``verify_request`` →
    ``process_request`` (which hands the work to the dispatch strategy) → handler.

Threads
    Several threads may run ``serve_forever`` on one server at once. Which ones, how they
    are woken and how they stop is ``loop_threads.py``, the base of ``ServeLoop``.

Error handling
    An accept error never escapes and never spins: ``listeners.py`` names the policy.
    A handler exception goes to ``handle_error`` and the request is closed even if
    ``handle_error`` itself raises (that is logged, and the loop goes on).
"""

from __future__ import annotations

import logging
import selectors
import threading
import time
from typing import Any, Protocol

from .addresses import format_address
from .admission import admit
from .connection import Stage
from .handler_errors import call_handle_error
from .limits import ConnectionLimiter, Ticket, untracked_ticket
from .listeners import CAPACITY_ACCEPT_ERRNOS, TRANSIENT_ACCEPT_ERRNOS, AcceptBackoff
from .loop_threads import (
    STOP_FLAG,
    STOPPED_EVENT,
    LoopThreads,
    discard_wakeups,
    make_listener_nonblocking,
)
from .metrics import DrainReport, ServerStats

log = logging.getLogger("sockserve.serve_loop")

#: While the loop has stopped accepting for lack of room, it also looks every so often:
#: a forked child's end is only seen when it is reaped, which no wake-up announces.
ROOM_POLL_SECONDS = 0.05

#: After ``drain`` aborts the stragglers (or, in async mode, ``shutdown`` cancels the
#: requests still running), how long they get to unwind.
ABORT_GRACE_SECONDS = 2.0

#: Connections accepted per wake-up before the loop checks for shutdown and runs
#: ``service_actions`` (the async loop: before it serves the running handlers): large
#: enough to drain a burst in few wake-ups, small enough that a flood cannot starve the
#: stop check or the handlers.
ACCEPT_BATCH = 64

_ServerSelector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)


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


class ServeLoop(LoopThreads):
    """Runtime state of one server's loops: who is running, how to wake them, back-off."""

    def __init__(self) -> None:
        super().__init__()
        self.backoff = AcceptBackoff()
        self.stages: list[Stage] = []
        self.accepted = 0
        self.limiter = ConnectionLimiter()
        self.limiter.on_release = self._on_release
        self._handoff = threading.local()
        self._is_waiting_for_room = False
        self._errors_lock = threading.Lock()
        self.handler_errors = 0
        self._batch = 1

    # -- serve_forever -------------------------------------------------------------------

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
                while not getattr(server, STOP_FLAG):
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
                    if getattr(server, STOP_FLAG):
                        break
                    for key, _ in ready:
                        if key.data == "listener":
                            self._accept_batch(server)
                        elif key.data == "wakeup":
                            discard_wakeups(wakeup[0])
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

    # -- handle_request ------------------------------------------------------------------

    def handle_request(self, server: Server, socket_timeout: float | None) -> Any:
        """One request, honouring ``server.timeout`` and the listening socket's timeout."""
        timeout = socket_timeout
        if timeout is None:
            timeout = server.timeout
        elif server.timeout is not None:
            timeout = min(timeout, server.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        make_listener_nonblocking(server)
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
            if getattr(server, STOP_FLAG):
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
        setattr(server, STOP_FLAG, True)  # ask, never wait: a loop may be mid-request
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
            getattr(server, STOPPED_EVENT).wait(ABORT_GRACE_SECONDS)
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


def report_handler_error(server: Server, request: Any, client_address: Any) -> None:
    """Give the current exception to ``handle_error``; close the request whatever happens.

    The synchronous path's reporter (the mixins' workers use it too): it counts the error on
    the server's ``ServeLoop``, which is why it lives beside that class and not in
    ``handler_errors.py``.
    """
    loop = getattr(server, "_serve_loop", None)
    if isinstance(loop, ServeLoop):
        loop.count_handler_error()
    try:
        call_handle_error(server, request, client_address, log)
    finally:
        server.shutdown_request(request)
