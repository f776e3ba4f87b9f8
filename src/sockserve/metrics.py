"""What ``server.stats()`` returns: one snapshot, the same shape in every mode.

A leaf module: plain data, no sockets, no sockserve imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Upper bounds (seconds) of the connection-duration histogram's buckets. Connections
#: live longer than HTTP requests (Prometheus' default buckets stop at 10 s): from a
#: millisecond exchange on loopback to an hour-long session, about 2-5x apart.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip


@dataclass(frozen=True)
class ServerStats:
    """Counters since the server was created.

    ``accepted``: connections (or datagrams) taken from the kernel.
    ``active``: being handled now (admitted, not yet finished). ``peak_active``: highest
    ``active`` seen. ``finished``: admitted requests whose work has ended, however.
    ``rejected``: connections or datagrams refused or dropped, by reason (one mapping):
    ``"max_connections"``, ``"pool_full"``, ``"datagram_too_large"``, a check's or a
    prelude's reason (``"denied"``, ``"proxy_bad_header"``, ``"tls_handshake"``...).
    ``handler_errors``: requests whose handler raised (the server's or the handler's
    fault). ``peer_faults``: requests ended by the client's doing, by kind (one mapping,
    apart from handler errors): ``"reset"`` (the peer reset or vanished), ``"timeout"``
    (no data within the handler's timeout), ``"line_too_long"``.
    ``accept_errors``: failed accept() calls that were not routine (EMFILE and the like).
    ``kernel_drops``: datagrams the kernel dropped on the server's socket before the
    server read them (its receive queue was full), as Linux counts them (``SO_MEMINFO``);
    never part of ``accepted`` or ``rejected``, which count what the server read. 0 for
    stream servers and where the platform does not say.
    ``queue_depth``: accepted requests waiting for a worker (thread pool only).
    ``workers_alive``: worker threads or processes alive now (0 for inline servers).

    Traffic, only once recorded (``server.record_traffic()``, or an access log; zero
    otherwise): ``bytes_in`` / ``bytes_out``: TCP payload bytes received from clients and
    acknowledged by them (``tcp_info.py``; Unix sockets and forked children add nothing).
    ``duration_counts``: finished requests per duration bucket, the bucket ``i`` holding
    those that took at most ``DURATION_BUCKETS[i]`` seconds and more than the bound
    before it (the last one: longer than every bound); ``duration_sum``: their total
    seconds.

    Combining snapshots (a pre-fork master sums its workers'): every counter and mapping
    is summed, ``active``, ``queue_depth`` and ``workers_alive`` too (they are "now"
    figures of disjoint processes), the duration buckets bucket by bucket; ``peak_active`` is
    the largest of the parts, a lower
    bound of the true combined peak, which no process saw (see ``combine``).
    ``kernel_drops`` is summed too, so each part counts a socket of its own (pre-fork
    workers sharing the master's socket report 0; the master reads that socket).
    """

    accepted: int = 0
    active: int = 0
    peak_active: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    peer_faults: dict[str, int] = field(default_factory=dict)
    finished: int = 0
    accept_errors: int = 0
    kernel_drops: int = 0
    queue_depth: int = 0
    workers_alive: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration_counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    duration_sum: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def peer_faults_total(self) -> int:
        return sum(self.peer_faults.values())

    def to_dict(self) -> dict[str, object]:
        """Plain data (for JSON and the pre-fork status pipe)."""
        return {name: getattr(self, name) for name in STATS_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ServerStats:
        """The inverse of ``to_dict``; unknown keys are ignored (a newer worker's extras)."""
        known = {name: data[name] for name in STATS_FIELDS if name in data}
        counts = known.get("duration_counts")
        if isinstance(counts, list) and len(counts) == len(DURATION_BUCKETS) + 1:
            known["duration_counts"] = tuple(counts)
        else:  # an older worker's snapshot, or other bounds: leave the histogram empty
            known.pop("duration_counts", None)
        return cls(**known)  # type: ignore[arg-type]


#: The fields of ``ServerStats``, in order.
STATS_FIELDS = (
    "accepted",
    "active",
    "peak_active",
    "rejected",
    "handler_errors",
    "peer_faults",
    "finished",
    "accept_errors",
    "kernel_drops",
    "queue_depth",
    "workers_alive",
    "bytes_in",
    "bytes_out",
    "duration_counts",
    "duration_sum",
)


def _sum_mappings(parts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def combine(parts: list[ServerStats]) -> ServerStats:
    """One snapshot for several servers or processes (see ``ServerStats`` for the rules)."""
    return ServerStats(
        accepted=sum(p.accepted for p in parts),
        active=sum(p.active for p in parts),
        peak_active=max((p.peak_active for p in parts), default=0),
        rejected=_sum_mappings([p.rejected for p in parts]),
        handler_errors=sum(p.handler_errors for p in parts),
        peer_faults=_sum_mappings([p.peer_faults for p in parts]),
        finished=sum(p.finished for p in parts),
        accept_errors=sum(p.accept_errors for p in parts),
        kernel_drops=sum(p.kernel_drops for p in parts),
        queue_depth=sum(p.queue_depth for p in parts),
        workers_alive=sum(p.workers_alive for p in parts),
        bytes_in=sum(p.bytes_in for p in parts),
        bytes_out=sum(p.bytes_out for p in parts),
        duration_counts=_sum_buckets([p.duration_counts for p in parts]),
        duration_sum=sum(p.duration_sum for p in parts),
    )


def _sum_buckets(parts: list[tuple[int, ...]]) -> tuple[int, ...]:
    total = [0] * (len(DURATION_BUCKETS) + 1)
    for part in parts:
        for index, count in enumerate(part):
            total[index] += count
    return tuple(total)


@dataclass(frozen=True)
class DrainReport:
    """What ``server.drain(timeout)`` did, the same in every mode.

    ``finished``: requests that were in flight when the drain began, or admitted while
    it stopped listening, and ended on their own before the deadline. ``aborted``: those
    still running at the deadline, which the drain cut short (their sockets shut down,
    their tasks cancelled, their child processes killed). ``seconds``: how long it took.
    A pre-fork master's report is the sum of its workers'.
    """

    finished: int
    aborted: int
    seconds: float
