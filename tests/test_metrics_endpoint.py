"""``/metrics`` scraped over HTTP and read with prometheus_client's own parser.

The numbers are checked against the traffic the test sent: connections served, one
refused by an admission check, one whose handler raised, the bytes each way, the
duration histogram's count. A pre-fork master's endpoint sums its workers. The test
knows the counters are settled when the access log's lines have arrived (each line is
written after its connection was counted: ``serving/traffic.py``), so it waits on a
pipe, not a clock.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.exporter import MetricsServer
from test_access_log import PAYLOAD, LogPipe, RefuseFlagged, echo_until_eof_handler, talk
from test_contract import CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is missing: pip install -e '.[test]'"
)

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

#: Connections served in each test (besides the refused and the failing one).
SERVED = 6


def scrape(exporter: MetricsServer, path: str = "/metrics") -> bytes:
    host, port = exporter.server_address[:2]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=CLIENT_TIMEOUT) as reply:
        assert reply.status == 200
        body: bytes = reply.read()
        return body


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by ``(name, sorted labels)``, parsed by prometheus_client."""
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def run_traffic(harness: Harness, server: Any, pipe: LogPipe, flag: Path) -> None:
    """SERVED echoes, one refusal, one handler error; returns once all are logged."""
    for _ in range(SERVED):
        talk(harness, server)
    flag.touch()
    with harness.connect(server) as refused:
        assert refused.sock.recv(100) == b""
    flag.unlink()
    with harness.connect(server) as failing:
        failing.send(b"boom\n")
        assert failing.sock.recv(100) == b""
    pipe.lines(SERVED + 2)


def check_counts(text: str, *, workers: int) -> None:
    found = samples_of(text)
    assert found["sockserve_accepted_total", ()] == SERVED + 2
    assert found["sockserve_finished_total", ()] == SERVED + 1
    assert found["sockserve_rejected_total", (("reason", "flagged"),)] == 1
    assert found["sockserve_handler_errors_total", ()] == 1
    assert found["sockserve_bytes_in_total", ()] == SERVED * len(PAYLOAD) + len(b"boom\n")
    assert found["sockserve_bytes_out_total", ()] == SERVED * len(PAYLOAD)
    assert found["sockserve_kernel_drops_total", ()] == 0  # a stream server's: always 0
    assert found["sockserve_active", ()] == 0
    assert found["sockserve_workers_alive", ()] == workers
    assert found["sockserve_connection_duration_seconds_count", ()] == SERVED + 1
    assert found["sockserve_connection_duration_seconds_bucket", (("le", "+Inf"),)] == SERVED + 1
    assert 0 < found["sockserve_connection_duration_seconds_sum", ()] < SERVED * CLIENT_TIMEOUT


@pytest.mark.parametrize("mode", ["thread_pool", "async", "prefork"])
def test_metrics_count_the_traffic_sent(
    mode: str, short_dir: Path, tmp_path: Path, log_pipe: LogPipe
) -> None:
    kind = Kind("tcp", mode)
    harness = Harness(kind, short_dir, tmp_path)
    access_log = sockserve.AccessLog(str(log_pipe.path))
    server = harness.server(echo_until_eof_handler(kind))
    server.handle_error = lambda request, client_address: None  # no traceback in the output
    flag = tmp_path / "flag"
    server.add_admission_check(RefuseFlagged(flag))
    server.set_access_log(access_log)
    try:
        with (
            sockserve.testing.serve_in_thread(server, stop_timeout=STOP_TIMEOUT),
            MetricsServer(("127.0.0.1", 0), server.stats) as exporter,
        ):
            exporter.start()
            run_traffic(harness, server, log_pipe, flag)
            if kind.is_prefork:  # workers report every 0.1 s at most: wait for the sum
                assert server._supervisor.wait_for_stats(
                    lambda s: s.finished == SERVED + 1 and s.rejected_total == 1,
                    CLIENT_TIMEOUT,
                )
            text = scrape(exporter).decode()
            workers = 2 if kind.is_prefork else server.stats().workers_alive
            check_counts(text, workers=workers)
            history = json.loads(scrape(exporter, "/stats.json"))
    finally:
        access_log.close()
        harness.close()
    assert history["now"]["accepted"] == SERVED + 2
    assert history["fields"][:2] == ["time", "accepted"]
    assert history["samples"], "the history has at least its first sample"


@pytest.fixture
def log_pipe(tmp_path: Path) -> Any:
    pipe = LogPipe(tmp_path / "access.log")
    yield pipe
    pipe.close()


def test_the_page_and_its_vendored_chart_library_are_served(tmp_path: Path) -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler)
    with server, MetricsServer(("127.0.0.1", 0), server.stats) as exporter:
        exporter.start()
        page = scrape(exporter, "/").decode()
        assert "/static/uPlot.iife.min.js" in page
        assert scrape(exporter, "/static/uPlot.iife.min.js").startswith(b"/*! https://github.com")
        assert b"MIT License" in scrape(exporter, "/static/uPlot.LICENSE")
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(exporter, "/nothing")
        assert missing.value.code == 404
        missing.value.close()
