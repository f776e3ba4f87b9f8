"""Connection accounting and limits: how many requests are in flight, and what to do at the cap.

Every accepted request gets a ``Ticket`` from the ``ConnectionLimiter`` and hands it back
when its work is done — on the loop thread for inline servers, on the worker thread for
threads and pools, when the child is reaped for fork-per-request. The limiter therefore
knows, in every mode, how many connections are being handled, which ones (so ``drain`` can
abort the stragglers), and whether there is room for one more.

At the cap, the overload policy decides:

* ``"wait"`` (default): stop accepting. New clients wait in the kernel's backlog and are
  served as slots free up; nothing is lost unless the backlog itself overflows.
* ``"reject"``: accept, give the request to ``handle_overload`` (which may write a
  protocol-specific "busy" reply), close it, and count it.

One warning marks the start of an overload episode and one info line its end, so a long
overload costs two log lines.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sockserve.limits")

OVERLOAD_POLICIES = ("wait", "reject")


class Ticket:
    """One request in flight. ``finish()`` is idempotent; ``abort()`` cuts it short."""

    __slots__ = (
        "_limiter",
        "_finished",
        "request",
        "client_address",
        "started",
        "aborter",
        "exit_fd",
        "releases",
        "outcome",
        "was_aborted",
        "bytes_in",
        "bytes_out",
    )

    def __init__(self, limiter: ConnectionLimiter | None, request: Any, client_address: Any):
        self._limiter = limiter
        self._finished = False
        self.request = request
        self.client_address = client_address
        self.started = time.monotonic()
        #: How to abort this request; by default, shut its socket down both ways so a
        #: handler blocked in recv() or sendall() returns. A strategy may replace it (a
        #: forked child is signalled instead).
        self.aborter: Callable[[], None] = self._shutdown_socket
        #: A descriptor the serve loop watches for this request's end (a forked child's).
        self.exit_fd: int | None = None
        #: ``(check, client_address)`` for each admission check holding something for
        #: this request (a per-client count), released with that address when it finishes.
        self.releases: tuple[tuple[Any, Any], ...] = ()
        #: How the request ended (``serving/job.py`` outcomes), once it has; for the
        #: access log, read when the ticket finishes.
        self.outcome: str | None = None
        self.was_aborted = False
        #: Bytes the connection carried, measured as it closed; None: not measured.
        self.bytes_in: int | None = None
        self.bytes_out: int | None = None

    def finish(self) -> None:
        if self._finished or self._limiter is None:
            return
        self._finished = True
        self._limiter.release(self)

    def abort(self) -> None:
        self.was_aborted = True
        try:
            self.aborter()
        except OSError:
            pass  # already closed

    def _shutdown_socket(self) -> None:
        # Only a connection's own socket: a datagram request shares the server's socket.
        if isinstance(self.request, socket.socket):
            self.request.shutdown(socket.SHUT_RDWR)


#: A ticket for work that did not come through the serve loop (a direct process_request
#: call): it counts nothing.
def untracked_ticket(request: Any = None, client_address: Any = None) -> Ticket:
    return Ticket(None, request, client_address)


class ConnectionLimiter:
    """Counts requests in flight against a capacity and remembers which they are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: dict[int, Ticket] = {}
        self.peak = 0
        self.admitted = 0
        #: Tickets released so far: admitted requests whose work has ended.
        self.released = 0
        self.rejected: Counter[str] = Counter()
        self._overloaded_since: float | None = None
        #: Called (outside the lock) after a release, with the ticket; the serving core
        #: frees what admission checks hold, counts, and wakes a loop waiting for room.
        self.on_release: Callable[[Ticket], None] = lambda ticket: None

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def is_overloaded(self) -> bool:
        """Whether an overload episode is open (``note_capacity`` logged its start)."""
        return self._overloaded_since is not None

    def has_room(self, capacity: int | None) -> bool:
        return capacity is None or len(self._active) < capacity

    def admit(self, request: Any, client_address: Any) -> Ticket:
        ticket = Ticket(self, request, client_address)
        with self._lock:
            self._active[id(ticket)] = ticket
            self.admitted += 1
            if len(self._active) > self.peak:
                self.peak = len(self._active)
        return ticket

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._active.pop(id(ticket), None)
            self.released += 1
            if not self._active:
                self._idle.notify_all()
        self.on_release(ticket)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def note_capacity(self, is_full: bool, capacity: int | None, what: str, policy: str) -> None:
        """Log the start and the end of an overload episode, once each."""
        if is_full and self._overloaded_since is None:
            self._overloaded_since = time.monotonic()
            consequence = (
                "new clients wait in the backlog" if policy == "wait" else "refusing new clients"
            )
            log.warning("%s requests in flight: %s reached; %s", capacity, what, consequence)
        elif not is_full and self._overloaded_since is not None:
            lasted = time.monotonic() - self._overloaded_since
            self._overloaded_since = None
            log.info("below %s again after %.1f s", what, lasted)

    def in_flight(self) -> list[Ticket]:
        with self._lock:
            return list(self._active.values())

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is in flight or the monotonic ``deadline`` passes."""
        with self._lock:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True
