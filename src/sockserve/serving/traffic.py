"""What connections carried and how long they took: the counters and the access log.

Off by default, and then free: the serving core holds ``None`` instead of a recorder,
and the one place that would measure (``RequestJob.close``) tests that. Turned on
(``server.record_traffic()`` or ``server.set_access_log(log)``), each request costs
one ``TCP_INFO`` read before its socket is closed (``tcp_info.py``), a histogram bucket
and, with a log, one line (measured: docs/observability.md).

Where it is fed, so that it holds in every mode: the job measures bytes into its ticket
as it closes the request and records the outcome there; the ticket's end reaches the
core on whichever thread finishes it (a worker thread, the loop, the parent reaping a
forked child) and the core hands it here. A refusal comes through ``refused``. The
counters are read by ``stats()``; a pre-fork worker sends them to its master with the
rest of its cumulative snapshot, so the master's sum loses nothing to a dropped message.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

from ..access_log import ABORTED, REFUSED, AccessLog
from ..admission.limits import Ticket
from ..metrics import DURATION_BUCKETS
from ..tcp_info import read_traffic
from .job import SERVED


class TrafficRecorder:
    """Bytes and durations of finished requests; the access log's lines, if there is one."""

    def __init__(self, access_log: AccessLog | None = None) -> None:
        self.access_log = access_log
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self._counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0

    def finished(self, ticket: Ticket) -> None:
        """A request ended: count it and write its line."""
        duration = time.monotonic() - ticket.started
        bytes_in, bytes_out = ticket.bytes_in, ticket.bytes_out
        if bytes_in is None and isinstance(ticket.request, tuple):
            bytes_in, bytes_out = measure(ticket.request)  # a datagram no one closed here
        bucket = bisect.bisect_left(DURATION_BUCKETS, duration)
        with self._lock:
            self._counts[bucket] += 1
            self.duration_sum += duration
            if bytes_in is not None:
                self.bytes_in += bytes_in
            if bytes_out is not None:
                self.bytes_out += bytes_out
        if self.access_log is not None:
            outcome = ABORTED if ticket.was_aborted else ticket.outcome or SERVED
            self.access_log.add_record(
                (time.time(), ticket.client_address, outcome, None, duration, bytes_in, bytes_out)
            )

    def refused(self, request: Any, client_address: Any, reason: str) -> None:
        """A connection (or datagram) refused before it became a request; still open."""
        bytes_in, bytes_out = measure(request)
        with self._lock:
            if bytes_in is not None:
                self.bytes_in += bytes_in
            if bytes_out is not None:
                self.bytes_out += bytes_out
        if self.access_log is not None:
            self.access_log.connection_ended(
                client_address, REFUSED, None, bytes_in, bytes_out, reason=reason
            )

    def snapshot(self) -> tuple[int, int, tuple[int, ...], float]:
        """``(bytes_in, bytes_out, duration_counts, duration_sum)``, consistent."""
        with self._lock:
            return self.bytes_in, self.bytes_out, tuple(self._counts), self.duration_sum


def measure(request: Any) -> tuple[int | None, int | None]:
    """Bytes in and out of ``request``: TCP_INFO for a socket; a datagram's size."""
    if isinstance(request, tuple):  # a datagram request: (data, socket); replies unknown
        data = request[0]
        return (len(data) if isinstance(data, (bytes, bytearray)) else None), None
    return read_traffic(request)
