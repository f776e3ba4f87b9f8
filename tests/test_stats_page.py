"""The live stats page in a real headless browser (Debian's chromium, via selenium).

It must load with no console errors, draw its charts (uPlot's canvas holds pixels of
the series colour) and move its numbers when traffic flows. Every wait is selenium's
explicit wait on a condition of the page, bounded by ``PAGE_TIMEOUT``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from headless_chromium import ensure_chromium, start_browser
from sockserve.exporter import MetricsServer
from sockserve.testing import serve_in_thread

pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[test]'")
pytest.importorskip(
    "prometheus_client", reason="prometheus_client is missing: pip install -e '.[test]'"
)

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: Bounds each wait for the page (it polls once a second; history samples once a second).
PAGE_TIMEOUT = 20.0
CLIENT_TIMEOUT = 10.0
#: The "new /s" series' stroke on the connections chart (index.html): rgb of #1f77b4.
NEW_CONNECTIONS_RGB = (31, 119, 180)
CONNECTIONS = 5

#: Counts the pixels of one colour on the connections chart's canvas.
COUNT_SERIES_PIXELS = """
const canvas = document.querySelector('#connections canvas');
if (!canvas) return -1;
const [r, g, b] = arguments[0];
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  const near = (k, v) => Math.abs(data[i + k] - v) < 8;
  if (near(0, r) && near(1, g) && near(2, b)) n++;
}
return n;
"""


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = ensure_chromium()
    if reason is not None:
        print(f"skipping the stats page test: {reason}")
        pytest.skip(reason)
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: Any, element_id: str) -> str:
    text: str = driver.find_element("id", element_id).text
    return text


def test_the_page_loads_draws_and_follows_the_traffic(browser: Any) -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.record_traffic()
    with (
        serve_in_thread(server),
        MetricsServer(("127.0.0.1", 0), server.stats) as exporter,
    ):
        exporter.start()
        host, port = exporter.server_address[:2]
        browser.get(f"http://{host}:{port}/")
        wait = WebDriverWait(browser, PAGE_TIMEOUT)
        wait.until(lambda d: text_of(d, "status").startswith("live"))
        assert text_of(browser, "n-accepted") == "0"

        for _ in range(CONNECTIONS):
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as c:
                c.sendall(b"hello page\n")
                assert c.recv(100) == b"hello page\n"
        wait.until(lambda d: text_of(d, "n-accepted") == str(CONNECTIONS))
        wait.until(lambda d: text_of(d, "n-bytes_in") != "0 B")
        # The rate of new connections was non-zero in some second: its line is drawn.
        wait.until(lambda d: d.execute_script(COUNT_SERIES_PIXELS, NEW_CONNECTIONS_RGB) > 20)
        assert browser.find_elements("css selector", ".uplot")  # three charts, built
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
