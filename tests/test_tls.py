"""TLS pieces: the server context, the non-blocking handshake, TLSInfo, ContextHolder.

Certificates come from ``trustme``, made per test in a temporary directory. The server
side of every handshake is driven the way the serving core will drive it: a non-blocking
socket, a selector, ``HandshakeStep.advance()`` until it returns ``TLSInfo``; the client
is an ordinary blocking ``ssl`` client in a thread (or ``openssl s_client``). Every
socket has a timeout; a handshake that does not finish within ``TIMEOUT`` fails the test.
"""

from __future__ import annotations

import asyncio
import http.server
import selectors
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import sockserve
from sockserve.errors import (
    ConfigurationError,
    PeerProtocolError,
    SockserveError,
    TLSConfigurationError,
    TLSHandshakeError,
)
from sockserve.tls import (
    ContextHolder,
    TLSInfo,
    record_server_names,
    server_context,
    tls_info,
)
from sockserve.tls_handshake import HandshakeStep

#: Seconds any one socket operation, handshake or subprocess may take.
TIMEOUT = 10.0
HOSTNAME = "example.test"
Address = tuple[str, int]


# -- certificates -------------------------------------------------------------------------


@dataclass
class PKI:
    """A CA and a server certificate for ``example.test``, written as PEM files."""

    directory: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def issue_server_files(self, name: str) -> tuple[Path, Path, trustme.LeafCert]:
        leaf = self.ca.issue_cert(HOSTNAME, "127.0.0.1")
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        return cert_file, key_file, leaf

    def client_context(self, *, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = PKI(tmp_path, ca, ca_file, tmp_path, tmp_path)
    pki.cert_file, pki.key_file, _ = pki.issue_server_files("server")
    return pki


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


# -- the loop the serving core will be: a selector over non-blocking steps -----------------


def drive_many(steps: Sequence[HandshakeStep], timeout: float = TIMEOUT) -> list[TLSInfo]:
    """Advance every step whenever its socket is ready, until all are done."""
    done: dict[HandshakeStep, TLSInfo] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:

        def advance(step: HandshakeStep) -> None:
            outcome = step.advance()
            if isinstance(outcome, TLSInfo):
                done[step] = outcome
                return
            events = selectors.EVENT_READ if outcome == "read" else selectors.EVENT_WRITE
            selector.register(step.fileno(), events, step)

        for step in steps:
            advance(step)
        while len(done) < len(steps):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(steps) - len(done)} handshakes still unfinished")
            for key, _ in selector.select(remaining):
                selector.unregister(key.fd)
                advance(key.data)
    return [done[step] for step in steps]


def drive(step: HandshakeStep) -> TLSInfo:
    return drive_many([step])[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(TIMEOUT)
        yield sock


def connect_tls(
    address: Address, context: ssl.SSLContext, hostname: str | None = HOSTNAME
) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


@dataclass
class Attempt:
    """One handshake: the server's step and outcome, and the client's result or error."""

    step: HandshakeStep
    outcome: TLSInfo | TLSHandshakeError
    client: Any

    @property
    def info(self) -> TLSInfo:
        assert isinstance(self.outcome, TLSInfo), self.outcome
        return self.outcome

    @property
    def error(self) -> TLSHandshakeError:
        assert isinstance(self.outcome, TLSHandshakeError), self.outcome
        return self.outcome

    @property
    def server(self) -> ssl.SSLSocket:
        """The server's connection, handed back in blocking mode with a timeout."""
        self.step.sslsocket.settimeout(TIMEOUT)
        return self.step.sslsocket


def client_outcome(future: Future[Any]) -> Any:
    error = future.exception(timeout=TIMEOUT)
    return error if error is not None else future.result()


@contextmanager
def handshake(
    listener: socket.socket, context: ssl.SSLContext, client: Callable[[Address], Any]
) -> Iterator[Attempt]:
    """Run ``client(address)`` in a thread and drive the server's side of its handshake."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client, listener.getsockname())
        sock, _ = listener.accept()
        step = HandshakeStep(sock, context)
        try:
            outcome: TLSInfo | TLSHandshakeError
            try:
                outcome = drive(step)
            except TLSHandshakeError as exc:
                outcome = exc
                step.close()  # so that a client waiting for our answer gives up
            attempt = Attempt(step, outcome, client_outcome(future))
            try:
                yield attempt
            finally:
                if isinstance(attempt.client, socket.socket):
                    attempt.client.close()
        finally:
            step.close()


# -- a completed handshake -----------------------------------------------------------------


def test_handshake_reports_version_cipher_alpn_and_server_name(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(pki.cert_file, pki.key_file, alpn=("h2", "http/1.1"))
    client_context = pki.client_context(alpn=("h2", "http/1.1"))
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        client = attempt.client
        assert attempt.info == TLSInfo(
            version=client.version(),
            cipher=client.cipher()[0],
            alpn="h2",
            server_name=HOSTNAME,
            peer_certificate=None,
            peer_certificate_der=None,
        )
        assert attempt.info.version == "TLSv1.3"
        assert attempt.step.advance() is attempt.info  # asking again changes nothing
        client.sendall(b"ping")
        assert attempt.server.recv(4) == b"ping"
        attempt.server.sendall(b"pong")
        assert client.recv(4) == b"pong"


def test_alpn_falls_back_to_http11_and_to_none(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file, alpn=("h2", "http/1.1"))
    old_client = pki.client_context(alpn=("http/1.1",))
    with handshake(listener, context, lambda a: connect_tls(a, old_client)) as attempt:
        assert attempt.info.alpn == "http/1.1"
    plain_client = pki.client_context()
    with handshake(listener, context, lambda a: connect_tls(a, plain_client)) as attempt:
        assert attempt.info.alpn is None


def test_no_sni_gives_no_server_name(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    client_context = pki.client_context()
    client_context.check_hostname = False  # without a name there is no SNI to send
    with handshake(listener, context, lambda a: connect_tls(a, client_context, None)) as attempt:
        assert attempt.info.server_name is None


def test_concurrent_handshakes_each_see_their_own_server_name(
    pki: PKI, listener: socket.socket
) -> None:
    """One context, one SNI callback, eight interleaved handshakes: no name crosses over."""
    context = server_context(pki.cert_file, pki.key_file)
    client_context = pki.client_context()
    client_context.check_hostname = False  # the certificate names only example.test
    names = [f"client{i}.example.test" for i in range(8)]

    def client(name: str) -> ssl.SSLSocket:
        sock = connect_tls(listener.getsockname(), client_context, name)
        sock.sendall(name.encode() + b"\n")
        return sock

    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(client, name) for name in names]
        steps = [HandshakeStep(listener.accept()[0], context) for _ in names]
        try:
            infos = drive_many(steps)
            for step, info in zip(steps, infos, strict=True):
                step.sslsocket.settimeout(TIMEOUT)
                sent = step.sslsocket.makefile("rb").readline().decode().strip()
                assert info.server_name == sent
            assert sorted(info.server_name or "" for info in infos) == sorted(names)
        finally:
            for step in steps:
                step.close()
            for future in futures:
                outcome = client_outcome(future)
                if isinstance(outcome, socket.socket):
                    outcome.close()


def test_an_existing_sni_callback_keeps_working(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    seen: list[str | None] = []
    user_callback = context.sni_callback
    assert user_callback is not None

    def pick_certificate(connection: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = pick_certificate
    record_server_names(context)
    record_server_names(context)  # twice changes nothing
    client_context = pki.client_context()
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        assert attempt.info.server_name == HOSTNAME
    assert seen == [HOSTNAME]


# -- mutual TLS ----------------------------------------------------------------------------


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(
        pki.cert_file, pki.key_file, cafile=pki.ca_file, require_client_cert=True
    )
    client_leaf = pki.ca.issue_cert("client.example.test")
    client_context = pki.client_context()
    client_leaf.configure_cert(client_context)
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        info = attempt.info
        assert info.peer_certificate_der == der_of(client_leaf)
        assert info.peer_certificate is not None
        assert info.peer_certificate["subjectAltName"] == (("DNS", "client.example.test"),)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(
        pki.cert_file, pki.key_file, cafile=pki.ca_file, require_client_cert=True
    )
    client_context = pki.client_context()
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        assert attempt.error.reason == "tls_no_client_cert"


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(
        pki.cert_file, pki.key_file, cafile=pki.ca_file, require_client_cert=True
    )
    client_context = pki.client_context()
    trustme.CA().issue_cert("client.example.test").configure_cert(client_context)
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        assert attempt.error.reason == "tls_bad_client_cert"
        assert "certificate" in str(attempt.error)


def test_optional_client_certificate_lets_clients_without_one_in(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(pki.cert_file, pki.key_file, cafile=pki.ca_file)
    client_context = pki.client_context()
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        assert attempt.info.peer_certificate is None
        assert attempt.info.peer_certificate_der is None


# -- failed handshakes, by reason ------------------------------------------------------------


def send_plain(payload: bytes) -> Callable[[Address], bytes]:
    def client(address: Address) -> bytes:
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            sock.sendall(payload)
            return sock.recv(1024)

    return client


def test_a_plain_text_http_client_is_told_apart_at_once(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    client = send_plain(b"GET / HTTP/1.1\r\n\r\n")
    with handshake(listener, context, client) as attempt:
        error = attempt.error
        assert error.reason == "tls_bad_handshake"
        assert "plain-text HTTP" in str(error)
        assert "https://" in str(error)
        assert isinstance(error, PeerProtocolError)
        assert isinstance(error, OSError)
        assert isinstance(error, SockserveError)
        assert error.reply == b""


def test_garbage_is_a_bad_handshake(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    with handshake(listener, context, send_plain(b"\x00\x01 not tls at all\r\n")) as attempt:
        assert attempt.error.reason == "tls_bad_handshake"
        assert "not a TLS ClientHello" in str(attempt.error)


def test_a_version_below_the_minimum_is_refused(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file, minimum_version=ssl.TLSVersion.TLSv1_3)
    client_context = pki.client_context()
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        assert attempt.error.reason == "tls_version"
        assert isinstance(attempt.client, ssl.SSLError)


def test_a_client_that_rejects_our_certificate_is_counted_apart(
    pki: PKI, listener: socket.socket
) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts some other CA, not ours
    with handshake(listener, context, lambda a: connect_tls(a, stranger)) as attempt:
        assert attempt.error.reason == "tls_peer_rejected_cert"
        assert isinstance(attempt.client, ssl.SSLCertVerificationError)


def first_client_hello(hostname: str = HOSTNAME) -> bytes:
    """The bytes a client sends first, made without a network."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_a_client_gone_mid_handshake_is_eof(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    hello = first_client_hello()
    with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as client:
        client.sendall(hello[: len(hello) // 2])
        client.shutdown(socket.SHUT_WR)  # half a ClientHello, then the end of the stream
        step = HandshakeStep(listener.accept()[0], context)
        try:
            with pytest.raises(TLSHandshakeError) as caught:
                drive(step)
        finally:
            step.close()
    assert caught.value.reason == "tls_eof"
    assert "mid-handshake" in str(caught.value)


def test_a_client_that_hangs_up_before_hello_is_eof(pki: PKI, listener: socket.socket) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    with socket.create_connection(listener.getsockname(), timeout=TIMEOUT):
        pass
    step = HandshakeStep(listener.accept()[0], context)
    try:
        with pytest.raises(TLSHandshakeError) as caught:
            drive(step)
    finally:
        step.close()
    assert caught.value.reason == "tls_eof"
    assert "before sending" in str(caught.value)


def test_a_silent_client_leaves_the_step_waiting_to_read(pki: PKI, listener: socket.socket) -> None:
    """Nothing blocks: the step says "read" as often as asked; the deadline is the caller's."""
    context = server_context(pki.cert_file, pki.key_file)
    with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as client:
        step = HandshakeStep(listener.accept()[0], context)
        try:
            assert step.sslsocket.getblocking() is False
            assert [step.advance() for _ in range(3)] == ["read", "read", "read"]
            client.close()
            with pytest.raises(TLSHandshakeError) as caught:
                drive(step)
            assert caught.value.reason == "tls_eof"
        finally:
            step.close()


# -- after the handshake: the socket as a handler sees it -----------------------------------


def test_stream_request_handler_works_over_the_handed_back_socket(
    pki: PKI, listener: socket.socket
) -> None:
    class Echo(sockserve.StreamRequestHandler):
        timeout = TIMEOUT  # settimeout on the TLS socket, from setup()

        def handle(self) -> None:
            for _ in range(2):
                self.wfile.write(self.rfile.readline().upper())

    context = server_context(pki.cert_file, pki.key_file)
    client_context = pki.client_context()
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        server = attempt.step.sslsocket
        server.setblocking(True)
        client = attempt.client
        client.sendall(b"hel")
        client.sendall(b"lo\nworld\n")
        Echo(server, ("127.0.0.1", 0), None)
        assert server.gettimeout() == TIMEOUT
        assert client.makefile("rb").read(12) == b"HELLO\nWORLD\n"


def test_http_server_handler_works_over_the_handed_back_socket(
    pki: PKI, listener: socket.socket
) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        timeout = TIMEOUT
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"hello over {self.request.version()}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = server_context(pki.cert_file, pki.key_file, alpn=("http/1.1",))
    client_context = pki.client_context(alpn=("http/1.1",))
    with handshake(listener, context, lambda a: connect_tls(a, client_context)) as attempt:
        server = attempt.step.sslsocket
        server.setblocking(True)
        attempt.client.sendall(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        Hello(server, ("127.0.0.1", 0), None)
        response = attempt.client.makefile("rb")
        assert response.readline() == b"HTTP/1.1 200 OK\r\n"
        headers = {}
        while (line := response.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        body = response.read(int(headers["content-length"]))
        assert body == b"hello over TLSv1.3"


# -- asyncio and uvloop: the same TLSInfo from the transport's ssl_object --------------------


def event_loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("no uvloop")))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


def run_async(loop_factory: Any, coroutine: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coroutine, TIMEOUT))


@pytest.mark.parametrize("loop_factory", event_loop_factories())
def test_tls_info_from_an_asyncio_transport(pki: PKI, loop_factory: Any) -> None:
    server_ctx = server_context(pki.cert_file, pki.key_file, alpn=("h2", "http/1.1"))
    client_ctx = pki.client_context(alpn=("h2",))

    async def exchange() -> tuple[TLSInfo, tuple[str | None, str]]:
        seen: asyncio.Future[TLSInfo] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(tls_info(writer.get_extra_info("ssl_object")))
            writer.write(b"ok")
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=HOSTNAME
            )
            client_object = writer.get_extra_info("ssl_object")
            client_view = (client_object.version(), client_object.cipher()[0])
            assert await reader.read() == b"ok"
            writer.close()
            await writer.wait_closed()
            return await seen, client_view

    info, (version, cipher) = run_async(loop_factory, exchange())
    assert info == TLSInfo(version or "", cipher, "h2", HOSTNAME, None, None)


# -- ContextHolder: new connections get the new context, old ones keep theirs ----------------


def test_replace_gives_new_connections_the_new_context(pki: PKI) -> None:
    first = server_context(pki.cert_file, pki.key_file)
    second = server_context(pki.cert_file, pki.key_file, alpn=("h2",))
    holder = ContextHolder(first)
    assert holder.context is first
    assert holder.replace(second) is first
    assert holder.context is second
    with pytest.raises(ConfigurationError, match="nothing to reload"):
        holder.reload_from_files()
    with pytest.raises(ConfigurationError, match="ssl.SSLContext"):
        holder.replace("not a context")  # type: ignore[arg-type]


def test_reload_from_files_reaches_new_connections_and_spares_old_ones(
    pki: PKI, listener: socket.socket
) -> None:
    holder = ContextHolder.from_files(pki.cert_file, pki.key_file)
    client_context = pki.client_context()
    with handshake(listener, holder.context, lambda a: connect_tls(a, client_context)) as old:
        original = old.client.getpeercert(binary_form=True)
        # A renewal writes new files over the old ones; then SIGHUP.
        renewed_cert, renewed_key, renewed = pki.issue_server_files("renewed")
        renewed_cert.replace(pki.cert_file)
        renewed_key.replace(pki.key_file)
        holder.reload_from_files()
        with handshake(listener, holder.context, lambda a: connect_tls(a, client_context)) as new:
            assert new.client.getpeercert(binary_form=True) == der_of(renewed) != original
        old.client.sendall(b"still here?")
        assert old.server.recv(11) == b"still here?"
        old.server.sendall(b"yes")
        assert old.client.recv(3) == b"yes"
        assert old.client.getpeercert(binary_form=True) == original


def test_a_failed_reload_keeps_the_current_context(pki: PKI) -> None:
    holder = ContextHolder.from_files(pki.cert_file, pki.key_file, alpn=["h2"])
    current = holder.context
    assert holder.settings is not None
    assert holder.settings.alpn == ("h2",)
    pki.key_file.write_bytes(pki.ca.issue_cert("other.test").private_key_pem.bytes())
    with pytest.raises(TLSConfigurationError, match="does not belong"):
        holder.reload_from_files()
    assert holder.context is current


# -- configuration errors name the file -----------------------------------------------------


def test_a_missing_certificate_file_is_named(pki: PKI) -> None:
    missing = pki.directory / "nope.pem"
    with pytest.raises(TLSConfigurationError) as caught:
        server_context(missing, pki.key_file)
    assert caught.value.path == str(missing)
    assert "nope.pem" in str(caught.value)
    assert "certificate" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, OSError)


def test_a_missing_key_or_ca_file_is_named(pki: PKI) -> None:
    with pytest.raises(TLSConfigurationError, match="private key file .*nokey.pem"):
        server_context(pki.cert_file, pki.directory / "nokey.pem")
    with pytest.raises(TLSConfigurationError, match="CA file .*noca.pem"):
        server_context(pki.cert_file, pki.key_file, cafile=pki.directory / "noca.pem")


def test_a_key_that_does_not_match_the_certificate_is_named(pki: PKI) -> None:
    other_key = pki.directory / "other.key"
    pki.ca.issue_cert("other.test").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSConfigurationError) as caught:
        server_context(pki.cert_file, other_key)
    assert caught.value.path == str(other_key)
    assert "does not belong to the certificate" in str(caught.value)
    assert str(pki.cert_file) in str(caught.value)


def test_files_without_pem_are_named(pki: PKI) -> None:
    junk = pki.directory / "junk.pem"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(TLSConfigurationError) as caught:
        server_context(junk, pki.key_file)
    assert caught.value.path == str(junk)
    assert "no PEM certificate" in str(caught.value)
    with pytest.raises(TLSConfigurationError) as caught:
        server_context(pki.cert_file, junk)
    assert caught.value.path == str(junk)
    with pytest.raises(TLSConfigurationError) as caught:
        server_context(pki.cert_file, pki.key_file, cafile=junk)
    assert caught.value.path == str(junk)


def test_one_file_holding_certificate_and_key_works(pki: PKI) -> None:
    both = pki.directory / "both.pem"
    both.write_bytes(pki.key_file.read_bytes() + pki.cert_file.read_bytes())
    assert isinstance(server_context(both), ssl.SSLContext)


def test_an_encrypted_key_is_refused_without_prompting(pki: PKI) -> None:
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    encrypted = pki.directory / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigurationError, match="encrypted") as caught:
        server_context(pki.cert_file, encrypted)
    assert caught.value.path == str(encrypted)


def test_settings_that_cannot_work_are_refused(pki: PKI) -> None:
    with pytest.raises(TLSConfigurationError, match="needs cafile"):
        server_context(pki.cert_file, pki.key_file, require_client_cert=True)
    with pytest.raises(ConfigurationError, match="RFC 8996"):
        server_context(pki.cert_file, pki.key_file, minimum_version=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ConfigurationError, match="sequence of names"):
        server_context(pki.cert_file, pki.key_file, alpn="h2")
    with pytest.raises(ConfigurationError, match="1-255 byte"):
        server_context(pki.cert_file, pki.key_file, alpn=("",))


def test_the_context_has_the_documented_defaults(pki: PKI) -> None:
    context = server_context(pki.cert_file, pki.key_file)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.cert_store_stats()["x509_ca"] == 0  # no system CAs for client certs
    mutual = server_context(pki.cert_file, pki.key_file, cafile=pki.ca_file)
    assert mutual.verify_mode == ssl.CERT_OPTIONAL
    assert mutual.cert_store_stats()["x509_ca"] == 1


# -- a real client: openssl s_client ----------------------------------------------------------

OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_openssl_s_client_interoperates(pki: PKI, listener: socket.socket) -> None:
    assert OPENSSL is not None
    context = server_context(pki.cert_file, pki.key_file, alpn=("h2", "http/1.1"))
    port = listener.getsockname()[1]
    command = [
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOSTNAME,
        "-CAfile", str(pki.ca_file), "-verify_return_error", "-verify_hostname", HOSTNAME,
        "-alpn", "h2", "-ign_eof",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as openssl:
        try:
            step = HandshakeStep(listener.accept()[0], context)
            try:
                info = drive(step)
                step.sslsocket.settimeout(TIMEOUT)
                step.sslsocket.sendall(b"hello from sockserve\n")
                step.sslsocket.unwrap()  # close_notify: s_client, told to ignore stdin's
                # end, leaves when we do, and answers with its own close_notify
            finally:
                step.close()
            output, _ = openssl.communicate(b"", timeout=TIMEOUT)
        except BaseException:
            openssl.kill()
            raise
    text = output.decode(errors="replace")
    assert openssl.returncode == 0, text
    assert "hello from sockserve" in text
    assert "Verify return code: 0 (ok)" in text
    assert "ALPN protocol: h2" in text
    assert info.server_name == HOSTNAME
    assert info.alpn == "h2"
