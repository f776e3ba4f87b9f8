"""A request's life, written once: run the handler, report an error, close, finish.

Every dispatcher is handed a ``RequestJob`` and runs it: inline on the loop, on a new
thread, on a pool worker, in a forked child, or (async mode) in a task. The job owns the
order of the stdlib's hooks (``finish_request``, then ``handle_error`` if it raised, then
``shutdown_request``) and the bookkeeping after them (the ticket, which frees the slot
and tells the core the request is done). Each step runs once, however the job is split
across threads: the pool serves on a worker and closes once the worker counts as idle;
a forked child serves and closes, the parent finishes when the child is reaped.

How the job reaches a dispatcher through the stdlib hook ``process_request(request,
client_address)``, which user code overrides and calls with ``super()``: the loop leaves
the job with the core under the request's identity (``ServingCore.hand_over``) and the
mixin's ``process_request`` claims it by that request (``claim``). No thread-local: the
request object itself is the key, so several loop threads never see each other's jobs.
An override that never calls ``super()`` (it serves the request itself) leaves the job
unclaimed, and the loop finishes it when ``process_request`` returns.

Slow clients: when the server has slow-client limits, ``serve`` puts the connection in
the core's ``ConnectionWatch`` for as long as the handler runs (``connection_watch.py``).
A connection cut for breaking one ends like any other, but what is counted and given to
``handle_error`` is the limit it broke (``IdleTimeoutError``...), not the end of stream
or broken pipe the handler saw when it was cut.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Protocol

from ..admission.limits import Ticket, untracked_ticket
from ..errors import SlowPeerError
from ..handler_errors import call_handle_error, peer_fault_kind
from .connection_watch import ConnectionWatch, shutdown_both

log = logging.getLogger("sockserve.serving")


class OutcomeCounter(Protocol):
    """What a job reports to: the serving core (``core.py``), seen from here."""

    #: The connections watched for slow clients; None when no limit is set.
    connection_watch: ConnectionWatch | None

    def count_outcome(self, outcome: str) -> None: ...

    def lend(self, job: RequestJob) -> None: ...

    def end_loan(self, job: RequestJob) -> None: ...

    def borrow(self, server: Any, request: Any, client_address: Any) -> RequestJob: ...


class RequestJob:
    """One admitted request and what is left to do for it."""

    __slots__ = (
        "server",
        "request",
        "client_address",
        "ticket",
        "details",
        "_core",
        "_is_closed",
    )

    def __init__(
        self,
        server: Any,
        request: Any,
        client_address: Any,
        ticket: Ticket,
        core: OutcomeCounter | None,
    ) -> None:
        self.server = server
        self.request = request
        self.client_address = client_address
        self.ticket = ticket
        #: What the preludes learnt about the connection (``"proxy"``, ``"tls"``).
        self.details: dict[str, Any] | None = None
        self._core = core
        self._is_closed = False

    def run(self) -> None:
        """The whole life, here and now: serve, close, finish."""
        try:
            self.serve()
        finally:
            self.finish()

    def serve(self, *, close: bool = True) -> str:
        """Run the handler and close the request; report an exception.

        Returns the outcome: ``SERVED``, ``HANDLER_ERROR`` or a peer-fault kind. A
        BaseException (SystemExit, KeyboardInterrupt) closes and propagates.
        ``close=False`` leaves a normally served request open for ``close_and_finish``
        (the pool closes once its worker counts as idle).
        """
        watch = None if self._core is None else self._core.connection_watch
        if watch is not None:
            return self._serve_watched(watch, close)
        try:
            self.server.finish_request(self.request, self.client_address)
        except Exception as exc:
            return self.report(exc)
        except BaseException:
            self.close()
            raise
        self.ticket.outcome = SERVED
        if close:
            self.close()
        return SERVED

    def _serve_watched(self, watch: ConnectionWatch, close: bool) -> str:
        """``serve``, with the connection watched for slow clients while the handler runs."""
        watched = watch.add(self.request, partial(shutdown_both, self.request))
        try:
            self.server.finish_request(self.request, self.client_address)
        except Exception as exc:
            breach = watch.remove(watched)
            if breach is None or breach is exc:
                return self.report(exc)
            return self._report_breach(breach, exc)
        except BaseException:
            watch.remove(watched)
            self.close()
            raise
        breach = watch.remove(watched)
        if breach is not None:  # the handler took the cut for an end of stream
            return self._report_breach(breach, None)
        if close:
            self.close()
        return SERVED

    def _report_breach(self, breach: SlowPeerError, cause: BaseException | None) -> str:
        try:
            raise breach from cause  # handle_error reads the exception being handled
        except SlowPeerError as exc:
            return self.report(exc)

    def close_and_finish(self) -> None:
        try:
            self.close()
        finally:
            self.finish()

    def run_with(self, body: Any) -> None:
        """Run ``body(request, client_address)`` (a stdlib hook that serves and closes,
        such as ``process_request_thread``) in place of ``serve``, then finish.

        While ``body`` runs the job is left with the core under its request, so that
        ``serve_and_close`` (the default ``process_request_thread``) serves it as this
        job: its outcome and bytes land on this ticket.
        """
        core = self._core
        if core is not None:
            core.lend(self)
        try:
            body(self.request, self.client_address)
        finally:
            if core is not None:
                core.end_loan(self)
            self.finish()

    def report(self, exc: BaseException) -> str:
        """Count ``exc`` (peer fault or handler error), give it to ``handle_error``, close.

        Returns the outcome counted. Call it inside the ``except`` block:
        ``handle_error`` reads the exception being handled, as in the stdlib.
        """
        outcome = peer_fault_kind(exc) or HANDLER_ERROR
        self.ticket.outcome = outcome
        if self._core is not None:
            self._core.count_outcome(outcome)
        try:
            call_handle_error(self.server, self.request, self.client_address, log)
        finally:
            self.close()
        return outcome

    def close(self) -> None:
        """``shutdown_request`` once, whatever path led here."""
        if self._is_closed:
            return
        self._is_closed = True
        self.server.shutdown_request(self.request)

    def finish(self) -> None:
        """The work is over: free the slot (idempotent)."""
        self.ticket.finish()

    def run_in_child(self) -> int:
        """In a forked child: serve and close; the exit status carries the outcome, which
        the parent counts when it reaps the child (``outcome_of_exit``)."""
        return CHILD_EXIT_CODES.get(self.serve(), 1)


def serve_and_close(server: Any, request: Any, client_address: Any) -> str:
    """The handler, error reporting and closing for a request the caller holds no job
    for (the stdlib hook ``process_request_thread``, whose caller finishes the job)."""
    core: OutcomeCounter | None = getattr(server, "_core", None)
    if core is None:
        return RequestJob(server, request, client_address, _NOTHING_TO_FINISH, None).serve()
    return core.borrow(server, request, client_address).serve()


#: Outcomes of ``serve``; peer-fault kinds come from ``handler_errors``.
SERVED = "served"
HANDLER_ERROR = "handler_error"
#: ``verify_request`` said no: closed unserved.
UNVERIFIED = "unverified"

#: A forked child's exit status per outcome (1 is also what an unexpected crash gives).
CHILD_EXIT_CODES = {
    SERVED: 0,
    HANDLER_ERROR: 1,
    "reset": 10,
    "timeout": 11,
    "line_too_long": 12,
    "idle_timeout": 13,
    "deadline": 14,
    "too_slow": 15,
    "write_timeout": 16,
}
_OUTCOME_OF_EXIT = {code: outcome for outcome, code in CHILD_EXIT_CODES.items()}


def outcome_of_exit(exit_code: int) -> str | None:
    """What a forked child's exit status says; None for a signal (a drain's abort)."""
    if exit_code < 0:
        return None
    return _OUTCOME_OF_EXIT.get(exit_code, HANDLER_ERROR)


#: ``serve_and_close`` finishes nothing: the caller's job does.
_NOTHING_TO_FINISH = untracked_ticket()
