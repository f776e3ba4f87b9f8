"""How the master hears from its workers: each one's status pipe, read and acted on.

``worker.py`` defines the bytes and ``process.read_status`` parses them; here they become
the master's view of the worker. Any message proves it alive (it is a heartbeat). READY
marks it serving. A worker that stops accepting on its own (its ``max_requests`` spent, or
a stop of its own) is treated as if the master had asked it to stop: it gets the same
allowance, and its replacement starts at once instead of after it exits. A boot failure's
reason is kept for the error the master raises. EOF means the worker exited or is about
to; where Linux gives a pidfd, that turns readable at the exit itself, so it is watched
too, and either wakes the loop to reap the worker.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..metrics import DrainReport, ServerStats
from .process import WorkerProcess, read_status
from .worker import BEAT, BOOT_FAILED, DRAINED, READY, RECYCLING, STATS, STOPPING

log = logging.getLogger("sockserve.prefork")

T = TypeVar("T")


class StatusChannels:
    """The master's ends of its workers' status pipes (and pidfds), in the loop's selector.

    Each is registered with its ``WorkerProcess`` as the selector key's data.
    ``on_first_ready()`` runs once, when the first worker ever is ready; ``stop_allowance``
    is how long a worker stopping on its own gets before it is killed.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        *,
        stop_allowance: float,
        on_first_ready: Callable[[], None],
        on_stats: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_stats = on_stats
        self._selector = selector
        self._stop_allowance = stop_allowance
        self._on_first_ready = on_first_ready
        self._has_been_ready = False

    def watch(self, worker: WorkerProcess) -> None:
        self._selector.register(worker.channel, selectors.EVENT_READ, worker)
        if worker.pidfd is not None:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, worker)

    def read(self, worker: WorkerProcess) -> bool:
        """Act on what the worker sent; False once nothing more is there."""
        messages = read_status(worker.channel, worker.pending)
        if messages is None:  # EOF: it exited (or is exiting), the reaper takes over
            self._close_channel(worker)
            if worker.pidfd is None:
                worker.eof_at = time.monotonic()
            return False
        if messages:
            worker.last_seen = time.monotonic()
        for kind, text in messages:
            if kind == READY:
                self._on_ready(worker)
            elif kind == BOOT_FAILED:
                worker.boot_error = text
            elif kind == STATS:
                worker.stats = _parse(text, ServerStats.from_dict, worker.pid) or worker.stats
                self._on_stats()
            elif kind == DRAINED:
                worker.drained = _parse(text, _drain_report, worker.pid)
            elif kind in (RECYCLING, STOPPING):
                if worker.stop_reason:
                    continue  # the master asked it to stop: nothing new
                # It stopped accepting on its own: its replacement starts at once.
                worker.stop_deadline = worker.last_seen + self._stop_allowance
                if kind == RECYCLING:
                    worker.stop_reason = "recycled after max_requests"
                    log.info("worker %d served its max_requests; recycling it", worker.pid)
                else:
                    worker.stop_reason = "stopped on its own"
                    log.info("worker %d is stopping on its own; replacing it", worker.pid)
            elif kind != BEAT:
                log.warning("worker %d sent an unknown status byte %r", worker.pid, kind)
        return bool(messages)

    def release(self, worker: WorkerProcess) -> None:
        """The worker has been reaped: hear its last words, then close its descriptors."""
        while worker.is_channel_open and self.read(worker):
            pass  # a boot failure's reason, a late "ready"
        self._close_channel(worker)
        if worker.pidfd is not None:
            self._selector.unregister(worker.pidfd)
            os.close(worker.pidfd)

    def _on_ready(self, worker: WorkerProcess) -> None:
        worker.is_ready = True
        log.info("worker %d ready", worker.pid)
        if not self._has_been_ready:
            self._has_been_ready = True
            self._on_first_ready()

    def _close_channel(self, worker: WorkerProcess) -> None:
        if worker.is_channel_open:
            worker.is_channel_open = False
            self._selector.unregister(worker.channel)
            os.close(worker.channel)


def _drain_report(data: dict[str, Any]) -> DrainReport:
    return DrainReport(finished=int(data["finished"]), aborted=int(data["aborted"]), seconds=0.0)


def _parse(text: str, build: Callable[[dict[str, Any]], T], pid: int) -> T | None:
    """A worker's JSON line as ``build`` makes it; None (logged) if it is garbled."""
    try:
        data = json.loads(text)
        return build(data)
    except (ValueError, TypeError, KeyError):
        log.warning("worker %d sent an unreadable status line: %.80r", pid, text)
        return None
