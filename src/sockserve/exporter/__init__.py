"""An HTTP endpoint for a server's ``stats()``: Prometheus metrics and a live page.

``MetricsServer(address, stats)`` serves, on a thread of its own:

- ``/metrics``: the Prometheus text format (``collector.py``; needs the extra
  ``sockserve[metrics]``);
- ``/stats.json``: the last minutes of samples (``history.py``) and ``stats()`` now;
- ``/``: a page charting connections, throughput and errors from ``/stats.json``,
  updated every second; it works offline (uPlot, vendored with its licence, is served
  from ``/static/``).

Design: it is itself a sockserve server, a ``ThreadingMixIn`` + ``TCPServer`` running
``http.server``'s handler, which is what a stdlib user would write. It runs in the
process whose ``stats()`` it reports: a pre-fork master's, which sums its workers.
It has no authentication: bind it to loopback (the default of ``--metrics PORT``) or a
private network, as one does for a Prometheus target.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any

from ..metrics import ServerStats
from ..mixins import ThreadingMixIn
from ..servers import TCPServer
from .collector import Exposition, require_prometheus_client
from .history import SAMPLE_FIELDS, StatsHistory

log = logging.getLogger("sockserve.exporter")

#: The page's files, by URL path: the vendored chart library and the page itself.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/static/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
    "/static/uPlot.LICENSE": ("uPlot.LICENSE", "text/plain; charset=utf-8"),
}

#: Seconds a scrape or page client may stay silent before its connection is closed.
CLIENT_TIMEOUT_SECONDS = 10.0


class _HTTPServer(ThreadingMixIn, TCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    exporter: MetricsServer


class _Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS
    server_version = "sockserve-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's hook name)
        path = self.path.split("?", 1)[0]
        exporter: MetricsServer = getattr(self.server, "exporter")  # noqa: B009 (typed here)
        if path == "/metrics":
            self._reply(exporter.exposition.render(), exporter.exposition.content_type)
        elif path == "/stats.json":
            self._reply(exporter.stats_json(), "application/json")
        elif path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            self._reply(_page_file(name), content_type)
        else:
            self.send_error(404, "not here: try /, /metrics or /stats.json")

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _page_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("page", name).read_bytes()


class MetricsServer:
    """``/metrics``, ``/stats.json`` and the page for ``stats``, served on ``address``.

    Binds at construction (``server_address`` then holds the real port); ``start()``
    serves on a daemon thread; ``close()`` stops and closes. Raises
    ``ConfigurationError`` if ``prometheus_client`` is missing.
    """

    def __init__(self, address: tuple[str, int], stats: Callable[[], ServerStats]) -> None:
        require_prometheus_client()
        self._stats = stats
        self.exposition = Exposition(stats)
        self.history = StatsHistory(stats)
        self._http = _HTTPServer(address, _Handler)
        self._http.exporter = self
        self.server_address: tuple[str, int] = self._http.server_address
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.history.start()
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="sockserve-metrics", daemon=True
        )
        self._thread.start()

    def stats_json(self) -> bytes:
        body = {
            "fields": SAMPLE_FIELDS,
            "samples": self.history.rows(),
            "now": self._stats().to_dict(),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()
        self.history.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
