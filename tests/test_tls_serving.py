"""TLS served by sockserve: every stream mode, mutual TLS, reloading, stalls, refusals,
http.server under curl and openssl, and the command line.

Certificates come from ``trustme``, made per test. Clients are ordinary blocking ``ssl``
clients with a timeout on every socket (or ``curl`` / ``openssl s_client``, installed by
``.ci/run`` where missing). The sync modes do the handshake as the last prelude on the
loop that accepted; the async mode lets the event loop's TLS do it: the same outcomes
are asserted for both, async kinds on asyncio and on uvloop.
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

import sockserve
from sockserve.admission import WANT_READ, PreludeDone, Refused
from sockserve.errors import ConfigurationError
from sockserve.testing import serve_in_thread
from sockserve.tls import ContextHolder, server_context
from test_cli import Command, command_env, run_to_completion
from test_connection_setup import loop_kwargs, with_loops
from test_contract import ALL_KINDS, STOP_TIMEOUT, Harness, Kind

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

#: Seconds any socket operation, handshake or subprocess may take in a passing test.
TIMEOUT = 10.0
HOSTNAME = "example.test"
STREAM_KINDS = [kind for kind in ALL_KINDS if kind.is_stream]


def kind_named(name: str) -> Kind:
    return next(kind for kind in ALL_KINDS if kind.name == name)


# -- certificates and clients ----------------------------------------------------------


@dataclass
class PKI:
    """A CA, and PEM files of a server certificate for ``example.test`` and 127.0.0.1."""

    directory: Path
    ca: trustme.CA

    def __post_init__(self) -> None:
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = self.write_server_files("server")

    def write_server_files(self, name: str) -> tuple[Path, Path]:
        leaf = self.ca.issue_cert(HOSTNAME, "127.0.0.1")
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        for blob, path in ((leaf.cert_chain_pems[0], cert_file), (leaf.private_key_pem, key_file)):
            blob.write_to_path(str(path))
        return cert_file, key_file

    def server_context(self, **options: Any) -> ssl.SSLContext:
        return server_context(self.cert_file, self.key_file, **options)

    def fresh_server_context(self, name: str) -> ssl.SSLContext:
        return server_context(*self.write_server_files(name))

    def client_context(self, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client_ca is not None:
            client_ca.issue_cert("client@example.test").configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path, trustme.CA())


def tls_connect(
    server: Any, context: ssl.SSLContext, harness: Harness | None = None
) -> ssl.SSLSocket:
    """A TLS client of ``server`` (TCP or Unix), its handshake done."""
    if harness is not None:
        raw = harness.connect(server).sock
    else:
        raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
    raw.settimeout(TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=HOSTNAME)
    except BaseException:
        raw.close()
        raise


def exchange(conn: ssl.SSLSocket, line: bytes) -> bytes:
    conn.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def server_certificate(conn: ssl.SSLSocket) -> bytes:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def wait_for_stats(server: Any, predicate: Callable[[Any], bool]) -> Any:
    """The server's stats once ``predicate`` holds (counts land after the client sees the
    connection closed; a pre-fork master hears from its workers every 0.1 s)."""
    supervisor = getattr(server, "_supervisor", None)
    if supervisor is not None:
        assert supervisor.wait_for_stats(predicate, TIMEOUT), server.stats()
        return server.stats()
    deadline = time.monotonic() + TIMEOUT
    while not predicate(stats := server.stats()):
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)  # polling a counter, bounded: no event announces it
    return stats


def describe_tls(handler: Any, line: bytes) -> bytes:
    """The reply: what ``self.tls`` says, then the line."""
    tls = handler.tls
    return f"{tls.version} {tls.server_name} {tls.alpn} ".encode() + line


# -- echo in every mode -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_KINDS))
def test_echo_over_tls_in_every_stream_mode(
    harness: Harness, kind: Kind, loop: str | None, pki: PKI
) -> None:
    context = pki.server_context(alpn=("echo/1",))
    server = harness.server(harness.handler(describe_tls), ssl_context=context, **loop_kwargs(loop))
    client_context = pki.client_context()
    client_context.set_alpn_protocols(["echo/1"])
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for i in range(3):
            with tls_connect(server, client_context, harness) as conn:
                line = f"hello {i}\n".encode()
                reply = exchange(conn, line)
                assert reply == f"{conn.version()} {HOSTNAME} echo/1 ".encode() + line
                assert conn.recv(1) == b""  # the server closed, with close_notify
    assert server.stats().rejected == {}


@pytest.mark.parametrize(
    "kind",
    [
        kind_named(n)
        for n in ("TCPServer", "ThreadingTCPServer", "AsyncTCPServer", "UnixStreamServer")
    ],
    ids=lambda kind: kind.name,
)
def test_handle_request_serves_one_tls_request(harness: Harness, kind: Kind, pki: PKI) -> None:
    with harness.server(harness.handler(describe_tls), ssl_context=pki.server_context()) as server:
        result: list[bytes] = []

        def one_client() -> None:
            with tls_connect(server, pki.client_context(), harness) as conn:
                result.append(exchange(conn, b"one\n"))

        client = threading.Thread(target=one_client)
        client.start()
        server.handle_request()
        client.join(TIMEOUT)
        assert len(result) == 1
        assert result[0].endswith(b" one\n")


def test_a_plain_handler_sees_no_tls() -> None:
    with (
        serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), TLSProbe)) as server,
        socket.create_connection(server.server_address, timeout=TIMEOUT) as conn,
    ):
        conn.sendall(b"x\n")
        assert conn.makefile("rb").readline() == b"None\n"


class TLSProbe(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(f"{self.tls}\n".encode())


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [kind_named(n) for n in ("UDPServer", "AsyncUDPServer", "UnixDatagramServer")],
    ids=lambda kind: kind.name,
)
def test_a_datagram_server_with_ssl_context_is_a_configuration_error(
    harness: Harness, kind: Kind, pki: PKI
) -> None:
    with pytest.raises(ConfigurationError, match="datagram server"):
        harness.server(ssl_context=pki.server_context())


def test_ssl_context_must_be_a_context(pki: PKI) -> None:
    with pytest.raises(ConfigurationError, match="ssl.SSLContext"):
        sockserve.TCPServer(("127.0.0.1", 0), TLSProbe, ssl_context="server.pem")
    plain = sockserve.TCPServer(("127.0.0.1", 0), TLSProbe)
    with plain, pytest.raises(ConfigurationError, match="without TLS"):
        plain.reload_tls(pki.server_context())


def test_ssl_context_as_a_class_attribute(pki: PKI) -> None:
    class Server(sockserve.ThreadingTCPServer):
        ssl_context = pki.server_context()

    with (
        serve_in_thread(Server(("127.0.0.1", 0), TLSProbe)) as server,
        tls_connect(server, pki.client_context()) as conn,
    ):
        assert exchange(conn, b"x\n").startswith(b"TLSInfo(version='TLSv1.3'")


# -- preludes before the handshake --------------------------------------------------------


class Greeting:
    """A plain-text prelude (as a PROXY header is): ``HELLO <name>\\n`` before TLS."""

    name = "greeting"
    timeout = TIMEOUT

    def start(self, request: Any, client_address: Any) -> GreetingRun:
        return GreetingRun(request, client_address)


class GreetingRun:
    def __init__(self, sock: socket.socket, client_address: Any) -> None:
        self.sock, self.client_address, self.line = sock, client_address, b""

    def advance(self) -> str | PreludeDone:
        while not self.line.endswith(b"\n"):
            try:
                byte = self.sock.recv(1)  # never a byte of the ClientHello behind it
            except BlockingIOError:
                return WANT_READ
            if not byte:
                raise Refused("greeting_eof")
            self.line += byte
        greeting = self.line.decode().split()[1]
        return PreludeDone(self.sock, self.client_address, {"greeting": greeting})


class GreetedHandler(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        detail = sockserve.handlers.connection_detail(self.server, self.request, "greeting")
        self.wfile.write(f"{detail} {self.tls.version}\n".encode())


class AsyncGreetedHandler(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        await self.reader.readline()
        detail = sockserve.handlers.connection_detail(self.server, self.request, "greeting")
        self.writer.write(f"{detail} {self.tls.version}\n".encode())
        await self.writer.drain()


@pytest.mark.parametrize("name", ["ThreadingTCPServer", "AsyncTCPServer"])
def test_a_prelude_added_after_tls_still_runs_before_the_handshake(name: str, pki: PKI) -> None:
    server_class = getattr(sockserve, name)
    handler = AsyncGreetedHandler if name.startswith("Async") else GreetedHandler
    server = server_class(("127.0.0.1", 0), handler, ssl_context=pki.server_context())
    server.add_prelude(Greeting())  # after the constructor installed TLS
    with serve_in_thread(server):
        raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
        raw.sendall(b"HELLO alice\n")
        with pki.client_context().wrap_socket(raw, server_hostname=HOSTNAME) as conn:
            assert exchange(conn, b"x\n") == b"alice TLSv1.3\n"


# -- mutual TLS -------------------------------------------------------------------------


class PeerNameHandler(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        names = [value for _, value in self.tls.peer_certificate["subjectAltName"]]
        self.wfile.write(f"{' '.join(names)}\n".encode())


class AsyncPeerNameHandler(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        await self.reader.readline()
        names = [value for _, value in self.tls.peer_certificate["subjectAltName"]]
        self.writer.write(f"{' '.join(names)}\n".encode())
        await self.writer.drain()


def refused_exchange(conn: ssl.SSLSocket) -> None:
    """Talk on a connection the server refused: raise as the refusal arrives."""
    conn.sendall(b"who\n")
    if conn.recv(1) == b"":
        raise ConnectionResetError("closed without a reply")


def handler_for(name: str, sync: type, async_: type) -> type:
    return async_ if name.startswith("Async") else sync


def mutual_tls_params() -> list[Any]:
    return [
        pytest.param("ThreadingTCPServer", None, id="ThreadingTCPServer"),
        pytest.param("AsyncTCPServer", "asyncio", id="AsyncTCPServer-asyncio"),
        pytest.param("AsyncTCPServer", "uvloop", id="AsyncTCPServer-uvloop"),
    ]


@pytest.mark.parametrize(("name", "loop"), mutual_tls_params())
def test_mutual_tls_accepts_a_client_certificate_and_refuses_the_rest(
    name: str, loop: str | None, pki: PKI
) -> None:
    client_ca = trustme.CA()
    client_ca_file = pki.directory / "clients-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    context = pki.server_context(cafile=client_ca_file, require_client_cert=True)
    server_class = getattr(sockserve, name)
    handler = handler_for(name, PeerNameHandler, AsyncPeerNameHandler)
    server = server_class(("127.0.0.1", 0), handler, ssl_context=context, **loop_kwargs(loop))
    with serve_in_thread(server):
        with tls_connect(server, pki.client_context(client_ca)) as conn:
            assert exchange(conn, b"who\n") == b"client@example.test\n"
        for client_context in (pki.client_context(), pki.client_context(trustme.CA())):
            # TLS 1.3: the client's side of the handshake completes; the refusal (an
            # alert, then the close) arrives on its first read.
            with (
                tls_connect(server, client_context) as conn,
                pytest.raises((ssl.SSLError, ConnectionError)),
            ):
                refused_exchange(conn)
        stats = wait_for_stats(server, lambda s: sum(s.rejected.values()) >= 2)
    assert stats.rejected == {"tls_no_client_cert": 1, "tls_bad_client_cert": 1}


# -- reloading --------------------------------------------------------------------------


class ClientLoop:
    """Connects, handshakes and exchanges a line, again and again, on a thread; records
    the server certificate of each connection and every failure."""

    def __init__(self, server: Any, context: ssl.SSLContext) -> None:
        self.server, self.context = server, context
        self.certificates: list[bytes] = []
        self.failures: list[BaseException] = []
        self.progress = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with tls_connect(self.server, self.context) as conn:
                    assert exchange(conn, b"ping\n").endswith(b"ping\n")
                    certificate = server_certificate(conn)
            except BaseException as exc:  # noqa: BLE001 (recorded for the test to assert)
                certificate = b""
                self.failures.append(exc)
            with self.progress:
                self.certificates.append(certificate)
                self.progress.notify_all()

    def wait_for(self, predicate: Callable[[list[bytes]], bool]) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: predicate(self.certificates), TIMEOUT)

    def __enter__(self) -> ClientLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncLineEcho(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        while line := await self.reader.readline():
            self.writer.write(line)
            await self.writer.drain()


@pytest.mark.parametrize(
    ("name", "loop"),
    [
        pytest.param("ThreadPoolTCPServer", None, id="ThreadPoolTCPServer"),
        pytest.param("TCPServer", None, id="TCPServer"),
        pytest.param("AsyncTCPServer", "asyncio", id="AsyncTCPServer-asyncio"),
        pytest.param("AsyncTCPServer", "uvloop", id="AsyncTCPServer-uvloop"),
    ],
)
def test_reload_tls_under_traffic_drops_nothing(name: str, loop: str | None, pki: PKI) -> None:
    server_class = getattr(sockserve, name)
    handler = handler_for(name, LineEcho, AsyncLineEcho)
    server = server_class(
        ("127.0.0.1", 0), handler, ssl_context=pki.server_context(), **loop_kwargs(loop)
    )
    context = pki.client_context()
    with serve_in_thread(server):
        live = None
        if name != "TCPServer":  # the single-threaded server serves one at a time
            live = tls_connect(server, context)
            assert exchange(live, b"before\n") == b"before\n"
        with ClientLoop(server, context) as clients:
            clients.wait_for(lambda certs: len(certs) >= 5)
            old = clients.certificates[0]
            server.reload_tls(pki.fresh_server_context("renewed"))
            clients.wait_for(lambda certs: bool(certs[-1]) and certs[-1] != old)
            count = len(clients.certificates)
            clients.wait_for(lambda certs: len(certs) >= count + 5)
        if live is not None:
            with live:  # established before the reload: untouched by it
                assert exchange(live, b"after\n") == b"after\n"
                assert server_certificate(live) == old
    assert clients.failures == []
    first_new = next(i for i, cert in enumerate(clients.certificates) if cert != old)
    assert set(clients.certificates[first_new:]) == {clients.certificates[-1]}
    assert server.stats().rejected == {}


class OneLine(sockserve.StreamRequestHandler):
    """Echoes one line and closes: it never waits for the client to close, which a
    client in a pre-fork master's own process cannot promise (a worker forked while its
    socket was open holds a copy)."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_reload_tls_in_a_prefork_master_reaches_new_workers(pki: PKI) -> None:
    server = sockserve.PreforkTCPServer(
        ("127.0.0.1", 0), OneLine, ssl_context=pki.server_context(), workers=2
    )
    context = pki.client_context()
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with tls_connect(server, context) as conn:
            assert exchange(conn, b"ping\n") == b"ping\n"
            old = server_certificate(conn)
        server.reload_tls(pki.fresh_server_context("renewed"))  # then a rolling restart
        deadline = time.monotonic() + TIMEOUT
        while True:  # old workers serve until the new ones are ready, then stop
            with tls_connect(server, context) as conn:
                assert exchange(conn, b"ping\n") == b"ping\n"
                if server_certificate(conn) != old:
                    break
            assert time.monotonic() < deadline, "no worker serves the new certificate"


def test_reload_tls_from_files_keeps_the_old_context_when_the_files_are_bad(pki: PKI) -> None:
    holder = ContextHolder.from_files(pki.cert_file, pki.key_file)
    with serve_in_thread(
        sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho, ssl_context=holder)
    ) as server:
        with tls_connect(server, pki.client_context()) as conn:
            old = server_certificate(conn)
        pki.key_file.write_text("not a key\n")
        with pytest.raises(sockserve.TLSConfigurationError):
            server.reload_tls()
        with tls_connect(server, pki.client_context()) as conn:
            assert server_certificate(conn) == old
        pki.write_server_files("server")  # a good renewal over the same names
        server.reload_tls()
        with tls_connect(server, pki.client_context()) as conn:
            assert server_certificate(conn) != old


# -- stalled handshakes -----------------------------------------------------------------

STALLED_CLIENTS = 100


@pytest.mark.parametrize(
    ("name", "loop", "kwargs"),
    [
        pytest.param("ThreadPoolTCPServer", None, {"max_workers": 4}, id="ThreadPool-4"),
        pytest.param("TCPServer", None, {}, id="TCPServer"),
        pytest.param("AsyncTCPServer", "asyncio", {}, id="AsyncTCPServer-asyncio"),
        pytest.param("AsyncTCPServer", "uvloop", {}, id="AsyncTCPServer-uvloop"),
    ],
)
def test_stalled_handshakes_do_not_delay_a_normal_client(
    name: str, loop: str | None, kwargs: dict[str, Any], pki: PKI
) -> None:
    server_class = getattr(sockserve, name)
    handler = handler_for(name, LineEcho, AsyncLineEcho)
    server = server_class(
        ("127.0.0.1", 0),
        handler,
        ssl_context=pki.server_context(),
        **kwargs,
        **loop_kwargs(loop),
    )
    server.handshake_timeout = 30.0  # far longer than the test: nobody expires
    with serve_in_thread(server), ExitStack() as stalled:
        for _ in range(STALLED_CLIENTS):  # connect, then say nothing
            stalled.enter_context(socket.create_connection(server.server_address, TIMEOUT))
        started = time.monotonic()
        for _ in range(3):
            with tls_connect(server, pki.client_context()) as conn:
                assert exchange(conn, b"ping\n") == b"ping\n"
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"a normal client took {elapsed:.1f} s behind stalled handshakes"
        assert server.stats().rejected == {}
        stalled.close()  # now they hang up, still before any TLS byte
        stats = wait_for_stats(server, lambda s: s.rejected.get("tls_eof", 0) >= STALLED_CLIENTS)
    assert stats.rejected == {"tls_eof": STALLED_CLIENTS}


# -- refusals, counted by reason ------------------------------------------------------------


@pytest.mark.parametrize(("name", "loop"), mutual_tls_params())
def test_plain_text_garbage_eof_and_timeouts_are_counted_by_reason(
    name: str, loop: str | None, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    server_class = getattr(sockserve, name)
    handler = handler_for(name, LineEcho, AsyncLineEcho)
    server = server_class(
        ("127.0.0.1", 0), handler, ssl_context=pki.server_context(), **loop_kwargs(loop)
    )
    server.handshake_timeout = 0.5
    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(server):
        for opening in (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", bytes(range(64)) * 4):
            with socket.create_connection(server.server_address, TIMEOUT) as conn:
                conn.sendall(opening)
                try:
                    while conn.recv(4096):  # OpenSSL's alert, if any, then the close
                        pass
                except ConnectionResetError:
                    pass
        socket.create_connection(server.server_address, TIMEOUT).close()  # a health check
        with socket.create_connection(server.server_address, TIMEOUT) as silent:
            assert silent.recv(1) == b""  # closed at the handshake deadline
        with tls_connect(server, pki.client_context()) as conn:  # and serving goes on
            assert exchange(conn, b"still here\n") == b"still here\n"
        expected = {"tls_bad_handshake": 2, "tls_eof": 1, "tls_timeout": 1}
        stats = wait_for_stats(server, lambda s: sum(s.rejected.values()) >= 4)
    assert stats.rejected == expected
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a peer's fault"
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) <= 2


# -- http.server over TLS, fetched by curl and openssl ------------------------------------


def need_tool(name: str) -> str:
    """The path of ``name``; installed with apt-get if missing (the CI does it first)."""
    path = shutil.which(name)
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", name], capture_output=True, timeout=300)
        path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed and cannot be installed here")
    return path


class HTTPSServer(sockserve.ThreadingTCPServer):
    daemon_threads = True


@contextmanager
def https_server(pki: PKI, directory: Path) -> Iterator[Any]:
    (directory / "hello.txt").write_text("hello over TLS\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))

    class QuietHandler(handler.func):  # type: ignore[name-defined,misc]
        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = pki.server_context(alpn=("http/1.1",))
    server = HTTPSServer(
        ("127.0.0.1", 0),
        functools.partial(QuietHandler, directory=str(directory)),
        ssl_context=context,
    )
    with serve_in_thread(server):
        yield server


def test_http_server_over_tls_fetched_by_curl(pki: PKI, tmp_path: Path) -> None:
    curl = need_tool("curl")
    site = tmp_path / "site"
    site.mkdir()
    with https_server(pki, site) as server:
        port = server.server_address[1]
        result = subprocess.run(
            [
                curl, "--silent", "--show-error", "--fail",
                "--cacert", str(pki.ca_file),
                "--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
                f"https://{HOSTNAME}:{port}/hello.txt",
            ],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over TLS\n"
    assert result.stderr == ""


def test_http_server_over_tls_fetched_by_openssl_s_client(pki: PKI, tmp_path: Path) -> None:
    openssl = need_tool("openssl")
    site = tmp_path / "site"
    site.mkdir()
    with https_server(pki, site) as server:
        result = subprocess.run(
            [
                openssl, "s_client", "-connect", f"127.0.0.1:{server.server_address[1]}",
                "-servername", HOSTNAME, "-CAfile", str(pki.ca_file), "-verify_return_error",
                "-alpn", "http/1.1", "-ign_eof",
            ],
            input=f"GET /hello.txt HTTP/1.0\r\nHost: {HOSTNAME}\r\n\r\n",
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "ALPN protocol: http/1.1" in result.stdout
    assert "HTTP/1.0 200 OK" in result.stdout
    assert "hello over TLS" in result.stdout


# -- the command line -------------------------------------------------------------------


def s_client_echo(openssl: str, address: tuple[str, int], ca_file: Path, line: str) -> str:
    """Send ``line`` through ``openssl s_client``; the first line that comes back."""
    process = subprocess.Popen(
        [
            openssl, "s_client", "-connect", f"{address[0]}:{address[1]}",
            "-servername", HOSTNAME, "-CAfile", str(ca_file), "-verify_return_error",
            "-quiet", "-no_ign_eof",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(line.encode())
        process.stdin.flush()
        readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        assert readable, "openssl s_client got no reply"
        reply = process.stdout.readline().decode()
        process.stdin.close()
        process.wait(TIMEOUT)
        return reply
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("mode", ["threading", "async"])
def test_cli_serves_the_demo_echo_over_tls_to_openssl(mode: str, pki: PKI, tmp_path: Path) -> None:
    openssl = need_tool("openssl")
    args = ["demo", "echo", "--port", "0", "--mode", mode]
    args += ["--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file)]
    command = Command(args, tmp_path)
    try:
        _, address = command.read_ready_line()
        assert s_client_echo(openssl, address, pki.ca_file, "hello tls\n") == "hello tls\n"
        assert command.stop(signal.SIGTERM) == 0
    finally:
        command.kill()


@pytest.mark.parametrize("mode", ["threading", "async", "prefork"])
def test_cli_sighup_reloads_the_certificate_files(mode: str, pki: PKI, tmp_path: Path) -> None:
    args = ["demo", "echo", "--port", "0", "--mode", mode, "--log-level", "info"]
    args += ["--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file)]
    if mode == "prefork":
        args += ["--workers", "2"]
    command = Command(args, tmp_path)
    context = pki.client_context()
    try:
        _, address = command.read_ready_line()
        with tls_connect(Address(address), context) as conn:
            assert exchange(conn, b"before\n") == b"before\n"
            old = server_certificate(conn)
        pki.write_server_files("server")  # the renewal writes over the same files
        command.process.send_signal(signal.SIGHUP)
        command.wait_for_stderr("SIGHUP: reloaded the TLS certificate")
        deadline = time.monotonic() + TIMEOUT
        while True:  # pre-fork: until the restarted workers serve
            with tls_connect(Address(address), context) as conn:
                assert exchange(conn, b"after\n") == b"after\n"
                if server_certificate(conn) != old:
                    break
            assert mode == "prefork", "a new connection got the old certificate"
            assert time.monotonic() < deadline, "no worker serves the new certificate"
        assert command.stop(signal.SIGTERM) == 0
    finally:
        command.kill()


@dataclass
class Address:
    """Stands in for a server in ``tls_connect``: only its address is used."""

    server_address: tuple[str, int]


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--bind", "udp://127.0.0.1:0"], "udp:// binds cannot use it"),
        (["--tls-key-only"], "--tls-key and --tls-ca need --tls-cert"),
    ],
)
def test_cli_refuses_tls_where_it_cannot_apply(
    extra: list[str], complaint: str, pki: PKI, tmp_path: Path
) -> None:
    if extra == ["--tls-key-only"]:
        args = ["demo", "echo", "--tls-key", str(pki.key_file)]
    else:
        args = ["demo", "echo", *extra, "--tls-cert", str(pki.cert_file)]
        args += ["--tls-key", str(pki.key_file)]
    result = run_to_completion(args, tmp_path)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_bad_certificate_file(pki: PKI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = run_to_completion(
        ["demo", "echo", "--port", "0", "--tls-cert", str(missing)], tmp_path
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_options_come_from_the_environment_too(pki: PKI, tmp_path: Path) -> None:
    env = command_env(SOCKSERVE_TLS_CERT=str(pki.cert_file), SOCKSERVE_TLS_KEY=str(pki.key_file))
    command = Command(["demo", "echo", "--port", "0"], tmp_path, env)
    try:
        _, address = command.read_ready_line()
        with tls_connect(Address(address), pki.client_context()) as conn:
            assert exchange(conn, b"env\n") == b"env\n"
        assert command.stop(signal.SIGTERM) == 0
    finally:
        command.kill()
