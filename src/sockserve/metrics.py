"""What ``server.stats()`` returns: one snapshot, the same shape in every mode.

A leaf module: plain data, no sockets, no sockserve imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    ``queue_depth``: accepted requests waiting for a worker (thread pool only).
    ``workers_alive``: worker threads or processes alive now (0 for inline servers).

    Combining snapshots (a pre-fork master sums its workers'): every counter and mapping
    is summed, ``active``, ``queue_depth`` and ``workers_alive`` too (they are "now"
    figures of disjoint processes); ``peak_active`` is the largest of the parts, a lower
    bound of the true combined peak, which no process saw (see ``combine``).
    """

    accepted: int = 0
    active: int = 0
    peak_active: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    peer_faults: dict[str, int] = field(default_factory=dict)
    finished: int = 0
    accept_errors: int = 0
    queue_depth: int = 0
    workers_alive: int = 0

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
    "queue_depth",
    "workers_alive",
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
        queue_depth=sum(p.queue_depth for p in parts),
        workers_alive=sum(p.workers_alive for p in parts),
    )


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
