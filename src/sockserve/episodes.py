"""Logging a stream of similar events once per episode, with counts, instead of once each.

A flood of refused connections, client resets or oversized datagrams is one incident for
an operator, not ten thousand. ``EpisodeLog.note`` logs the first event of an episode in
full; later ones within ``quiet_seconds`` are only counted, and the next event after the
window (or the serve loop's periodic ``flush``) logs one summary line with the counts by
kind. So a steady flood costs one line per ``quiet_seconds``, a single event one line.

A leaf: plain ``logging``, a lock and a clock; no sockets, no sockserve imports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

#: How long an episode stays quiet after its first line: long enough that a flood is a
#: handful of lines per minute, short enough that an operator watching sees it move.
EPISODE_QUIET_SECONDS = 10.0


class EpisodeLog:
    """One kind of routine event (refusals, peer faults, dropped datagrams) for one logger."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.INFO,
        quiet_seconds: float = EPISODE_QUIET_SECONDS,
    ) -> None:
        self._logger = logger
        self._what = what
        self._level = level
        self._quiet_seconds = quiet_seconds
        self._lock = threading.Lock()
        self._window_ends: float | None = None
        self._held: Counter[str] = Counter()

    def note(self, kind: str, detail: str) -> None:
        """Record one event; log it now if it opens an episode, else count it."""
        now = time.monotonic()
        with self._lock:
            held = self._take_due(now)
            is_first = self._window_ends is None
            if is_first:
                self._window_ends = now + self._quiet_seconds
            else:
                self._held[kind] += 1
        if held:
            self._log_summary(held)
        if is_first and self._logger.isEnabledFor(self._level):
            self._logger.log(
                self._level,
                "%s: %s: %s (more within %.0f s are counted, then summarised)",
                self._what,
                kind,
                detail,
                self._quiet_seconds,
            )

    def flush(self) -> None:
        """Log the summary of an episode whose window has passed; cheap when there is none."""
        if self._window_ends is None:  # unlocked peek: the common case costs one compare
            return
        with self._lock:
            held = self._take_due(time.monotonic())
        if held:
            self._log_summary(held)

    def _take_due(self, now: float) -> Counter[str]:
        """Under the lock: end the episode if its window passed; what it held back."""
        if self._window_ends is None or now < self._window_ends:
            return Counter()
        held, self._held = self._held, Counter()
        self._window_ends = None
        return held

    def _log_summary(self, held: Counter[str]) -> None:
        by_kind = ", ".join(f"{kind}: {count}" for kind, count in sorted(held.items()))
        self._logger.log(
            self._level,
            "%s: %d more in the last %.0f s (%s)",
            self._what,
            sum(held.values()),
            self._quiet_seconds,
            by_kind,
        )
