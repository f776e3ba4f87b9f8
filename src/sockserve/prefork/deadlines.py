"""How long a worker may stay silent or take to stop, and the SIGKILL once it overstays.

Each worker runs against one clock at a time. While it serves: ``worker_timeout`` since
the master last heard from it, so a wedged loop is noticed. Once it is stopping (asked to,
or on its own): a deadline set at that moment, ``graceful_timeout`` plus the worker's own
``STOP_GRACE_SECONDS`` for a graceful stop, ``FAST_STOP_SECONDS`` after SIGQUIT. A worker
past its deadline is killed once, with the reason kept so the reaper can tell a kill from
a crash.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable

from .process import WorkerProcess, send_signal
from .worker import STOP_GRACE_SECONDS

log = logging.getLogger("sockserve.prefork")

#: A fast stop sends SIGQUIT, then SIGKILL to workers still alive after this long.
FAST_STOP_SECONDS = 1.0


class WorkerDeadlines:
    """The master's timing rules for its workers: when each is due, and what happens then.

    ``worker_timeout`` None: heartbeats are not checked.
    """

    def __init__(self, *, worker_timeout: float | None, graceful_timeout: float) -> None:
        self.worker_timeout = worker_timeout
        self.graceful_timeout = graceful_timeout

    @property
    def stop_allowance(self) -> float:
        """How long a gracefully stopping worker gets before it is killed."""
        return self.graceful_timeout + STOP_GRACE_SECONDS

    def ask_to_stop(self, worker: WorkerProcess, reason: str, signum: int, now: float) -> None:
        """Send ``signum`` (SIGTERM: graceful, SIGQUIT: fast) and start the stop clock."""
        worker.stop_reason = reason
        worker.stop_deadline = now + (
            FAST_STOP_SECONDS if signum == signal.SIGQUIT else self.stop_allowance
        )
        log.info("stopping worker %d (%s)", worker.pid, reason)
        send_signal(worker.pid, signum)

    def stop_all(
        self, workers: Iterable[WorkerProcess], reason: str, signum: int, now: float
    ) -> None:
        """Ask every worker not yet killed to stop. A fast stop (SIGQUIT) asks those already
        stopping too; a graceful one leaves them their own, earlier deadline."""
        for worker in list(workers):
            if worker.kill_reason:
                continue
            if signum == signal.SIGQUIT or not worker.stop_reason:
                self.ask_to_stop(worker, reason, signum, now)

    def due_at(self, worker: WorkerProcess) -> float | None:
        """When ``worker`` is next due: its stop deadline, else its heartbeat's; None: never."""
        if worker.stop_deadline is not None:
            return worker.stop_deadline
        if self.worker_timeout is not None:
            return worker.last_seen + self.worker_timeout
        return None

    def kill_overdue(self, workers: Iterable[WorkerProcess], now: float) -> None:
        """SIGKILL every worker past its stop deadline or silent for longer than allowed."""
        timeout = self.worker_timeout
        for worker in workers:
            if worker.kill_reason:
                continue
            if worker.stop_deadline is not None:
                if now >= worker.stop_deadline:
                    _kill(worker, f"was still running {worker.stop_reason!r}; killed it")
            elif timeout is not None and now - worker.last_seen > timeout:
                _kill(
                    worker,
                    f"was silent for {now - worker.last_seen:.1f} s "
                    f"(worker_timeout={timeout}); killed it",
                )


def _kill(worker: WorkerProcess, reason: str) -> None:
    worker.kill_reason = reason
    log.error("worker %d %s", worker.pid, reason)
    send_signal(worker.pid, signal.SIGKILL)
