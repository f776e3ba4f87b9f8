"""``--access-log`` and ``--metrics``: what the command adds to the servers it built.

Both are opened before privileges are dropped (a log under ``/var/log``, a metrics port
below 1024), like the binds. The access log is given to every server
(``server.set_access_log``) before serving, so pre-fork workers take it along when
they fork and write their own lines to the shared ``O_APPEND`` descriptor; its format is
``--log-format``'s. SIGUSR1 reopens it (``serving.py``; a pre-fork master passes the
signal on to its workers). The metrics endpoint (``sockserve.exporter``) runs on a
thread of this process: for pre-fork, the master, whose ``stats()`` sums its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..access_log import AccessLog
from ..metrics import ServerStats, combine
from .binds import Bind
from .config import Settings


class Observability:
    """The access log and the metrics endpoint the settings ask for (either may be off)."""

    def __init__(self, settings: Settings, servers: Sequence[Any]) -> None:
        self.access_log: AccessLog | None = None
        self.exporter: Any = None
        path = settings["access-log"]
        metrics: Bind | None = settings["metrics"]
        try:
            if path is not None:
                self.access_log = AccessLog(path, log_format=settings["log-format"])
                for server in servers:
                    server.set_access_log(self.access_log)
            if metrics is not None:
                from ..exporter import MetricsServer  # only with --metrics: an optional extra

                for server in servers:
                    server.record_traffic()
                self.exporter = MetricsServer(metrics.address, stats_of(servers))
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        if self.exporter is not None:
            self.exporter.start()

    def describe(self) -> str:
        """For the ready line: where the metrics are, or nothing."""
        if self.exporter is None:
            return ""
        host, port = self.exporter.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"; metrics on http://{host}:{port}/"

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None


def stats_of(servers: Sequence[Any]) -> Callable[[], ServerStats]:
    """One ``stats()`` for every bind of the command."""
    if len(servers) == 1:
        stats: Callable[[], ServerStats] = servers[0].stats
        return stats
    return lambda: combine([server.stats() for server in servers])
