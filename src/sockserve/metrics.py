"""What ``server.stats()`` returns: one snapshot, the same shape in every mode.

A leaf module: plain data, no sockets, no sockserve imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerStats:
    """Counters since the server was created.

    ``accepted``: connections (or datagrams) taken from the kernel.
    ``active``: being handled now (accepted, not yet finished). ``peak_active``: highest
    ``active`` seen. ``rejected``: refused connections by reason (``"max_connections"``,
    ``"pool_full"``, a stage's reason). ``handler_errors``: requests whose handler raised.
    ``accept_errors``: failed accept() calls that were not routine (EMFILE and the like).
    ``queue_depth``: accepted requests waiting for a worker (thread pool only).
    ``workers_alive``: worker threads or processes alive now (0 for inline servers).
    """

    accepted: int = 0
    active: int = 0
    peak_active: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    accept_errors: int = 0
    queue_depth: int = 0
    workers_alive: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class DrainReport:
    """What ``server.drain(timeout)`` did: requests that finished in time, and the rest."""

    finished: int
    aborted: int
    seconds: float
