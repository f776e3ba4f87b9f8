"""IPv6 and dual stack: one socket for IPv4 and IPv6 clients, and IPv6 literals that work.

``dual_stack=True`` (a constructor keyword or a class attribute) binds one IPv6 socket that
also takes IPv4 clients; those clients appear to handlers exactly as an IPv4-only server
would show them, ``("127.0.0.1", port)``, and datagram replies to that address reach them.
An IPv6 literal host such as ``"::1"`` on a plain ``TCPServer`` gets an ``AF_INET6``
socket (the stdlib raises ``gaierror``).

Handlers reply with ``repr(self.client_address)``, so what the handler saw travels back
over the connection: that works for threads and forked children alike.
"""

from __future__ import annotations

import ast
import os
import socket
from typing import Any

import pytest

import sockserve
from loopback import has_ipv6_loopback
from sockserve.testing import serve_in_thread

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0


pytestmark = [
    pytest.mark.skipif(
        not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (cannot bind ::1)"
    ),
    # Python 3.12+ warns that fork() in a process with threads may deadlock the child.
    # The threads are the test's own (serving thread, faulthandler's watchdog) and the
    # children only run a handler.
    pytest.mark.filterwarnings(
        r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
    ),
]

TCP_CLASSES = [
    pytest.param(sockserve.TCPServer, id="TCPServer"),
    pytest.param(sockserve.ThreadingTCPServer, id="ThreadingTCPServer"),
    pytest.param(sockserve.ThreadPoolTCPServer, id="ThreadPoolTCPServer"),
    pytest.param(
        getattr(sockserve, "ForkingTCPServer", None),
        id="ForkingTCPServer",
        marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    ),
]
UDP_CLASSES = [
    pytest.param(sockserve.UDPServer, id="UDPServer"),
    pytest.param(sockserve.ThreadingUDPServer, id="ThreadingUDPServer"),
]


class ReportAddress(sockserve.StreamRequestHandler):
    """Reads one line, replies with the client address the handler was given."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(repr(self.client_address).encode() + b"\n")


class ReportAddressDatagram(sockserve.DatagramRequestHandler):
    """Replies (through ``sendto(client_address)``) with the address it was given."""

    def handle(self) -> None:
        self.wfile.write(repr(self.client_address).encode())


def stream_client(family: int, host: str, port: int) -> tuple[Any, Any]:
    """Connect from ``host``; the client's own address and what the handler saw."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.connect((host, port))
        own = client.getsockname()
        client.sendall(b"who am I?\n")
        with client.makefile("rb") as replies:
            seen = ast.literal_eval(replies.readline().decode())
    return own, seen


def datagram_client(family: int, host: str, port: int) -> tuple[Any, Any, Any]:
    """Send one datagram from ``host``: own address, what the handler saw, reply sender."""
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.bind((host, 0))
        client.sendto(b"who am I?", (host, port))
        reply, sender = client.recvfrom(65535)
        own = client.getsockname()
    return own, ast.literal_eval(reply.decode()), sender


def assert_seen_as_plain_ipv4(own: Any, seen: Any) -> None:
    assert type(seen) is tuple
    assert seen == ("127.0.0.1", own[1])  # not ("::ffff:127.0.0.1", port, 0, 0)


def assert_seen_as_ipv6_loopback(own: Any, seen: Any) -> None:
    assert type(seen) is tuple
    assert len(seen) == 4  # (host, port, flowinfo, scope_id), as the socket module gives
    assert seen[:2] == ("::1", own[1])


# -- TCP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("server_class", TCP_CLASSES)
@pytest.mark.parametrize("wildcard", ["::", "", "0.0.0.0"], ids=["::", "empty", "0.0.0.0"])
def test_dual_stack_keyword_serves_ipv4_and_ipv6_clients(server_class: Any, wildcard: str) -> None:
    server = server_class((wildcard, 0), ReportAddress, dual_stack=True)
    assert server.address_family == socket.AF_INET6
    assert server.socket.family == socket.AF_INET6
    assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    host, port = server.server_address[:2]
    assert host == "::"
    with serve_in_thread(server):
        own, seen = stream_client(socket.AF_INET, "127.0.0.1", port)
        assert_seen_as_plain_ipv4(own, seen)
        own, seen = stream_client(socket.AF_INET6, "::1", port)
        assert_seen_as_ipv6_loopback(own, seen)
    assert server.socket.fileno() == -1


def test_dual_stack_class_attribute() -> None:
    class DualStackServer(sockserve.ThreadingTCPServer):
        dual_stack = True

    with serve_in_thread(DualStackServer(("", 0), ReportAddress)) as server:
        assert server.address_family == socket.AF_INET6
        port = server.server_address[1]
        own, seen = stream_client(socket.AF_INET, "127.0.0.1", port)
        assert_seen_as_plain_ipv4(own, seen)
        own, seen = stream_client(socket.AF_INET6, "::1", port)
        assert_seen_as_ipv6_loopback(own, seen)


def test_dual_stack_keyword_false_overrides_the_class_attribute() -> None:
    class DualStackServer(sockserve.TCPServer):
        dual_stack = True

    with DualStackServer(("127.0.0.1", 0), ReportAddress, dual_stack=False) as server:
        assert server.address_family == socket.AF_INET
        assert server.server_address[0] == "127.0.0.1"


def test_dual_stack_leaves_the_class_untouched() -> None:
    with sockserve.TCPServer(("::", 0), ReportAddress, dual_stack=True) as server:
        assert server.address_family == socket.AF_INET6
    assert sockserve.TCPServer.address_family == socket.AF_INET
    assert sockserve.TCPServer.dual_stack is False
    with sockserve.TCPServer(("127.0.0.1", 0), ReportAddress) as plain:
        assert plain.address_family == socket.AF_INET


# -- UDP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("server_class", UDP_CLASSES)
def test_dual_stack_udp_replies_reach_ipv4_and_ipv6_clients(server_class: Any) -> None:
    server = server_class(("::", 0), ReportAddressDatagram, dual_stack=True)
    assert server.address_family == socket.AF_INET6
    port = server.server_address[1]
    with serve_in_thread(server):
        own, seen, sender = datagram_client(socket.AF_INET, "127.0.0.1", port)
        assert_seen_as_plain_ipv4(own, seen)
        assert sender == ("127.0.0.1", port)  # the reply came back over IPv4
        own, seen, sender = datagram_client(socket.AF_INET6, "::1", port)
        assert_seen_as_ipv6_loopback(own, seen)
        assert sender[:2] == ("::1", port)
    assert server.socket.fileno() == -1


def test_dual_stack_udp_socket_still_sends_to_ipv6_addresses() -> None:
    """A handler that replies with ``sendto`` to an IPv6 address it chose itself."""
    with (
        sockserve.UDPServer(("::", 0), ReportAddressDatagram, dual_stack=True) as server,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer,
    ):
        peer.settimeout(CLIENT_TIMEOUT)
        peer.bind(("::1", 0))
        server.socket.sendto(b"to v6", peer.getsockname())
        assert peer.recvfrom(64)[0] == b"to v6"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer4:
            peer4.settimeout(CLIENT_TIMEOUT)
            peer4.bind(("127.0.0.1", 0))
            server.socket.sendto(b"to v4", 0, peer4.getsockname())  # with flags too
            assert peer4.recvfrom(64)[0] == b"to v4"


# -- IPv6 literals without dual stack ----------------------------------------------------


@pytest.mark.parametrize("server_class", TCP_CLASSES)
def test_ipv6_literal_on_a_plain_tcp_server(server_class: Any) -> None:
    server = server_class(("::1", 0), ReportAddress)
    assert server.address_family == socket.AF_INET6
    assert server.server_address[0] == "::1"
    assert len(server.server_address) == 4
    with serve_in_thread(server):
        own, seen = stream_client(socket.AF_INET6, "::1", server.server_address[1])
        assert_seen_as_ipv6_loopback(own, seen)
    assert sockserve.TCPServer.address_family == socket.AF_INET


def test_ipv6_literal_on_a_plain_udp_server() -> None:
    server = sockserve.UDPServer(("::1", 0), ReportAddressDatagram)
    assert server.address_family == socket.AF_INET6
    with serve_in_thread(server):
        own, seen, sender = datagram_client(socket.AF_INET6, "::1", server.server_address[1])
        assert_seen_as_ipv6_loopback(own, seen)
        assert sender[:2] == server.server_address[:2]


# -- settings that cannot work -----------------------------------------------------------


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
def test_dual_stack_on_an_ipv4_address_is_a_configuration_error(server_class: Any) -> None:
    with pytest.raises(sockserve.ConfigurationError) as raised:
        server_class(("127.0.0.1", 0), ReportAddress, dual_stack=True)
    assert "dual_stack" in str(raised.value)
    assert "127.0.0.1:0" in str(raised.value)
