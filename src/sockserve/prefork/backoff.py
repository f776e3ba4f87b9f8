"""The restart back-off: how long the master waits before replacing a worker that died.

A worker that crashes once is replaced at once. One that keeps crashing (a bad deploy, a
database that is down) must not turn the master into a fork loop that burns the CPU and
floods the log, so while failures keep coming the wait doubles up to a ceiling, and a
quiet spell resets it. The same wait follows a failed ``fork()``.
"""

from __future__ import annotations

#: Replacement delays after unexpected exits: the first comes at once, then the delay
#: doubles from the first to the last value while deaths keep coming less than
#: ``BACKOFF_RESET_SECONDS`` apart.
RESTART_BACKOFF_FIRST = 0.1
RESTART_BACKOFF_MAX = 5.0
BACKOFF_RESET_SECONDS = 10.0


class RestartBackoff:
    """When the master may next start a worker, given when workers failed so far."""

    def __init__(self) -> None:
        self.delay = 0.0  #: the wait chosen after the latest failure
        self.next_start_at = 0.0  #: monotonic time before which no worker is started
        self._last_failure = -BACKOFF_RESET_SECONDS

    def record_failure(self, now: float) -> None:
        """A worker died unexpectedly (or could not be forked) at ``now``: push starts back."""
        if now - self._last_failure > BACKOFF_RESET_SECONDS:
            self.delay = 0.0
        else:
            self.delay = min(max(self.delay * 2, RESTART_BACKOFF_FIRST), RESTART_BACKOFF_MAX)
        self._last_failure = now
        self.next_start_at = now + self.delay
