"""Telling the service manager how serving goes: sd_notify(3) from the command.

When ``NOTIFY_SOCKET`` is set (a ``Type=notify`` unit), the command sends ``READY=1``
once every server is serving, ``STOPPING=1`` when the drain begins, ``STATUS=`` with the
live counts every ``STATUS_INTERVAL_SECONDS`` (``systemctl status`` shows the line),
and, when ``WatchdogSec=`` is set (``WATCHDOG_USEC``), ``WATCHDOG=1`` every half of it.

Who calls ``tick``, and so what a watchdog ping proves: the thread that supervises. In
the thread modes that is the command's main thread, which waits for signals and for
the serve loops' ends, so a ping says the process is alive and no serve loop has died
(one that ends stops the command). In pre-fork mode it is the master's own loop
(``PreforkMixIn.add_master_task``), so a ping says the master still turns: it reaps,
replaces and stops workers. Neither proves a handler is not stuck; the drain's deadline
and ``--max-connections`` bound that.

The variables are read once and removed from the environment, so a program the service
starts cannot speak for it (systemd's ``NotifyAccess=main`` would drop its messages
anyway).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ..systemd import WATCHDOG_PING_FRACTION, Notifier, watchdog_interval

#: How often ``STATUS=`` is refreshed: often enough that ``systemctl status`` is
#: current, rare enough to be free (one datagram); systemd keeps only the latest.
STATUS_INTERVAL_SECONDS = 5.0
WATCHDOG_VARIABLES = ("WATCHDOG_USEC", "WATCHDOG_PID")


class ServiceManagerLink:
    """Notifications for one run of the command, sent from ``tick``.

    Methods for the caller: ``tick(is_ready=, is_stopping=)`` at least every
    ``tick_interval`` seconds (and at once when readiness or stopping changes);
    ``close()``. Sending never blocks and never raises (see ``systemd.Notifier``).
    """

    def __init__(
        self, notifier: Notifier, watchdog_seconds: float | None, servers: Sequence[Any] = ()
    ) -> None:
        self.notifier = notifier
        self.watchdog_seconds = watchdog_seconds
        #: Whose ``stats()`` the status line sums; set once they are open.
        self.servers = list(servers)
        self._said_ready = False
        self._said_stopping = False
        self._status_due = 0.0
        self._watchdog_due = 0.0

    @classmethod
    def from_environment(cls) -> ServiceManagerLink | None:
        """A link when ``NOTIFY_SOCKET`` names a manager that listens; else None.

        Raises ``SystemdEnvironmentError`` for a ``WATCHDOG_USEC`` that is not a number.
        """
        try:
            watchdog_seconds = watchdog_interval()
        finally:
            for variable in WATCHDOG_VARIABLES:
                os.environ.pop(variable, None)
        notifier = Notifier.from_environment(unset_environment=True)
        return None if notifier is None else cls(notifier, watchdog_seconds)

    @property
    def tick_interval(self) -> float:
        """The longest ``tick`` may wait: the next status, or half the watchdog."""
        if self.watchdog_seconds is None:
            return STATUS_INTERVAL_SECONDS
        return min(STATUS_INTERVAL_SECONDS, self.watchdog_seconds * WATCHDOG_PING_FRACTION)

    def tick(self, *, is_ready: bool, is_stopping: bool) -> None:
        """Send what is due: readiness and stopping once each, the status, the ping."""
        now = time.monotonic()
        if is_stopping and not self._said_stopping:
            self._said_stopping = True
            self.notifier.send(STOPPING=1, STATUS=self.status_line("draining"))
            self._status_due = now + STATUS_INTERVAL_SECONDS
        elif is_ready and not self._said_ready:
            self._said_ready = True
            self.notifier.send(READY=1, STATUS=self.status_line("serving"))
            self._status_due = now + STATUS_INTERVAL_SECONDS
        elif self._said_ready and now >= self._status_due:
            self.notifier.status(self.status_line("draining" if is_stopping else "serving"))
            self._status_due = now + STATUS_INTERVAL_SECONDS
        if self.watchdog_seconds is not None and now >= self._watchdog_due:
            self.notifier.watchdog()
            self._watchdog_due = now + self.watchdog_seconds * WATCHDOG_PING_FRACTION

    def status_line(self, state: str) -> str:
        """``serving: 3 active, 120 accepted, 2 rejected`` over every server."""
        active = accepted = rejected = 0
        for server in self.servers:
            stats = server.stats()
            active += stats.active
            accepted += stats.accepted
            rejected += stats.rejected_total
        return f"{state}: {active} active, {accepted} accepted, {rejected} rejected"

    def close(self) -> None:
        self.notifier.close()
