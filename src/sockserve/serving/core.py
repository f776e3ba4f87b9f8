"""The serving core: what every loop does with a connection, written once.

Both event sources drive one ``ServingCore`` per server: the selector loop of the
synchronous modes (``selector_loop.py``) and the asyncio loop of the async mode
(``aio/serve_loop.py``). The core knows nothing about selectors or event loops. A loop
accepts, then asks the core:

1. ``admit_peer``: the peer checks (is this a trusted proxy? too many accepts?);
2. the loop drives the preludes (``admission/preludes.py``) on its own readiness events;
3. ``admit_client``: the client checks, then capacity under the overload policy; the
   result is a ``RequestJob`` holding the request's ``Ticket``, or None if refused;
4. the core runs its ``on_request_admitted`` hooks (the pre-fork worker counts
   ``max_requests`` with one, in every mode), and the loop hands the job to
   ``process_request`` (sync) or a task (async); the job, whoever runs it, finishes the
   ticket; the core then runs ``on_request_done`` hooks and wakes a loop waiting for
   room.

With traffic recorded (``record_traffic``: an access log or metrics), the core also
measures each request's bytes as ``shutdown_request`` closes it (``closing``) and hands
each finished ticket and each refusal to ``traffic.py``, once, for every loop and mode.

The core also owns the counters behind ``stats()``, the accept-error back-off, and the
episode logs: a refused connection, a peer fault or a dropped datagram is counted by
reason and logged once per episode (``episodes.py``), not once each.

Error handling: the core never raises into a loop for a single connection's sake; a
refused connection is closed here (after ``handle_overload`` for an overload refusal).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..access_log import REFUSED, AccessLog
from ..addresses import format_address
from ..admission.checks import AdmissionCheck, Refused, check_judges
from ..admission.limits import ConnectionLimiter, Ticket, untracked_ticket
from ..admission.preludes import Prelude, prelude_order
from ..episodes import EpisodeLog
from ..listeners import CAPACITY_ACCEPT_ERRNOS, TRANSIENT_ACCEPT_ERRNOS, AcceptBackoff
from ..metrics import ServerStats
from ..tcp_info import read_traffic
from .connection_watch import ConnectionWatch
from .job import HANDLER_ERROR, SERVED, RequestJob
from .traffic import TrafficRecorder, measure

log = logging.getLogger("sockserve.serving")


class ServingCore:
    """Admission, bookkeeping and counters of one server, for whichever loop serves it."""

    def __init__(self) -> None:
        self.limiter = ConnectionLimiter()
        self.limiter.on_release = self._released
        self.backoff = AcceptBackoff()
        self.peer_checks: list[AdmissionCheck] = []
        self.client_checks: list[AdmissionCheck] = []
        self.preludes: list[Prelude] = []
        self.accepted = 0
        self.handler_errors = 0
        self.peer_faults: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.refusals = EpisodeLog(log, "refused connections")
        self.peer_fault_log = EpisodeLog(log, "connections ended by the client")
        self.drops = EpisodeLog(log, "dropped datagrams", level=logging.WARNING)
        #: The connections being served, watched for slow clients (``RequestJob.serve``,
        #: ``aio/connections.py``); None while the server sets no slow-client limit.
        self.connection_watch: ConnectionWatch | None = None
        self._handed_over: dict[int, RequestJob] = {}
        # Jobs running a stdlib hook that serves by request alone (``RequestJob.run_with``);
        # apart from _handed_over, which the loop empties behind the dispatcher's back.
        self._lent: dict[int, RequestJob] = {}
        #: Bytes, durations and the access log (``traffic.py``); None: not recorded.
        self.traffic: TrafficRecorder | None = None
        # While traffic is recorded: each admitted request's ticket, by the request's
        # identity, for ``closing`` (the object is kept to tell a reused id apart).
        self._tickets: dict[int, Ticket] = {}
        # Keyed by identity; the object itself is kept to tell a reused id apart.
        self._details: dict[int, tuple[Any, dict[str, Any]]] = {}
        #: Called with each admitted request's ticket, on the loop's thread, before the
        #: request is dispatched (the pre-fork worker counts ``max_requests`` here, so
        #: it stops accepting the moment its budget is spent).
        self.on_request_admitted: list[Callable[[Ticket], None]] = []
        #: Called with each finished ticket, on the thread that finished it.
        self.on_request_done: list[Callable[[Ticket], None]] = []
        #: Set by the loop that serves: wake it (a slot freed while it waits for room).
        self.wake_loop: Callable[[], None] = lambda: None
        #: The server is draining (handlers may look: ``server.draining``).
        self.is_draining = False
        #: ``limiter.released`` when a stop that will end in a drain began (a pre-fork
        #: worker's SIGTERM): the drain counts what finished since then.
        self.drain_mark: int | None = None

    # -- configuration ---------------------------------------------------------------------

    def add_check(self, check: AdmissionCheck) -> None:
        """Append ``check`` to the peer or client checks, by what it judges."""
        if check_judges(check) == "peer":
            self.peer_checks.append(check)
        else:
            self.client_checks.append(check)

    def add_prelude(self, prelude: Prelude) -> None:
        """Add ``prelude`` after those of the same ``order`` (``admission/preludes.py``)."""
        bisect.insort_right(self.preludes, prelude, key=prelude_order)

    def begin_draining(self) -> int:
        """Mark the drain's start (once); the ``limiter.released`` count it counts from."""
        if self.drain_mark is None:
            self.drain_mark = self.limiter.released
        self.is_draining = True
        return self.drain_mark

    # -- admission -------------------------------------------------------------------------

    def admit_peer(self, server: Any, request: Any, client_address: Any) -> tuple[Any, Any] | None:
        """Count the accept and run the peer checks; None if refused (then closed)."""
        self.accepted += 1
        try:
            for check in self.peer_checks:
                request, client_address = check(request, client_address)
        except Refused as why:
            self.refuse(server, request, client_address, why.reason, str(why))
            return None
        return request, client_address

    def admit_client(
        self,
        server: Any,
        request: Any,
        client_address: Any,
        details: dict[str, Any] | None = None,
    ) -> RequestJob | None:
        """Client checks, then capacity: the request's job, or None if refused (closed).

        ``details`` (what the preludes learnt: ``"proxy"``, ``"tls"``) stay readable by
        the handler through ``detail_of(request, key)`` until the request finishes.
        """
        # Each releasing check with the address it judged: a later check may rewrite
        # the address, and a per-client count must be released under its own key.
        holding: list[tuple[Any, Any]] = []
        try:
            for check in self.client_checks:
                request, client_address = check(request, client_address)
                if hasattr(check, "release"):
                    holding.append((check, client_address))
        except Refused as why:
            _release_all(holding)
            self.refuse(server, request, client_address, why.reason, str(why))
            return None
        capacity, what = server._capacity()
        limiter = self.limiter
        if server.overload_policy == "reject" and not limiter.has_room(capacity):
            _release_all(holding)
            limiter.note_capacity(True, capacity, what, "reject")
            self.refuse(server, request, client_address, what, "at capacity", overloaded=True)
            return None
        ticket = limiter.admit(request, client_address)
        if self.traffic is not None:
            self._tickets[id(request)] = ticket
        if holding:
            ticket.releases = tuple(holding)
        for hook in self.on_request_admitted:
            hook(ticket)
        job = RequestJob(server, request, client_address, ticket, self)
        if details:
            job.details = details
            self.register_details(request, details)
        return job

    # -- what the preludes learnt, for the handler ------------------------------------------

    def register_details(self, request: Any, details: dict[str, Any]) -> None:
        """Make ``details`` readable under ``request`` (the object the handler gets)."""
        self._details[id(request)] = (request, details)

    def forget_details(self, request: Any) -> None:
        entry = self._details.get(id(request))
        if entry is not None and entry[0] is request:
            del self._details[id(request)]

    def detail_of(self, request: Any, key: str) -> Any:
        """What a prelude recorded as ``key`` for ``request``; None if nothing."""
        entry = self._details.get(id(request))
        if entry is None or entry[0] is not request:
            return None
        return entry[1].get(key)

    def refuse(
        self,
        server: Any,
        request: Any,
        client_address: Any,
        reason: str,
        message: str,
        *,
        overloaded: bool = False,
    ) -> None:
        """Count, log once per episode, and close a refused connection."""
        self.note_refusal(reason, client_address, message)
        if self.traffic is not None:
            self.traffic.refused(request, client_address, reason)
        try:
            if overloaded:
                server.handle_overload(request, client_address)
        except Exception:
            log.exception("handle_overload() raised for %s", format_address(client_address))
        finally:
            try:
                server.shutdown_request(request)
            except OSError:
                pass  # the peer is gone already; nothing left to close cleanly

    def note_refusal(self, reason: str, client_address: Any, message: str) -> None:
        """Count and log (once per episode) a refusal whose connection is closed elsewhere
        (the async mode's TLS handshake fails inside the request's task)."""
        self.limiter.reject(reason)
        self.refusals.note(reason, f"{format_address(client_address)}: {message}")

    def note_dropped(self, reason: str, detail: str, client_address: Any = None) -> None:
        """A datagram dropped before it became a request: counted with the refusals."""
        self.limiter.reject(reason)
        self.drops.note(reason, detail)
        if self.traffic is not None and self.traffic.access_log is not None:
            self.traffic.access_log.connection_ended(
                client_address, REFUSED, None, None, None, reason=reason
            )

    # -- handing a job to process_request, without a thread-local ---------------------------

    def hand_over(self, job: RequestJob) -> None:
        """Leave ``job`` for the ``process_request`` about to be called with its request."""
        self._handed_over[id(job.request)] = job

    def claim(self, server: Any, request: Any, client_address: Any) -> RequestJob:
        """For a dispatcher inside ``process_request``: the request's job, now its to run.

        Called outside the loop (a direct ``process_request`` call), or with a request
        the loop never saw, it is a job whose ticket counts nothing.
        """
        job = self._handed_over.pop(id(request), None)
        return self._job_or_untracked(job, server, request, client_address)

    def take_back(self, job: RequestJob) -> bool:
        """After ``process_request``: True if no dispatcher claimed ``job`` (so the work
        was done in the call, and the loop finishes it)."""
        if self._handed_over.get(id(job.request)) is job:
            del self._handed_over[id(job.request)]
            return True
        return False

    def lend(self, job: RequestJob) -> None:
        """While ``job`` runs a hook given only its request: find it by that request."""
        self._lent[id(job.request)] = job

    def end_loan(self, job: RequestJob) -> None:
        if self._lent.get(id(job.request)) is job:
            del self._lent[id(job.request)]

    def borrow(self, server: Any, request: Any, client_address: Any) -> RequestJob:
        """The lent job of ``request``, or one whose ticket counts nothing."""
        job = self._lent.get(id(request))
        return self._job_or_untracked(job, server, request, client_address)

    def _job_or_untracked(
        self, job: RequestJob | None, server: Any, request: Any, client_address: Any
    ) -> RequestJob:
        """``job`` if it is ``request``'s (ids are reused), else one counting nothing."""
        if job is None or job.request is not request:
            return RequestJob(server, request, client_address, untracked_ticket(), self)
        return job

    # -- traffic ---------------------------------------------------------------------------

    def record_traffic(self, access_log: AccessLog | None = None) -> None:
        """Count bytes and durations from now on; write ``access_log``'s lines if given."""
        if self.traffic is None:
            self.traffic = TrafficRecorder(access_log)
        elif access_log is not None:
            self.traffic.access_log = access_log

    def closing(self, request: Any) -> None:
        """``request`` is about to be closed (``shutdown_request``): if traffic is
        recorded, read what it carried into its ticket while the kernel still knows."""
        if self.traffic is None:
            return
        ticket = self._tickets.pop(id(request), None)
        if ticket is not None and ticket.request is request:
            # A connection's socket, as a rule; a datagram request is a tuple.
            bytes_carried = measure(request) if type(request) is tuple else read_traffic(request)
            ticket.bytes_in, ticket.bytes_out = bytes_carried

    # -- outcomes --------------------------------------------------------------------------

    def count_outcome(self, outcome: str) -> None:
        """A request ended with ``outcome`` (a peer-fault kind or a handler error)."""
        if outcome == SERVED:
            return
        with self._counts_lock:
            if outcome == HANDLER_ERROR:
                self.handler_errors += 1
            else:
                self.peer_faults[outcome] += 1

    def _released(self, ticket: Ticket) -> None:
        if self._details:
            self.forget_details(ticket.request)
        for check, judged_address in ticket.releases:
            try:
                check.release(judged_address)
            except Exception:
                log.exception("admission check %r failed to release", check)
        if self.traffic is not None:
            if self._tickets.get(id(ticket.request)) is ticket:
                del self._tickets[id(ticket.request)]  # closed without shutdown_request
            self.traffic.finished(ticket)
        for hook in self.on_request_done:
            hook(ticket)
        self.wake_loop()

    # -- accepting ------------------------------------------------------------------------

    def on_accept_error(self, exc: OSError, address: Any, *, is_serving: bool) -> bool:
        """Apply the accept-error policy; True if the loop should back off now."""
        if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
            return False  # that connection is gone (or none was there); try the next
        if exc.errno in CAPACITY_ACCEPT_ERRNOS or is_serving:
            self.backoff.record_failure(exc, address)
            return True
        log.error("accept() on %s failed", format_address(address), exc_info=exc)
        return False

    def tick(self) -> None:
        """Once per loop turn: log the summaries of episodes that have ended."""
        self.backoff.flush()
        self.refusals.flush()
        self.peer_fault_log.flush()
        self.drops.flush()

    # -- stats ------------------------------------------------------------------------------

    def stats(self, *, queue_depth: int = 0, workers_alive: int = 0) -> ServerStats:
        limiter = self.limiter
        with self._counts_lock:
            handler_errors = self.handler_errors
            peer_faults = dict(self.peer_faults)
        traffic = ServerStats()
        if self.traffic is not None:
            bytes_in, bytes_out, counts, seconds = self.traffic.snapshot()
            traffic = ServerStats(
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                duration_counts=counts,
                duration_sum=seconds,
            )
        return ServerStats(
            accepted=self.accepted,
            active=limiter.active,
            peak_active=limiter.peak,
            rejected=dict(limiter.rejected),
            handler_errors=handler_errors,
            peer_faults=peer_faults,
            finished=limiter.released,
            accept_errors=self.backoff.total_errors,
            queue_depth=queue_depth,
            workers_alive=workers_alive,
            bytes_in=traffic.bytes_in,
            bytes_out=traffic.bytes_out,
            duration_counts=traffic.duration_counts,
            duration_sum=traffic.duration_sum,
        )


def _release_all(holding: list[tuple[Any, Any]]) -> None:
    for check, judged_address in holding:
        check.release(judged_address)
