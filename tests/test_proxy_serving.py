"""The PROXY protocol served: the trusted-proxy check and the header prelude, every mode.

Every stream kind of the contract suite (sync, threading, forking, pool, pre-fork and
async on both event loops; TCP and Unix stream) takes v1 and v2 headers sent a byte at
a time and together with the first application bytes: the handler sees the client the
header names as ``client_address`` and the header as ``self.proxy``, and the
application bytes arrive intact. Untrusted peers, malformed, truncated, oversized and
late headers are refused, counted by reason, and never reach a handler; the parser's
corpus of known-bad headers is replayed against every kind. A stalled header costs a
registered socket, never a worker. The prelude itself is also driven on a socketpair,
to pin that it never reads past the header and never leaves peeked bytes behind.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.access import NetworkList
from sockserve.addresses import format_address
from sockserve.admission import (
    ORDER_LAST,
    WANT_READ,
    PreludeDone,
    ProxyHeaderPrelude,
    Refused,
    TrustedProxies,
)
from sockserve.admission.proxy_header import DEFAULT_PROXY_HEADER_TIMEOUT
from sockserve.errors import ConfigurationError
from sockserve.proxy_protocol import (
    V2_DEFAULT_MAX_BYTES,
    V2_SIGNATURE,
    encode_v1,
    encode_v1_unknown,
    encode_v2,
    encode_v2_local,
)
from sockserve.testing import serve_in_thread
from test_connection_setup import (
    STREAM_KINDS,
    Greeting,
    assert_closed_without_a_reply,
    loop_kwargs,
    with_loops,
)
from test_contract import CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind
from test_proxy_protocol import BAD_HEADERS, CLIENT_HELLO

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

#: The networks the test's proxies (the test's own clients) connect from.
LOOPBACK_PROXIES = ["127.0.0.0/8"]
#: A real client, as a proxy would report it; a documentation address (RFC 5737).
CLIENT = ("192.0.2.1", 56324)
SERVICE = ("198.51.100.7", 443)
CLIENT6 = ("2001:db8::1", 40000, 0, 0)
#: Application bytes after the header that look like the start of other headers (v1,
#: then v2 without its newlines): a prelude that read one byte too far would swallow or
#: misparse them. One line for the handler.
FIRST_LINE = b"PROXY UNKNOWN\r" + V2_SIGNATURE.replace(b"\n", b"") + b"\n"
#: Short deadline for the tests that wait for a timeout.
SHORT_TIMEOUT = 0.5
TCP_STREAM_KINDS = [kind for kind in STREAM_KINDS if not kind.is_unix]


def report(handler: Any, line: bytes) -> bytes:
    """What the handler knows: the client, the header's version and command, the line."""
    proxy = handler.proxy
    about = f"v{proxy.version} {proxy.command}" if proxy is not None else "none"
    return f"{format_address(handler.client_address)} {about} {line.hex()}\n".encode()


def expected_reply(client: Any, about: str, line: bytes = FIRST_LINE) -> bytes:
    return f"{format_address(client)} {about} {line.hex()}\n".encode()


def proxy_server(harness: Harness, loop: str | None, log: Any = None, **settings: Any) -> Any:
    settings.setdefault("proxy_protocol", "any")
    settings.setdefault("trusted_proxies", LOOPBACK_PROXIES)
    return harness.server(harness.handler(report, log), **loop_kwargs(loop), **settings)


def send_bytewise(client: Any, data: bytes) -> None:
    if client.sock.family != socket.AF_UNIX:  # each byte its own segment
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index in range(len(data)):
        client.send(data[index : index + 1])


def wait_for_rejected(server: Any, kind: Kind, expected: dict[str, int]) -> None:
    if kind.is_prefork:  # its workers report their counters every 0.1 s at most
        assert server._supervisor.wait_for_stats(
            lambda s: s.rejected == expected, CLIENT_TIMEOUT
        ), server.stats().rejected
    assert server.stats().rejected == expected


# -- the real client reaches the handler ----------------------------------------------------


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_KINDS))
def test_handler_sees_the_client_the_header_names(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = proxy_server(harness, loop)
    cases = [
        (encode_v1(CLIENT, SERVICE), CLIENT, "v1 PROXY"),
        (encode_v2(CLIENT, SERVICE), CLIENT, "v2 PROXY"),
        (encode_v2(CLIENT6, ("2001:db8::2", 443, 0, 0), with_crc32c=True), CLIENT6, "v2 PROXY"),
    ]
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for header, client_address, about in cases:
            for bytewise in (True, False):
                with harness.connect(server) as client:
                    if bytewise:
                        send_bytewise(client, header + FIRST_LINE)
                    else:
                        client.send(header + FIRST_LINE)  # one write: one segment
                    assert client.receive() == expected_reply(client_address, about)
        # A LOCAL header (a health check) and v1 UNKNOWN keep the peer's own address.
        for header, about in ((encode_v2_local(), "v2 LOCAL"), (encode_v1_unknown(), "v1 LOCAL")):
            with harness.connect(server) as client:
                client.send(header + FIRST_LINE)
                assert client.receive() == expected_reply(client.address, about)
    assert server.stats().rejected == {}


@pytest.mark.parametrize(("kind", "loop"), with_loops(TCP_STREAM_KINDS))
def test_a_peer_outside_trusted_proxies_is_refused(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    log = harness.event_log()
    server = proxy_server(harness, loop, log, trusted_proxies=["192.0.2.0/24"])
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with harness.connect(server) as client:
            try:  # refused at accept: the close may overtake what we send
                client.send(encode_v2(CLIENT, SERVICE) + FIRST_LINE)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert_closed_without_a_reply(client)
        wait_for_rejected(server, kind, {"proxy_untrusted": 1})
    assert "handle" not in log.names()


# -- what is refused, and how it is counted ---------------------------------------------


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_KINDS))
def test_bad_headers_are_refused_counted_and_never_handled(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    log = harness.event_log()
    server = proxy_server(
        harness,
        loop,
        log,
        proxy_protocol="v2",
        proxy_header_timeout=SHORT_TIMEOUT,
        proxy_header_max=256,
    )
    v2 = encode_v2(CLIENT, SERVICE)
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with harness.connect(server) as tls_client:  # a TLS client on a PROXY listener
            tls_client.send(CLIENT_HELLO)
            assert_closed_without_a_reply(tls_client)
        with harness.connect(server) as v1_client:  # this listener takes v2 only
            v1_client.send(encode_v1(CLIENT, SERVICE) + FIRST_LINE)
            assert_closed_without_a_reply(v1_client)
        with harness.connect(server) as big:  # over proxy_header_max: refused unread
            big.send(encode_v2(CLIENT, SERVICE, tlvs=[(0xE0, bytes(300))]))
            assert_closed_without_a_reply(big)
        with harness.connect(server) as truncated:  # half a header, then the end
            truncated.send(v2[:20])
            truncated.sock.shutdown(socket.SHUT_WR)
            assert_closed_without_a_reply(truncated)
        with harness.connect(server) as late, harness.connect(server) as silent:
            late.send(v2[:-1])  # all but the last byte, then nothing
            assert_closed_without_a_reply(late)  # at proxy_header_timeout
            assert_closed_without_a_reply(silent)
        with harness.connect(server) as good:  # and the server still serves
            good.send(v2 + FIRST_LINE)
            assert good.receive() == expected_reply(CLIENT, "v2 PROXY")
        wait_for_rejected(
            server,
            kind,
            {
                "proxy_bad_signature": 1,
                "proxy_version_not_accepted": 1,
                "proxy_v2_too_long": 1,
                "proxy_truncated": 1,
                "proxy_timeout": 2,
            },
        )
    assert log.names().count("handle") == 1


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_KINDS))
def test_the_parsers_corpus_of_bad_headers_never_reaches_a_handler(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    log = harness.event_log()
    server = proxy_server(harness, loop, log)
    expected: Counter[str] = Counter()
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for data, reason in BAD_HEADERS.values():
            expected["proxy_" + reason] += 1
            with harness.connect(server) as client:
                try:
                    client.send(data + b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused while we were still sending: fine
                assert_closed_without_a_reply(client)
        wait_for_rejected(server, kind, dict(expected))
    assert "handle" not in log.names()


# -- a stalled header pins nothing --------------------------------------------------------


class EchoAddress(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(format_address(self.client_address).encode() + self.rfile.readline())


class AsyncEchoAddress(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        line = await self.reader.readline()
        self.writer.write(format_address(self.client_address).encode() + line)
        await self.writer.drain()


STALL_CASES = [
    pytest.param(sockserve.ThreadPoolTCPServer, {"max_workers": 2}, id="pool-2-workers"),
    pytest.param(sockserve.AsyncTCPServer, {"event_loop": "asyncio"}, id="async-asyncio"),
    pytest.param(sockserve.AsyncTCPServer, {"event_loop": "uvloop"}, id="async-uvloop"),
]


@pytest.mark.parametrize(("server_class", "kwargs"), STALL_CASES)
def test_stalled_headers_do_not_pin_a_worker(server_class: Any, kwargs: dict[str, Any]) -> None:
    handler = AsyncEchoAddress if server_class is sockserve.AsyncTCPServer else EchoAddress
    server = server_class(
        ("127.0.0.1", 0),
        handler,
        proxy_protocol="v1",
        trusted_proxies=["127.0.0.1"],
        proxy_header_timeout=SHORT_TIMEOUT * 4,  # the normal client comes well before
        **kwargs,
    )
    stalled = []
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        try:
            for _ in range(10):
                client = socket.create_connection(server.server_address, CLIENT_TIMEOUT)
                stalled.append(client)
                client.sendall(b"PROXY TCP4 ")  # and nothing more
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as normal:
                normal.sendall(encode_v1(CLIENT, SERVICE) + b" hello\n")
                assert normal.makefile("rb").readline() == b"192.0.2.1:56324 hello\n"
            for client in stalled:
                assert client.recv(1) == b""  # refused at the deadline
        finally:
            for client in stalled:
                client.close()
        assert server.stats().rejected == {"proxy_timeout": 10}
    server.server_close()


# -- the prelude on a socketpair: exact reads, no spinning -------------------------------


def drive_until_done(run: Any, sock: socket.socket, feed: list[bytes], peer: socket.socket) -> Any:
    """Feed ``feed`` piece by piece, advancing after each; WANT_READ must mean empty."""
    result = run.advance()
    for piece in feed:
        assert result == WANT_READ
        assert not select.select([sock], [], [], 0)[0], "WANT_READ with bytes left unread"
        peer.sendall(piece)
        result = run.advance()
    return result


@pytest.mark.parametrize(
    "header",
    [
        encode_v1(CLIENT, SERVICE),
        encode_v1(CLIENT6, ("2001:db8::2", 443, 0, 0)),
        encode_v2(CLIENT, SERVICE, tlvs=[(0xE0, bytes(200))], with_crc32c=True),
    ],
    ids=["v1", "v1-ipv6", "v2-tlvs"],
)
@pytest.mark.parametrize("piece", [1, 7, 1000], ids=["1-byte", "7-bytes", "whole"])
def test_the_prelude_reads_exactly_the_header(header: bytes, piece: int) -> None:
    prelude = ProxyHeaderPrelude("any", timeout=1.0, max_v2_bytes=V2_DEFAULT_MAX_BYTES)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.settimeout(CLIENT_TIMEOUT)
        run = prelude.start(ours, "peer")
        pieces = [header[i : i + piece] for i in range(0, len(header), piece)]
        pieces[-1] += CLIENT_HELLO  # what follows comes with the header's last piece
        done = drive_until_done(run, ours, pieces, theirs)
        assert isinstance(done, PreludeDone)
        assert done.details["proxy"].consumed == len(header)
        assert done.client_address[:2] == done.details["proxy"].source[:2]
        ours.setblocking(True)
        ours.settimeout(CLIENT_TIMEOUT)
        assert ours.recv(4096) == CLIENT_HELLO  # untouched, for the TLS prelude


def test_a_v2_header_declaring_more_than_the_cap_is_refused_before_its_body() -> None:
    prelude = ProxyHeaderPrelude("v2", timeout=1.0, max_v2_bytes=64)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(encode_v2(CLIENT, SERVICE, tlvs=[(0xE0, bytes(100))])[:16])
        with pytest.raises(Refused) as refused:
            prelude.start(ours, "peer").advance()
        assert refused.value.reason == "proxy_v2_too_long"


def test_a_reset_mid_header_is_a_refusal_not_an_error() -> None:
    prelude = ProxyHeaderPrelude("any", timeout=1.0, max_v2_bytes=V2_DEFAULT_MAX_BYTES)
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname(), CLIENT_TIMEOUT) as client:
        ours, _ = server.accept()
        with ours:
            ours.setblocking(False)
            client.sendall(b"PROXY TCP4 ")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            client.close()  # with SO_LINGER 0: a reset
            select.select([ours], [], [], CLIENT_TIMEOUT)
            with pytest.raises(Refused) as refused:
                prelude.start(ours, "peer").advance()
            assert refused.value.reason in ("proxy_reset", "proxy_truncated")


# -- trust, configuration, order -----------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        (("127.0.0.1", 1), True),
        (("::ffff:127.0.0.1", 1, 0, 0), True),  # a dual-stack socket's IPv4 peer
        (("::ffff:10.1.2.3", 1, 0, 0), False),
        (("::1", 1, 0, 0), False),
        (("10.1.2.3", 1), False),
        ("/run/proxy.sock", True),  # a Unix peer: the socket file's permissions decide
        ("", True),
    ],
)
def test_trusted_proxies_match_ipv4_however_it_arrives(address: Any, trusted: bool) -> None:
    check = TrustedProxies(NetworkList.parse(["127.0.0.0/8"], setting="trusted_proxies"))
    assert check.judges == "peer"
    if trusted:
        assert check("request", address) == ("request", address)
    else:
        with pytest.raises(Refused) as refused:
            check("request", address)
        assert refused.value.reason == "proxy_untrusted"


def test_a_mapped_rule_trusts_ipv4_peers_of_a_dual_stack_server() -> None:
    server = sockserve.TCPServer(
        ("::", 0),
        EchoAddress,
        dual_stack=True,
        proxy_protocol="v2",
        trusted_proxies=["::ffff:127.0.0.1/128"],
    )
    port = server.server_address[1]
    with (
        serve_in_thread(server, stop_timeout=STOP_TIMEOUT),
        socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as client,
    ):
        client.sendall(encode_v2(CLIENT, SERVICE) + b" hi\n")
        assert client.makefile("rb").readline() == b"192.0.2.1:56324 hi\n"
    server.server_close()


@pytest.mark.parametrize(
    ("server_class", "settings", "message"),
    [
        (sockserve.TCPServer, {"proxy_protocol": "v2"}, "needs trusted_proxies"),
        (sockserve.TCPServer, {"proxy_protocol": "v3", "trusted_proxies": ["::1"]}, "'v3'"),
        (sockserve.TCPServer, {"proxy_protocol": "v2", "trusted_proxies": []}, "is empty"),
        (sockserve.TCPServer, {"proxy_protocol": "v2", "trusted_proxies": "10.0.0.0/8"}, "single"),
        (sockserve.TCPServer, {"proxy_protocol": "v1", "trusted_proxies": ["10.1.0.0/8"]}, "mean"),
        (
            sockserve.TCPServer,
            {"proxy_protocol": "v1", "trusted_proxies": ["::1"], "proxy_header_timeout": 0},
            "proxy_header_timeout",
        ),
        (
            sockserve.TCPServer,
            {"proxy_protocol": "v1", "trusted_proxies": ["::1"], "proxy_header_max": 15},
            "proxy_header_max",
        ),
        (
            sockserve.UDPServer,
            {"proxy_protocol": "v2", "trusted_proxies": ["127.0.0.1"]},
            "stream servers only",
        ),
        (
            sockserve.AsyncUDPServer,
            {"proxy_protocol": "v2", "trusted_proxies": ["127.0.0.1"]},
            "stream servers only",
        ),
    ],
)
def test_settings_that_make_no_sense_are_refused(
    server_class: Any, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        server_class(("127.0.0.1", 0), EchoAddress, **settings)


def test_settings_as_class_attributes_and_their_defaults(short_dir: Path) -> None:
    class Behind(sockserve.TCPServer):
        proxy_protocol = "v1"
        trusted_proxies = ["10.0.0.0/8"]

    with Behind(("127.0.0.1", 0), EchoAddress) as server:
        (prelude,) = server._core.preludes
        assert (prelude.accept, prelude.timeout) == ("v1", DEFAULT_PROXY_HEADER_TIMEOUT)
        assert prelude.max_v2_bytes == V2_DEFAULT_MAX_BYTES
        assert any(isinstance(check, TrustedProxies) for check in server._core.peer_checks)
    # A Unix stream server needs no trusted_proxies: its socket file decides who connects.
    path = str(short_dir / "s")
    with sockserve.UnixStreamServer(path, EchoAddress, proxy_protocol="any") as server:
        assert len(server._core.preludes) == 1
    with sockserve.TCPServer(("127.0.0.1", 0), EchoAddress) as server:
        assert server._core.preludes == []  # off by default


class LastPrelude(Greeting):
    """Stands in for the TLS handshake, which runs last."""

    order = ORDER_LAST


def test_the_proxy_prelude_runs_first_whatever_was_added_before() -> None:
    class WithPreludes(sockserve.TCPServer):
        preludes = (LastPrelude(), Greeting())

    with WithPreludes(
        ("127.0.0.1", 0), EchoAddress, proxy_protocol="v2", trusted_proxies=["127.0.0.1"]
    ) as server:
        server.add_prelude(late_greeting := Greeting())
        kinds = [type(prelude).__name__ for prelude in server._core.preludes]
        assert kinds == ["ProxyHeaderPrelude", "Greeting", "Greeting", "LastPrelude"]
        assert server._core.preludes[2] is late_greeting  # equal order: as added


def test_handle_request_reads_the_header_too() -> None:
    """``handle_request()`` serves one connection, its preludes run on the spot."""
    with sockserve.TCPServer(
        ("127.0.0.1", 0), EchoAddress, proxy_protocol="v1", trusted_proxies=["127.0.0.1"]
    ) as server:
        server.timeout = CLIENT_TIMEOUT
        with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client:
            send = encode_v1(CLIENT, SERVICE) + b" one\n"
            client.sendall(send[:10])  # the rest in a second segment
            done = threading.Thread(target=server.handle_request)
            done.start()
            client.sendall(send[10:])
            assert client.makefile("rb").readline() == b"192.0.2.1:56324 one\n"
            done.join(CLIENT_TIMEOUT)
            assert not done.is_alive()
