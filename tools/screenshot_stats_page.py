"""Make docs/stats-page.png: the live stats page of a server under a minute of traffic.

Usage: ``python3 tools/screenshot_stats_page.py [SECONDS]`` (default 60). Needs chromium
and chromium-driver (installed by apt-get when missing and root), selenium and
prometheus_client (``pip install -e '.[test]'``).

It serves an echo service on a thread pool, with an admission check that refuses one
client in twenty and a handler that fails one request in fifty, and drives it from a
few client threads whose rate swells and falls, so every chart has something to show.
"""

from __future__ import annotations

import itertools
import math
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import sockserve  # noqa: E402
from headless_chromium import ensure_chromium, start_browser  # noqa: E402
from sockserve.admission import Refused  # noqa: E402
from sockserve.exporter import MetricsServer  # noqa: E402
from sockserve.testing import serve_in_thread  # noqa: E402

OUTPUT = ROOT / "docs" / "stats-page.png"
CLIENT_THREADS = 4
CLIENT_TIMEOUT = 5.0


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            if line.startswith(b"fail"):
                raise ValueError("a failing request, for the errors chart")
            self.wfile.write(line)


class RefuseSome:
    """Refuses every twentieth client."""

    judges = "client"

    def __init__(self) -> None:
        self._numbers = itertools.count()

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        if next(self._numbers) % 20 == 19:
            raise Refused("denied", "one in twenty")
        return request, client_address


def drive(address: Any, started: float, stop: threading.Event, seed: int) -> None:
    numbers = itertools.count(seed)
    while not stop.is_set():
        elapsed = time.monotonic() - started
        per_second = 20 + 18 * math.sin(elapsed / 9 + seed)  # swells and falls
        number = next(numbers)
        line = b"fail\n" if number % 50 == 0 else b"x" * (200 + 40 * (number % 30)) + b"\n"
        try:
            with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as client:
                client.sendall(line * 3)
                client.shutdown(socket.SHUT_WR)
                while client.recv(65536):
                    pass
        except OSError:
            pass  # refused or failed on purpose
        stop.wait(1 / per_second)


def main(seconds: float) -> None:
    reason = ensure_chromium()
    if reason is not None:
        raise SystemExit(f"cannot take the screenshot: {reason}")
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=8)
    server.handle_error = lambda request, client_address: None
    server.add_admission_check(RefuseSome())
    server.record_traffic()
    stop = threading.Event()
    with serve_in_thread(server), MetricsServer(("127.0.0.1", 0), server.stats) as exporter:
        exporter.start()
        started = time.monotonic()
        clients = [
            threading.Thread(target=drive, args=(server.server_address, started, stop, n))
            for n in range(CLIENT_THREADS)
        ]
        for client in clients:
            client.start()
        browser = start_browser(1100, 1180)
        try:
            host, port = exporter.server_address[:2]
            browser.get(f"http://{host}:{port}/")
            stop.wait(seconds)
            browser.save_screenshot(str(OUTPUT))
        finally:
            browser.quit()
            stop.set()
            for client in clients:
                client.join()
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
