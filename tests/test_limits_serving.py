"""Access lists and per-client limits, served: every mode, every transport they apply to.

The settings (``allow``, ``deny``, ``max_connections_per_client``, ``client_rate``,
``client_burst``) build client checks (``admission/client_checks.py``) that the serving
core runs before any handler, whatever the mode; async kinds run on both event loops.
Distinct clients on one machine: Linux routes all of 127.0.0.0/8 to the loopback
interface, so a client socket bound to 127.0.0.3 is a different client from one bound
to 127.0.0.2.

Pre-fork workers keep their own tables (a limit is per worker, documented), so the
per-client limit and rate cases run one worker; the access lists hold in any number.
Synchronisation: a refused stream client sees the connection closed (the refusal is
counted before the close); a refused datagram gets no reply, so the case then sends an
admitted datagram on the same server socket and waits for its reply, which comes after
the refused one was judged (one socket, read in order). A connection's release is seen
through the core's ``on_request_done`` hook writing to a pipe (forked children and
pre-fork workers inherit it).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

import sockserve
from line_clients import Client, DatagramClient, StreamClient
from loopback import has_ipv6_loopback
from sockserve.admission import WANT_READ, AccessCheck, ConnectionsPerClient, PreludeDone
from sockserve.prefork import PreforkMixIn
from sockserve.testing import serve_in_thread
from test_connection_setup import assert_closed_without_a_reply, with_loops
from test_contract import ALL_KINDS, CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

IP_KINDS = [kind for kind in ALL_KINDS if not kind.is_unix]
UNIX_KINDS = [kind for kind in ALL_KINDS if kind.is_unix]
STREAM_IP_KINDS = [kind for kind in IP_KINDS if kind.is_stream]

#: Three clients on loopback, told apart by their source address.
ALICE = "127.0.0.2"
BOB = "127.0.0.3"
STRANGER = "127.0.0.9"

#: A rate no test outlives (one token per 100 s), so a slow machine refills nothing.
SLOW_RATE = 0.01


# -- servers, clients and handlers ----------------------------------------------------------


def make_server(harness: Harness, loop: str | None, handler: Any = None, **settings: Any) -> Any:
    """The kind's server with ``settings``; a pre-fork server runs one worker, so that
    the per-worker tables are the server's tables."""
    kind = harness.kind
    keywords = {**kind.server_kwargs, **settings}
    if kind.is_prefork:
        keywords["workers"] = 1
    if loop is not None:
        keywords["event_loop"] = loop
    return kind.server_class(harness.address(), handler or harness.handler(), **keywords)


def connect_from(kind: Kind, server: Any, source: str) -> Client:
    """A client of ``server`` whose address is ``source`` (any port)."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    if kind.is_stream:
        return StreamClient(family, server.server_address, (source, 0))
    return DatagramClient(family, server.server_address, (source, 0))


def assert_refused(kind: Kind, client: Client) -> None:
    """A refused stream client is closed unanswered; a refused datagram is dropped
    (nothing to see here: a later admitted datagram's reply orders the two)."""
    if kind.is_stream:
        assert_closed_without_a_reply(client)
    else:
        client.send(b"dropped\n")


def assert_rejected(server: Any, kind: Kind, expected: dict[str, int]) -> None:
    """``stats().rejected`` is ``expected``; a pre-fork master's once its workers said so."""
    if kind.is_prefork:  # workers report their counters every 0.1 s at most
        assert server._supervisor.wait_for_stats(lambda s: s.rejected == expected, CLIENT_TIMEOUT)
    assert server.stats().rejected == expected


#: What ends an ``EchoLines`` connection. Not the client's close: a forked child holds
#: copies of every client socket the test process had open when it was forked, its own
#: client's among them, so closing a client there never reaches the server as an EOF.
BYE = b"bye\n"


class EchoLines(sockserve.StreamRequestHandler):
    """Echoes lines until ``BYE``: a connection held as long as the client likes."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == BYE:
                return
            self.wfile.write(line)


class AsyncEchoLines(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        while (line := await self.reader.readline()) and line != BYE:
            self.writer.write(line)
            await self.writer.drain()


def leave(client: Client) -> None:
    """End an ``EchoLines`` connection and wait until the server has closed it."""
    client.send(BYE)
    assert client.receive() == b""
    client.close()


def echo_lines(kind: Kind) -> Any:
    return AsyncEchoLines if kind.is_async else EchoLines


class RequestsDone:
    """Counts finished requests from any thread or process: the core's
    ``on_request_done`` hook (it runs after the checks were released) writes to a pipe."""

    def __init__(self, server: Any) -> None:
        self._read, self._write = os.pipe()
        server._core.on_request_done.append(lambda ticket: os.write(self._write, b"."))

    def wait(self, count: int = 1) -> None:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while count:
            readable, _, _ = select.select([self._read], [], [], deadline - time.monotonic())
            assert readable, f"{count} request(s) did not finish"
            count -= len(os.read(self._read, count))

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


@contextmanager
def requests_done(server: Any) -> Iterator[RequestsDone]:
    done = RequestsDone(server)
    try:
        yield done
    finally:
        done.close()


# -- access lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "loop"), with_loops(IP_KINDS))
def test_access_lists_judge_every_connection_and_datagram(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = make_server(harness, loop, allow=["127.0.0.0/29"], deny=[BOB])
    if kind.is_prefork:
        server.workers = 2  # the lists are the same in every worker
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for source in (BOB, STRANGER):
            with connect_from(kind, server, source) as refused:
                assert_refused(kind, refused)
        with connect_from(kind, server, ALICE) as admitted:
            assert admitted.exchange(b"hello\n") == b"hello\n"
        assert_rejected(server, kind, {"denied": 1, "not_allowed": 1})


@pytest.mark.parametrize(("kind", "loop"), with_loops(UNIX_KINDS))
def test_unix_clients_pass_ip_lists_and_are_not_counted(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    # No IP address to judge or key by: the socket file's permissions are the control.
    per_client = {"max_connections_per_client": 1} if kind.is_stream else {}
    server = make_server(
        harness, loop, allow=["192.0.2.0/24"], client_rate=SLOW_RATE, client_burst=1, **per_client
    )
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for i in range(3):
            with harness.connect(server) as client:
                assert client.exchange(b"%d\n" % i) == b"%d\n" % i
        assert_rejected(server, kind, {})


# -- per-client connection limit ---------------------------------------------------------------


def holds_one_connection_at_a_time(kind: Kind) -> bool:
    """One connection is served at a time (the loop runs the handler, a worker too)."""
    return kind.mode in ("sync", "prefork")


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_IP_KINDS))
def test_connections_per_client_are_limited_and_released(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    if holds_one_connection_at_a_time(kind):
        check_release_in_a_one_at_a_time_server(harness, kind, loop)
        return
    server = make_server(harness, loop, echo_lines(kind), max_connections_per_client=2)
    check_limit_and_release(server, kind)


def check_limit_and_release(server: Any, kind: Kind) -> None:
    with requests_done(server) as done, serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with ExitStack() as held:
            first, second = (held.enter_context(connect_from(kind, server, ALICE)) for _ in "12")
            assert first.exchange(b"1\n") == b"1\n"  # admitted, and held open
            assert second.exchange(b"2\n") == b"2\n"
            with connect_from(kind, server, ALICE) as third:
                assert_closed_without_a_reply(third)
            with connect_from(kind, server, BOB) as other:  # another client is unaffected
                assert other.exchange(b"bob\n") == b"bob\n"
                leave(other)
            done.wait()  # BOB's
            leave(first)
            done.wait()  # ALICE's first: released, in whichever process served it
            with connect_from(kind, server, ALICE) as again:
                assert again.exchange(b"3\n") == b"3\n"
                leave(again)
            leave(second)
        assert_rejected(server, kind, {"client_connections": 1})


def check_release_in_a_one_at_a_time_server(harness: Harness, kind: Kind, loop: str | None) -> None:
    """Here a second connection waits in the backlog while the first is served, so the
    limit never refuses; what matters is that each connection's count is released (a
    leak would refuse ALICE's next connection)."""
    server = make_server(harness, loop, echo_lines(kind), max_connections_per_client=1)
    with requests_done(server) as done, serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for i in range(3):
            with connect_from(kind, server, ALICE) as client:
                assert client.exchange(b"%d\n" % i) == b"%d\n" % i
                leave(client)
            done.wait()
        assert_rejected(server, kind, {})
    if not kind.is_prefork:  # a worker's table lived in the worker
        assert server.client_limits.connections.clients == 0


class PreforkThreadPoolTCPServer(PreforkMixIn, sockserve.ThreadPoolMixIn, sockserve.TCPServer):
    """What ``sockserve serve --mode prefork`` builds: processes of pooled threads."""


def test_connections_per_client_in_a_prefork_worker_of_threads() -> None:
    server = PreforkThreadPoolTCPServer(
        ("127.0.0.1", 0), EchoLines, workers=1, max_workers=4, max_connections_per_client=2
    )
    check_limit_and_release(server, Kind("tcp", "prefork"))


@pytest.mark.parametrize(("kind", "loop"), with_loops([Kind("tcp", "threading")]))
def test_a_refusal_at_capacity_releases_the_client_count(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = make_server(
        harness,
        loop,
        EchoLines,
        max_connections=1,
        overload_policy="reject",
        max_connections_per_client=1,
    )
    with requests_done(server) as done, serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with connect_from(kind, server, ALICE) as holder:
            assert holder.exchange(b"a\n") == b"a\n"
            with connect_from(kind, server, BOB) as refused:  # counted, then at capacity
                assert_closed_without_a_reply(refused)
            leave(holder)
        done.wait()
        with connect_from(kind, server, BOB) as bob:  # BOB's count was handed back
            assert bob.exchange(b"b\n") == b"b\n"
            leave(bob)
        assert server.stats().rejected == {"max_connections": 1}
    assert server.client_limits.connections.clients == 0


# -- per-client rate ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "loop"), with_loops(IP_KINDS))
def test_client_rate_allows_a_burst_then_refuses(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = make_server(harness, loop, client_rate=SLOW_RATE, client_burst=3)
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for i in range(3):
            with connect_from(kind, server, ALICE) as client:
                assert client.exchange(b"%d\n" % i) == b"%d\n" % i
        with connect_from(kind, server, ALICE) as fourth:
            assert_refused(kind, fourth)
        with connect_from(kind, server, BOB) as other:  # BOB has a bucket of his own
            assert other.exchange(b"bob\n") == b"bob\n"
        assert_rejected(server, kind, {"client_rate": 1})


# -- where the checks sit: after the preludes, so behind PROXY on the real client -------------


class ClaimedAddress:
    """A prelude standing in for PROXY: the client's first line names the client it speaks
    for (``FOR 127.0.0.2``), and the handler sees that address."""

    name = "claimed"
    timeout = 5.0

    def start(self, request: Any, client_address: Any) -> ClaimedAddressRun:
        return ClaimedAddressRun(request)


class ClaimedAddressRun:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.line = bytearray()

    def advance(self) -> str | PreludeDone:
        while not self.line.endswith(b"\n"):
            try:
                byte = self.sock.recv(1)  # a byte at a time: never past the line
            except BlockingIOError:
                return WANT_READ
            if not byte:
                return PreludeDone(self.sock, ("0.0.0.0", 0), {})
            self.line += byte
        host = self.line.removeprefix(b"FOR ").strip().decode()
        return PreludeDone(self.sock, (host, 4242), {})


@pytest.mark.parametrize(
    ("kind", "loop"), with_loops([Kind("tcp", "threading"), Kind("tcp", "async")])
)
def test_checks_judge_the_client_the_preludes_reported(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = make_server(harness, loop, allow=[ALICE])
    server.add_prelude(ClaimedAddress())
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with connect_from(kind, server, ALICE) as proxy_for_bob:
            proxy_for_bob.send(f"FOR {BOB}\n".encode())
            assert_closed_without_a_reply(proxy_for_bob)
        with connect_from(kind, server, BOB) as proxy_for_alice:
            proxy_for_alice.send(f"FOR {ALICE}\n".encode())
            assert proxy_for_alice.exchange(b"hi\n") == b"hi\n"
        assert server.stats().rejected == {"not_allowed": 1}


# -- checks a user adds, IPv6 ------------------------------------------------------------------


def test_a_user_can_add_the_checks_themselves() -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), EchoLines)
    server.add_admission_check(AccessCheck(deny=[BOB]))
    per_client = ConnectionsPerClient(1)
    server.add_admission_check(per_client)
    kind = Kind("tcp", "threading")
    with requests_done(server) as done, serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with connect_from(kind, server, BOB) as bob:
            assert_closed_without_a_reply(bob)
        with connect_from(kind, server, ALICE) as alice:
            assert alice.exchange(b"a\n") == b"a\n"
            assert per_client.held((ALICE, 1)) == 1
            with connect_from(kind, server, ALICE) as second:
                assert_closed_without_a_reply(second)
            leave(alice)
        done.wait()
        assert server.stats().rejected == {"denied": 1, "client_connections": 1}
    assert per_client.clients == 0


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1)")


@needs_ipv6
@pytest.mark.parametrize("server_class", [sockserve.ThreadingTCPServer, sockserve.AsyncTCPServer])
def test_ipv6_clients_are_judged_and_counted(server_class: Any) -> None:
    handler = AsyncEchoLines if server_class is sockserve.AsyncTCPServer else EchoLines
    kind = Kind("tcp", "async" if server_class is sockserve.AsyncTCPServer else "threading")
    denying = server_class(("::1", 0), handler, deny=["::1/128"])
    with serve_in_thread(denying, stop_timeout=STOP_TIMEOUT):
        with connect_from(kind, denying, "::1") as client:
            assert_closed_without_a_reply(client)
        assert denying.stats().rejected == {"denied": 1}
    limiting = server_class(("::1", 0), handler, allow=["::1"], max_connections_per_client=1)
    with requests_done(limiting) as done, serve_in_thread(limiting, stop_timeout=STOP_TIMEOUT):
        with connect_from(kind, limiting, "::1") as first:
            assert first.exchange(b"v6\n") == b"v6\n"
            with connect_from(kind, limiting, "::1") as second:  # the same /64
                assert_closed_without_a_reply(second)
            leave(first)
        done.wait()
        assert limiting.stats().rejected == {"client_connections": 1}


# -- bounded memory under many clients ---------------------------------------------------------

#: Distinct source addresses in the suite's flood (bench/client_table_flood.py runs 100,000).
FLOOD_CLIENTS = 5_000
FLOOD_TABLE = 1_000


def flood_address(i: int) -> str:
    """The i-th of 65,536 addresses in 127.1.0.0/16 (none of the named clients)."""
    return f"127.1.{i >> 8}.{i & 255}"


@pytest.mark.parametrize(("kind", "loop"), with_loops([Kind("tcp", "async")])[:1])
def test_tables_stay_bounded_under_thousands_of_clients(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = make_server(
        harness,
        loop,
        AsyncEchoLines,
        client_rate=SLOW_RATE,
        client_burst=1,
        client_rate_max_clients=FLOOD_TABLE,
        max_connections_per_client=2,
    )
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        for i in range(FLOOD_CLIENTS):
            with connect_from(kind, server, flood_address(i)):
                pass  # connect and leave: a new client each time
        with connect_from(kind, server, ALICE) as client:  # served after the flood
            assert client.exchange(b"still here\n") == b"still here\n"
            leave(client)
        assert server._core.limiter.wait_idle(time.monotonic() + CLIENT_TIMEOUT)
        tables = server.client_limits.tables()
        stats = server.stats()
    assert stats.accepted == FLOOD_CLIENTS + 1
    assert stats.rejected == {}
    assert tables == {
        "rate_clients": FLOOD_TABLE,  # every bucket still owes tokens: only evictions free room
        "rate_evictions": FLOOD_CLIENTS + 1 - FLOOD_TABLE,
        "connection_clients": 0,
    }
