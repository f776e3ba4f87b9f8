"""``--access-log``, ``--log-format json`` and ``--metrics`` through the real command.

The command writes its access log to a FIFO the test reads (each line is an event to
wait on), serves ``/metrics`` on a port it picks (``--metrics 0``) and names it on its
ready line. SIGUSR1 to the command (a pre-fork master passes it on to its workers)
reopens the log: the test moves the FIFO away, puts a new one at the path, and the
lines of later connections arrive on the new one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from test_access_log import LogPipe
from test_cli import STOP_TIMEOUT, running

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is missing: pip install -e '.[test]'"
)

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

METRICS_URL = re.compile(r"metrics on (?P<url>http://\S+/);")
PAYLOAD = b"through the command\n"
#: How long the pre-fork master's sum may take to catch up (workers report every 0.1 s).
STATS_CATCH_UP_SECONDS = 10.0
#: Between looks at the master's sum (it has no event the test could wait on).
STATS_RECHECK_SECONDS = 0.05


def echo_once(address: tuple[str, int]) -> str:
    """One connection through the echo demo; the client's address as the log shows it."""
    with socket.create_connection(address, timeout=STOP_TIMEOUT) as client:
        client.sendall(PAYLOAD)
        reply = b""
        while len(reply) < len(PAYLOAD):
            reply += client.recv(65536)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""
        host, port = client.getsockname()[:2]
    assert reply == PAYLOAD
    return f"{host}:{port}"


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "metrics", timeout=STOP_TIMEOUT) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


@pytest.mark.parametrize("mode", ["threading", "async", "prefork"])
def test_access_log_metrics_and_reopen_through_the_command(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    first = LogPipe(path)
    args = ["demo", "echo", "--port", "0", "--mode", mode, "--access-log", str(path)]
    args += ["--log-format", "json", "--metrics", "0"]
    if mode == "prefork":
        args += ["--workers", "2"]
    second: LogPipe | None = None
    try:
        with running(args, tmp_path) as command:
            line = command.read_line()
            metrics = METRICS_URL.search(line)
            assert metrics, line
            address = re.search(r"on 127\.0\.0\.1:(\d+) ", line)
            assert address, line
            server = ("127.0.0.1", int(address[1]))

            clients = [echo_once(server) for _ in range(3)]
            entries = [json.loads(text) for text in first.lines(3)]
            assert sorted(entry["client"] for entry in entries) == sorted(clients)
            assert {(e["outcome"], e["bytes_in"], e["bytes_out"]) for e in entries} == {
                ("served", len(PAYLOAD), len(PAYLOAD))
            }

            found = scrape(metrics["url"])
            deadline = time.monotonic() + STATS_CATCH_UP_SECONDS
            while found["sockserve_finished_total"] < 3 and time.monotonic() < deadline:
                threading.Event().wait(STATS_RECHECK_SECONDS)
                found = scrape(metrics["url"])
            assert found["sockserve_accepted_total"] == 3
            assert found["sockserve_finished_total"] == 3
            assert found["sockserve_bytes_in_total"] == 3 * len(PAYLOAD)
            assert found["sockserve_bytes_out_total"] == 3 * len(PAYLOAD)
            assert found["sockserve_connection_duration_seconds_count"] == 3

            # logrotate: move the file away, signal, and lines go to a new file at the path.
            os.rename(path, tmp_path / "access.log.1")
            second = LogPipe(path)
            command.process.send_signal(signal.SIGUSR1)
            # The signal reaches a pre-fork worker a moment later: a connection or two may
            # still be logged to the old file. Each attempt waits on the new pipe.
            after_signal: list[str] = []
            for _ in range(20):
                after_signal.append(echo_once(server))
                try:
                    (text,) = second.lines(1, timeout=0.5)
                except AssertionError:
                    continue  # logged to the old file still
                assert json.loads(text)["client"] in after_signal
                break
            else:
                pytest.fail("no line reached the reopened log after SIGUSR1")
            assert command.stop(signal.SIGTERM) == 0, command.stderr()
            assert "Traceback" not in command.stderr()
    finally:
        first.close()
        if second is not None:
            second.close()
