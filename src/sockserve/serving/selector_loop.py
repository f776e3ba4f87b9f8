"""The selector loop: the synchronous modes' event source for the serving core.

How it works
    ``serve_forever`` waits in a selector on the server's listening socket, the read end
    of a wake-up socket pair, descriptors strategies asked to watch (a forked child's
    pidfd) and connections in their preludes. ``shutdown()`` writes a byte to the pair,
    so the loop wakes at once instead of at the next ``poll_interval`` tick;
    ``poll_interval`` only paces ``service_actions()``. When the listener is readable the
    loop accepts a batch (adapting its size, up to ``ACCEPT_BATCH``), and each connection
    goes: ``get_request`` → ``core.admit_peer`` → preludes (``pending_preludes.py``, on
    this selector) → ``core.admit_client`` → ``verify_request`` → ``process_request``
    (the mixin's dispatcher runs the ``RequestJob``) → handler.

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
import socket
import threading
import time
from typing import Any, Protocol

from ..admission.checks import Refused
from ..admission.preludes import drive_blocking
from ..listener_stop import backlog_bound, refuse_new_connections
from ..metrics import DrainReport
from .core import ServingCore
from .job import UNVERIFIED
from .loop_threads import (
    STOP_FLAG,
    STOPPED_EVENT,
    LoopThreads,
    discard_wakeups,
    make_listener_nonblocking,
)
from .pending_preludes import PendingPreludes

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
    max_pending_preludes: int

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
    """Drives a server's ``ServingCore`` from a selector, on one or more threads."""

    def __init__(self, core: ServingCore) -> None:
        super().__init__()
        self.core = core
        core.wake_loop = self._on_release
        self._preludes_of: dict[int, PendingPreludes] = {}  # per loop thread
        self._is_waiting_for_room = False
        self._batch = 1

    # -- serve_forever -------------------------------------------------------------------

    def serve_forever(self, server: Server, poll_interval: float) -> None:
        if not self._enter(server):
            return
        thread = threading.get_ident()
        try:
            with _ServerSelector() as selector:
                selector.register(server, selectors.EVENT_READ, "listener")
                wakeup = self._wakeup
                assert wakeup is not None
                selector.register(wakeup[0], selectors.EVENT_READ, "wakeup")
                preludes = PendingPreludes(
                    selector,
                    self.core.preludes,
                    on_done=lambda request, address, details: self._dispatch(
                        server, request, address, details
                    ),
                    on_refused=lambda request, address, why: self._refuse(
                        server, request, address, why
                    ),
                )
                self._preludes_of[thread] = preludes
                try:
                    self._run(server, selector, preludes, poll_interval)
                    if self.core.is_draining and len(preludes):
                        log.info(
                            "drain: finishing the preludes of %d accepted connection(s)",
                            len(preludes),
                        )
                        preludes.finish_all()
                finally:
                    del self._preludes_of[thread]
                    for request, address in preludes.abandon_all():
                        self._refuse(server, request, address, Refused("stopping"))
        finally:
            self._leave(server)

    def _run(
        self,
        server: Server,
        selector: selectors.BaseSelector,
        preludes: PendingPreludes,
        poll_interval: float,
    ) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        listener_registered = True
        watched: set[int] = set()
        synced_generation = -1
        core = self.core
        while not getattr(server, STOP_FLAG):
            if synced_generation != self._watch_generation:
                synced_generation = self._watch_generation
                self._sync_watches(selector, watched)
            wants_listener, pause = self._should_accept(server, len(preludes))
            if wants_listener != listener_registered:
                # Out of the selector while we cannot accept: the listener stays
                # readable, and polling it would spin.
                if wants_listener:
                    selector.register(server, selectors.EVENT_READ, "listener")
                else:
                    selector.unregister(server)
                listener_registered = wants_listener
            timeout = _earliest(poll_interval, pause, preludes.next_deadline())
            ready = selector.select(timeout)
            if getattr(server, STOP_FLAG):
                break
            for key, _ in ready:
                data = key.data
                if data == "listener":
                    self._accept_batch(server)
                elif data == "wakeup":
                    discard_wakeups(wakeup[0])
                elif data is preludes:
                    preludes.on_ready(key)
                else:
                    callback = self._watches.get(data)
                    if callback is not None:
                        callback()
            if len(preludes):
                preludes.expire(time.monotonic())
            core.tick()
            server.service_actions()

    def _should_accept(self, server: Server, in_preludes: int) -> tuple[bool, float | None]:
        """Whether to watch the listener now, and how long at most to wait otherwise."""
        backoff = self.core.backoff
        if backoff.is_backing_off:
            pause = backoff.seconds_left()
            if pause > 0:
                return False, pause
        if in_preludes >= server.max_pending_preludes:
            return False, None  # a prelude ending (or its deadline) wakes the loop
        capacity, what = server._capacity()
        limiter = self.core.limiter
        has_room = limiter.has_room(capacity)
        policy = server.overload_policy
        limiter.note_capacity(not has_room, capacity, what, policy)
        self._is_waiting_for_room = policy == "wait" and not has_room
        if self._is_waiting_for_room:
            return False, ROOM_POLL_SECONDS
        return True, None

    def _on_release(self) -> None:
        if self._is_waiting_for_room:
            self.wake()

    def ask_to_stop(self, server: object) -> None:
        """Ask every loop to stop and return at once (safe from any thread or handler)."""
        setattr(server, STOP_FLAG, True)
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
            if server.overload_policy == "wait" and not self.core.limiter.has_room(
                server._capacity()[0]
            ):
                return
        self._batch = min(ACCEPT_BATCH, limit * 2)

    def handle_one(self, server: Server) -> bool:
        """Accept one request and carry it on; False if none was accepted."""
        core = self.core
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            core.on_accept_error(exc, server.server_address, is_serving=self.is_running)
            return False
        core.backoff.record_success(server.server_address)
        admitted = core.admit_peer(server, request, client_address)
        if admitted is None:
            return True
        request, client_address = admitted
        details: dict[str, Any] = {}
        if core.preludes:
            preludes = self._preludes_of.get(threading.get_ident())
            if preludes is not None:
                preludes.start(request, client_address)
                return True
            try:  # handle_request(), or a thread outside the loops: one connection
                request, client_address, details = drive_blocking(
                    core.preludes, request, client_address
                )
                request.setblocking(True)
            except Refused as why:
                self._refuse(server, why.connection or request, client_address, why)
                return True
        self._dispatch(server, request, client_address, details)
        return True

    def _refuse(self, server: Server, request: Any, client_address: Any, why: Refused) -> None:
        self.core.refuse(server, request, client_address, why.reason, str(why))

    def _dispatch(
        self, server: Server, request: Any, client_address: Any, details: dict[str, Any]
    ) -> None:
        """Client checks, capacity, ``verify_request``, then ``process_request``."""
        job = self.core.admit_client(server, request, client_address, details)
        if job is None:
            return
        self.core.hand_over(job)
        try:
            if server.verify_request(job.request, job.client_address):
                server.process_request(job.request, job.client_address)
            else:
                job.ticket.outcome = UNVERIFIED
                job.close()
        except Exception as exc:
            job.report(exc)
        except BaseException:
            job.close()
            raise
        finally:
            if self.core.take_back(job):  # no dispatcher took it: the work is done
                job.finish()

    # -- drain -----------------------------------------------------------------------------

    def drain(self, server: Server, timeout: float, *, takes_backlog: bool) -> DrainReport:
        """Stop listening, let in-flight work finish until the deadline, abort the rest.

        The connections the kernel had already queued are accepted and served
        (``takes_backlog``; not for an inline server, whose drain would run them on the
        caller's thread), then the listening socket is closed, so new connections are
        refused at once and a load balancer's health check fails.
        """
        started = time.monotonic()
        deadline = started + timeout
        core = self.core
        released_before = core.begin_draining()
        log.info("draining %d request(s) for up to %.1f s", core.limiter.active, timeout)
        # Ask, never wait for it: a loop may be mid-request. Under the threads' lock, so
        # that a loop entering now either sees the stop or counts as running: seen
        # otherwise (1 start in ~50 signalled at its ready line), the listener closed
        # below while a loop that had just entered went on to register it.
        with self._lock:
            setattr(server, STOP_FLAG, True)
            is_running = self.is_running
        self.wake()
        if is_running:
            getattr(server, STOPPED_EVENT).wait(max(0.0, deadline - time.monotonic()))
        self._stop_listening(server, deadline if takes_backlog else started)
        idle = self._wait_idle(server, deadline)
        finished = core.limiter.released - released_before
        aborted = 0
        if not idle:
            stragglers = core.limiter.in_flight()
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
        return DrainReport(finished=finished, aborted=aborted, seconds=time.monotonic() - started)

    def _stop_listening(self, server: Server, backlog_deadline: float) -> None:
        """Serve what the kernel queued (until the deadline), then close the listener."""
        listener = getattr(server, "socket", None)
        if not isinstance(listener, socket.socket) or listener.type != socket.SOCK_STREAM:
            return  # datagram handlers reply through the server's socket: keep it
        if listener.fileno() < 0 or self.is_running:
            return
        make_listener_nonblocking(server)
        # No new connections from here, so the close below resets nobody and the sweep
        # ends (listener_stop.refuse_new_connections says how, and when it does nothing).
        refuse_new_connections(server)
        for _ in range(backlog_bound(server)):
            if time.monotonic() >= backlog_deadline:
                break
            if server._handle_request_noblock() is not True:
                break
        listener.close()

    def _wait_idle(self, server: Server, deadline: float) -> bool:
        while True:
            server._reap_finished_work()
            step = min(deadline, time.monotonic() + ROOM_POLL_SECONDS)
            if self.core.limiter.wait_idle(step):
                return True
            if time.monotonic() >= deadline:
                return False


def _earliest(poll_interval: float | None, pause: float | None, deadline: float | None) -> Any:
    """The selector timeout: the shortest of the poll interval, a pause and a deadline."""
    timeout = poll_interval
    if pause is not None:
        timeout = pause if timeout is None else min(timeout, pause)
    if deadline is not None:
        left = max(0.0, deadline - time.monotonic())
        timeout = left if timeout is None else min(timeout, left)
    return timeout
