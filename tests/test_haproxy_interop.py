"""A real HAProxy in front of sockserve: the handler sees HAProxy's client, not HAProxy.

HAProxy (Debian package ``haproxy``; installed here when missing and possible, else the
test skips with the reason) runs in the foreground (``haproxy -db``) in TCP mode, with
one frontend per way of sending the header: ``send-proxy`` (v1), ``send-proxy-v2``,
``send-proxy-v2`` with ``proxy-v2-options crc32c,unique-id``, and
``send-proxy-v2-ssl``. A health-check backend (``check-send-proxy``) sends LOCAL
headers. The test's clients connect from 127.0.0.2 and 127.0.0.3 (all of 127/8 is
loopback), so the address HAProxy reports differs from its own 127.0.0.1, and send
several lines on one connection: each reply must name the client.

Race-free ports: the test binds and listens on every frontend socket itself (port 0)
and hands the descriptors to HAProxy (``bind fd@N``, ``pass_fds``), so no port is
chosen and then bound later. Readiness without sleeping: clients that connect before
HAProxy accepts wait in the kernel's backlog of a socket that is already listening; the
config is checked first (``haproxy -c``), so a bad config fails at once with HAProxy's
message instead of a timeout.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread

#: Seconds any client socket, HAProxy start or stop may take.
TIMEOUT = 10.0
SOURCES = ("127.0.0.2", "127.0.0.3")
LINES_PER_CONNECTION = 3
#: Frontend name → the ``server`` line options of its backend.
BACKENDS = {
    "v1": "send-proxy",
    "v2": "send-proxy-v2",
    "v2tlv": "send-proxy-v2 proxy-v2-options crc32c,unique-id",
    "v2ssl": "send-proxy-v2-ssl",
}

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def find_haproxy() -> str | None:
    # Debian puts it in /usr/sbin, which a non-root PATH may lack.
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def haproxy_or_skip() -> str:
    """The haproxy binary; installed with apt-get when missing and possible."""
    found = find_haproxy()
    if found:
        return found
    reason = "haproxy is not installed"
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "haproxy"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                reason = f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}"
                break
        found = find_haproxy()
        if found:
            return found
    else:
        reason += " and cannot be installed here (needs apt-get and root)"
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def describe(handler: Any, line: bytes) -> bytes:
    """One reply line: the client, and what the header said."""
    proxy = handler.proxy
    host, port = handler.client_address[:2]
    details = [f"{host}:{port}", f"v{proxy.version}", proxy.command]
    if proxy.unique_id is not None:
        details.append("uid=" + proxy.unique_id.decode())
    if proxy.crc32c_checked:
        details.append("crc")
    if proxy.ssl is not None:
        details.append(f"ssl={int(proxy.ssl.is_tls)}")
    return (" ".join(details) + " " + line.decode()).encode()


#: What handlers saw on connections that carried a LOCAL header (health checks).
LOCAL_SEEN: queue.Queue[Any] = queue.Queue()


class Report(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        if self.proxy.is_local:
            LOCAL_SEEN.put(self.client_address)
            return
        for line in self.rfile:
            self.wfile.write(describe(self, line))


class AsyncReport(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        if self.proxy.is_local:
            LOCAL_SEEN.put(self.client_address)
            return
        while line := await self.reader.readline():
            self.writer.write(describe(self, line))
            await self.writer.drain()


def config(frontends: dict[str, socket.socket], backend_port: int) -> str:
    sections = [
        "global\n    log stderr format short local0 warning\n",
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n",
    ]
    for name, listener in frontends.items():
        sections.append(
            f"frontend {name}\n    bind fd@{listener.fileno()}\n"
            "    unique-id-format sockserve-%ci-%cp\n"
            f"    default_backend {name}\n"
        )
        sections.append(
            f"backend {name}\n    server s1 127.0.0.1:{backend_port} {BACKENDS[name]}\n"
        )
    sections.append(
        f"backend health\n    server s1 127.0.0.1:{backend_port} "
        "check send-proxy-v2 check-send-proxy inter 1s\n"
    )
    return "\n".join(sections)


@contextlib.contextmanager
def running_haproxy(binary: str, tmp_path: Path, backend_port: int) -> Iterator[dict[str, int]]:
    """HAProxy in the foreground on pre-bound frontends; yields name → frontend port."""
    with contextlib.ExitStack() as stack:
        frontends = {}
        for name in BACKENDS:
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            frontends[name] = listener
        path = tmp_path / "haproxy.cfg"
        path.write_text(config(frontends, backend_port), encoding="ascii")
        fds = tuple(listener.fileno() for listener in frontends.values())
        checked = subprocess.run(
            [binary, "-c", "-q", "-f", str(path)],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        proxy = subprocess.Popen(
            [binary, "-db", "-f", str(path)],
            pass_fds=fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield {name: listener.getsockname()[1] for name, listener in frontends.items()}
        finally:
            proxy.terminate()
            try:
                _, errors = proxy.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proxy.kill()
                _, errors = proxy.communicate()
            print(errors)


SERVERS = [
    pytest.param(sockserve.ThreadingTCPServer, Report, {}, id="threading"),
    pytest.param(sockserve.ThreadPoolTCPServer, Report, {"max_workers": 4}, id="pool"),
    pytest.param(sockserve.AsyncTCPServer, AsyncReport, {"event_loop": "asyncio"}, id="asyncio"),
    pytest.param(sockserve.AsyncTCPServer, AsyncReport, {"event_loop": "uvloop"}, id="uvloop"),
]


@pytest.mark.parametrize(("server_class", "handler", "kwargs"), SERVERS)
def test_the_handler_sees_haproxys_client_on_every_line(
    server_class: Any, handler: Any, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    binary = haproxy_or_skip()
    while not LOCAL_SEEN.empty():
        LOCAL_SEEN.get_nowait()
    server = server_class(
        ("127.0.0.1", 0),
        handler,
        proxy_protocol="any",
        trusted_proxies=["127.0.0.1/32"],  # HAProxy connects from here; nobody else may
        **kwargs,
    )
    backend_port = server.server_address[1]
    with (
        serve_in_thread(server, stop_timeout=TIMEOUT),
        running_haproxy(binary, tmp_path, backend_port) as ports,
    ):
        for name, port in ports.items():
            expected_about = {
                "v1": "v1 PROXY",
                "v2": "v2 PROXY",
                "v2tlv": "v2 PROXY uid=sockserve-{host}-{port} crc",
                "v2ssl": "v2 PROXY ssl=0",
            }[name]
            for source in SOURCES:
                with socket.create_connection(
                    ("127.0.0.1", port), TIMEOUT, source_address=(source, 0)
                ) as client:
                    host, client_port = client.getsockname()
                    replies = client.makefile("rb")
                    about = expected_about.format(host=host, port=client_port)
                    for number in range(LINES_PER_CONNECTION):
                        line = f"{name} line {number}\n"
                        client.sendall(line.encode())
                        reply = replies.readline().decode()
                        assert reply == f"{host}:{client_port} {about} {line}", name
                    replies.close()
        # HAProxy's health checks: LOCAL headers, and the handler sees the peer itself.
        local_peer = LOCAL_SEEN.get(timeout=TIMEOUT)
        assert local_peer[0] == "127.0.0.1"
    server.server_close()
    # Health checks close without a request: peer faults at most, never a refusal.
    assert server.stats().rejected == {}
