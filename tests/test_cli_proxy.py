"""``--proxy-protocol`` and ``--trusted-proxy`` on the ``sockserve`` command.

The command, run as a user runs it (``test_cli.py``'s helpers), serves a handler that
replies with the ``client_address`` it was given: behind ``--proxy-protocol`` that is the
client the header names. Options that cannot work together are one line on stderr and
exit status 2, before anything is bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sockserve.proxy_protocol import encode_v1, encode_v2
from test_cli import (
    assert_one_line_error,
    echo,
    run_to_completion,
    running,
    stop_cleanly,
)

REPORT_MODULE = """
import sockserve

class Report(sockserve.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        host, port = self.client_address[:2]
        self.wfile.write(f"{host}:{port} v{self.proxy.version} ".encode() + line)


class AsyncReport(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        line = await self.reader.readline()
        host, port = self.client_address[:2]
        self.writer.write(f"{host}:{port} v{self.proxy.version} ".encode() + line)
"""
CLIENT = ("192.0.2.1", 56324)
SERVICE = ("198.51.100.7", 443)


@pytest.mark.parametrize(
    ("handler", "mode"),
    [("Report", "threading"), ("Report", "pool"), ("AsyncReport", "async")],
)
def test_the_handler_sees_the_client_the_header_names(
    tmp_path: Path, handler: str, mode: str
) -> None:
    module = tmp_path / "report.py"
    module.write_text(REPORT_MODULE, encoding="utf-8")
    args = ["serve", f"{module}:{handler}", "--port", "0", "--mode", mode]
    args += ["--proxy-protocol", "any", "--trusted-proxy", "10.0.0.0/8"]
    args += ["--trusted-proxy", "127.0.0.1"]
    with running(args, tmp_path) as command:
        _, address = command.read_ready_line()
        assert echo(address, encode_v1(CLIENT, SERVICE) + b"one\n") == b"192.0.2.1:56324 v1 one\n"
        assert echo(address, encode_v2(CLIENT, SERVICE) + b"two\n") == b"192.0.2.1:56324 v2 two\n"
        assert echo(address, b"no header\n") == b""  # refused: not a PROXY header
        stop_cleanly(command)


BAD_SETTINGS = {
    "without-trusted-proxy": (["--proxy-protocol", "v2"], ["--proxy-protocol", "--trusted-proxy"]),
    "trusted-proxy-alone": (["--trusted-proxy", "10.0.0.0/8"], ["--trusted-proxy"]),
    "bad-version": (["--proxy-protocol", "v3"], ["--proxy-protocol", "v3"]),
    "bad-network": (
        ["--proxy-protocol", "v1", "--trusted-proxy", "10.1.0.0/8"],
        ["--trusted-proxy", "10.1.0.0/8", "10.0.0.0/8"],
    ),
    "not-a-network": (
        ["--proxy-protocol", "v1", "--trusted-proxy", "proxy.example"],
        ["--trusted-proxy", "proxy.example"],
    ),
    "on-udp": (
        ["--proxy-protocol", "v1", "--trusted-proxy", "127.0.0.1", "--bind", "udp://127.0.0.1:0"],
        ["--proxy-protocol", "udp"],
    ),
}


@pytest.mark.parametrize(("args", "named"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_proxy_settings_that_cannot_work(tmp_path: Path, args: list[str], named: list[str]) -> None:
    port = [] if "--bind" in args else ["--port", "0"]
    result = run_to_completion(["demo", "echo", *port, *args], tmp_path)
    assert_one_line_error(result, *named)
