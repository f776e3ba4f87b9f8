"""The last minutes of ``stats()``, one sample a second, for the live stats page.

Design: a sampler thread reads ``stats()`` once a second into a bounded deque, so a page
opened now shows the past ten minutes at once, not only what happens while it is open,
and a page polling every second costs one JSON rendering, not a walk of the server.
Samples are cumulative counters (and the ``active`` gauge); the page turns them into
rates by differences, so a missed poll loses nothing. A pre-fork master's ``stats()`` is
at most ``STATS_INTERVAL_SECONDS`` old, well inside one sample.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ..metrics import ServerStats

#: How far back the page can look: ten minutes of one-second samples (~600 x 8 numbers,
#: about 30 KB of JSON per poll).
HISTORY_SECONDS = 600
SAMPLE_INTERVAL_SECONDS = 1.0

#: What one sample holds, in order (the page reads them by these names).
SAMPLE_FIELDS = (
    "time",
    "accepted",
    "finished",
    "active",
    "bytes_in",
    "bytes_out",
    "errors",
    "rejected",
)


def sample_of(stats: ServerStats, moment: float) -> tuple[float, ...]:
    """One row of ``SAMPLE_FIELDS``: ``errors`` are handler errors plus peer faults."""
    return (
        round(moment, 3),
        stats.accepted,
        stats.finished,
        stats.active,
        stats.bytes_in,
        stats.bytes_out,
        stats.handler_errors + stats.peer_faults_total,
        stats.rejected_total,
    )


class StatsHistory:
    """Samples ``stats()`` every ``interval`` seconds on a daemon thread until closed."""

    def __init__(
        self,
        stats: Callable[[], ServerStats],
        *,
        seconds: int = HISTORY_SECONDS,
        interval: float = SAMPLE_INTERVAL_SECONDS,
    ) -> None:
        self._stats = stats
        self._interval = interval
        self._samples: deque[tuple[float, ...]] = deque(maxlen=max(2, int(seconds / interval)))
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockserve-stats-history")
        self._thread.daemon = True

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def sample(self) -> None:
        row = sample_of(self._stats(), time.time())
        with self._lock:
            self._samples.append(row)

    def rows(self) -> list[tuple[float, ...]]:
        with self._lock:
            return list(self._samples)

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            try:
                self.sample()
            except Exception:  # a stats() that failed once must not end the history
                continue

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()
