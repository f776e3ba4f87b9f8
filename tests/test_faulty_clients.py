"""sockserve.testing's faulty clients, pointed at real sockserve servers.

Each client must report what the server really did: the reply it read, how the server
ended the connection (``eof``, ``reset``, ``open``, ``refused``) and when. Handlers that
need to tell the test what they saw put it on a queue the test reads with a timeout; no
test sleeps to synchronise. Timing asserts are one-sided where load could stretch them
(at least the server's timeout, well under the client's deadline).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import socket
import struct
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import sockserve
from loopback import has_ipv6_loopback
from sockserve.pytest_plugin import sockserve_serve  # noqa: F401  (the fixture, for the doc)
from sockserve.testing import (
    ClientConnection,
    ClientsDidNotFinish,
    DatagramOutcome,
    StreamOutcome,
    flood_datagrams,
    half_close,
    never_read,
    oversized_datagram,
    reset_mid_reply,
    reset_mid_request,
    run_concurrently,
    send_in_pieces,
    serve_in_thread,
    trickle,
)
from unix_paths import short_directory

#: Every plain client socket's timeout, and every queue wait: only a failing test waits.
CLIENT_TIMEOUT = 10.0
#: The faulty clients' deadline in these tests: far above a loopback exchange.
DEADLINE = 3.0
#: The read/write timeout of the handlers that have one (``StreamRequestHandler.timeout``).
HANDLER_TIMEOUT = 0.5

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="needs an IPv6 loopback")


# -- handlers ---------------------------------------------------------------------------


class LineEcho(sockserve.StreamRequestHandler):
    """Echo one line, then let the server close the connection."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class TimedLineEcho(LineEcho):
    timeout = HANDLER_TIMEOUT


class Reporting(sockserve.StreamRequestHandler):
    """Tells the test, through ``seen``, what ended its work: ``"done"`` or an error name."""

    seen: queue.Queue[str]

    def handle(self) -> None:
        try:
            self.serve()
        except OSError as exc:  # what the faulty client made happen, for the test to check
            self.seen.put(type(exc).__name__)
        else:
            self.seen.put("done")

    def serve(self) -> None:
        raise NotImplementedError


class ReportingEcho(Reporting):
    def serve(self) -> None:
        line = self.rfile.readline()
        if not line.endswith(b"\n"):
            raise ConnectionAbortedError("the client left mid-line")
        self.wfile.write(line)


class BigReply(Reporting):
    """Answers ``go`` with 64 MiB, more than any socket buffer holds; echoes other lines."""

    timeout = HANDLER_TIMEOUT

    def serve(self) -> None:
        line = self.rfile.readline()
        if line != b"go\n":
            self.wfile.write(line)
            return
        chunk = b"r" * 65536
        for _ in range(1024):
            self.wfile.write(chunk)


class AbortingHandler(sockserve.StreamRequestHandler):
    """Reads one line, then aborts the connection with RST."""

    def handle(self) -> None:
        self.rfile.readline()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class Upper(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


# -- servers ----------------------------------------------------------------------------

STREAM_FAMILIES = [
    "ipv4",
    pytest.param("ipv6", marks=needs_ipv6),
    pytest.param("unix", marks=needs_unix),
]


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    with short_directory(tmp_path) as directory:
        yield directory


def stream_server(family: str, handler: type, directory: Path) -> Any:
    if family == "unix":
        return sockserve.ThreadingUnixStreamServer(str(directory / "s.sock"), handler)
    if family == "ipv6":
        return sockserve.ThreadingTCPServer(("::1", 0), handler)
    return sockserve.ThreadingTCPServer(("127.0.0.1", 0), handler)


def datagram_server(family: str, handler: type, directory: Path) -> Any:
    if family == "unix":
        return sockserve.ThreadingUnixDatagramServer(str(directory / "d.sock"), handler)
    if family == "ipv6":
        return sockserve.ThreadingUDPServer(("::1", 0), handler)
    return sockserve.ThreadingUDPServer(("127.0.0.1", 0), handler)


def reporting(handler: type[Reporting]) -> tuple[type[Reporting], queue.Queue[str]]:
    """A subclass of ``handler`` with its own queue (no state shared between tests)."""
    seen: queue.Queue[str] = queue.Queue()
    return type(handler.__name__, (handler,), {"seen": seen}), seen


def assert_served(address: Any) -> None:
    """A well-behaved client still gets its echo: the server survived."""
    outcome = half_close(address, b"still there?\n", timeout=DEADLINE)
    assert (outcome.received, outcome.ended) == (b"still there?\n", "eof")


# -- half_close, send_in_pieces ---------------------------------------------------------


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_half_close_gets_the_whole_echo_then_eof(family: str, socket_dir: Path) -> None:
    with serve_in_thread(stream_server(family, LineEcho, socket_dir)) as server:
        outcome = half_close(server.server_address, b"hello\n", timeout=DEADLINE)
    assert outcome == StreamOutcome(
        sent=6, received=b"hello\n", ended="eof", elapsed=outcome.elapsed
    )
    assert 0 < outcome.elapsed < DEADLINE


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("piece_size", [1, 3])
def test_send_in_pieces_gets_the_full_reply(family: str, piece_size: int, socket_dir: Path) -> None:
    request = b"a request sent in pieces\n"
    with serve_in_thread(stream_server(family, LineEcho, socket_dir)) as server:
        outcome = send_in_pieces(
            server.server_address, request, piece_size=piece_size, timeout=DEADLINE
        )
    assert (outcome.sent, outcome.received, outcome.ended) == (len(request), request, "eof")


def test_reply_bytes_stops_reading_and_reports_open() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        outcome = send_in_pieces(server.server_address, b"abcdef\n", reply_bytes=3)
    assert outcome.received == b"abc"
    assert outcome.ended == "open"


def test_piece_size_and_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="piece_size"):
        send_in_pieces(("127.0.0.1", 9), b"x", piece_size=0)
    with pytest.raises(ValueError, match="timeout"):
        half_close(("127.0.0.1", 9), b"x", timeout=0)


# -- resets -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_reset_mid_request_does_not_break_the_server(family: str, socket_dir: Path) -> None:
    handler, seen = reporting(ReportingEcho)
    with serve_in_thread(stream_server(family, handler, socket_dir)) as server:
        outcome = reset_mid_request(server.server_address, b"HEL", timeout=DEADLINE)
        # TCP: the RST fails the handler's read. A Unix socket has no RST: end of stream.
        expected = "ConnectionAbortedError" if family == "unix" else "ConnectionResetError"
        assert seen.get(timeout=CLIENT_TIMEOUT) == expected
        assert_served(server.server_address)
    assert (outcome.sent, outcome.received, outcome.ended) == (3, b"", "open")


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_reset_mid_reply_fails_the_servers_write(family: str, socket_dir: Path) -> None:
    handler, seen = reporting(BigReply)
    with serve_in_thread(stream_server(family, handler, socket_dir)) as server:
        outcome = reset_mid_reply(server.server_address, b"go\n", read_bytes=5, timeout=DEADLINE)
        # The write fails at once (not at the handler's timeout): the client aborted.
        assert seen.get(timeout=CLIENT_TIMEOUT) in {"ConnectionResetError", "BrokenPipeError"}
        assert_served(server.server_address)
    assert (outcome.sent, outcome.received, outcome.ended) == (3, b"rrrrr", "open")


def test_a_server_that_aborts_is_reported_as_reset() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), AbortingHandler)) as s:
        outcome = half_close(s.server_address, b"hello\n", timeout=DEADLINE)
    assert (outcome.received, outcome.ended) == (b"", "reset")


# -- trickle ----------------------------------------------------------------------------


def test_trickle_slower_than_the_handler_timeout_is_cut_off() -> None:
    request = b"slowloris\n"
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), TimedLineEcho)
    with serve_in_thread(server):
        outcome = trickle(server.server_address, request, interval=1.0, timeout=DEADLINE)
    # The handler's read times out 0.5 s after its last byte; the next comes at 1.0 s.
    assert outcome.ended in {"eof", "reset"}
    assert HANDLER_TIMEOUT * 0.9 <= outcome.elapsed < DEADLINE
    assert outcome.sent < len(request)
    assert outcome.received == b""


def test_trickle_faster_than_the_handler_timeout_is_served() -> None:
    """A per-read timeout does not stop slowloris: every byte resets the clock."""
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), TimedLineEcho)
    with serve_in_thread(server):
        outcome = trickle(server.server_address, b"slow\n", interval=0.05, timeout=DEADLINE)
    assert (outcome.received, outcome.ended) == (b"slow\n", "eof")
    assert outcome.elapsed >= 4 * 0.05


def test_trickle_against_a_patient_server_is_open_at_the_deadline() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        outcome = trickle(server.server_address, b"x" * 100 + b"\n", interval=0.2, timeout=0.5)
    assert outcome.ended == "open"
    assert 0.5 <= outcome.elapsed < DEADLINE
    assert 1 <= outcome.sent < 100


# -- never_read -------------------------------------------------------------------------


def test_never_read_is_ended_by_the_servers_write_timeout() -> None:
    handler, seen = reporting(BigReply)
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), handler)) as server:
        # Enough requests that the server has unread bytes when it gives up: its kernel
        # then answers with RST, which the client sees without reading.
        outcome = never_read(server.server_address, b"go\n", repeat=20_000, timeout=DEADLINE)
        assert seen.get(timeout=CLIENT_TIMEOUT) == "TimeoutError"
    assert outcome.ended == "reset"
    assert HANDLER_TIMEOUT * 0.9 <= outcome.elapsed < DEADLINE
    assert (outcome.sent, outcome.received) == (60_000, b"")


@pytest.mark.skipif(not hasattr(select, "POLLRDHUP"), reason="FIN without reading: Linux")
def test_never_read_sees_a_clean_close_after_a_short_reply() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        outcome = never_read(server.server_address, b"short\n", timeout=DEADLINE)
    assert (outcome.sent, outcome.received, outcome.ended) == (6, b"", "eof")
    assert outcome.elapsed < DEADLINE


# -- refused, deadline, sockets closed --------------------------------------------------


def test_nothing_listening_is_reported_as_refused(socket_dir: Path) -> None:
    with socket.socket() as bound_only:  # bound, never listening: the port refuses
        bound_only.bind(("127.0.0.1", 0))
        outcome = half_close(bound_only.getsockname(), b"hello\n")
    assert (outcome.sent, outcome.received, outcome.ended) == (0, b"", "refused")
    if hasattr(socket, "AF_UNIX"):
        assert half_close(str(socket_dir / "nothing.sock"), b"x").ended == "refused"


def test_the_deadline_bounds_a_server_that_never_answers() -> None:
    release = threading.Event()

    class Stuck(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            release.wait(CLIENT_TIMEOUT)

    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Stuck)) as server:
        try:
            outcome = half_close(server.server_address, b"anyone?\n", timeout=0.3)
        finally:
            release.set()
    assert (outcome.received, outcome.ended) == (b"", "open")
    assert 0.3 <= outcome.elapsed < DEADLINE


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc (Linux)")
def test_no_client_leaves_a_socket_open() -> None:
    before = len(os.listdir("/proc/self/fd"))
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), TimedLineEcho)
    with serve_in_thread(server):
        address = server.server_address
        half_close(address, b"a\n")
        send_in_pieces(address, b"b\n")
        trickle(address, b"c\n", interval=0.01)
        reset_mid_request(address, b"d")
        reset_mid_reply(address, b"e\n")
        never_read(address, b"f\n", timeout=0.2)
    with socket.socket() as bound_only:
        bound_only.bind(("127.0.0.1", 0))
        half_close(bound_only.getsockname(), b"refused\n")
    assert len(os.listdir("/proc/self/fd")) == before


# -- datagrams --------------------------------------------------------------------------

DATAGRAM_FAMILIES = STREAM_FAMILIES


@pytest.mark.parametrize("family", DATAGRAM_FAMILIES)
def test_flood_datagrams_sends_them_all_and_the_server_answers(
    family: str, socket_dir: Path
) -> None:
    with serve_in_thread(datagram_server(family, Upper, socket_dir)) as server:
        outcome = flood_datagrams(
            server.server_address, b"flood", count=100, replies=100, timeout=DEADLINE
        )
        after = flood_datagrams(server.server_address, b"after", count=1, replies=1)
    assert (outcome.sent, outcome.sent_bytes, outcome.error) == (100, 500, None)
    assert set(outcome.replies) == {b"FLOOD"}
    if family == "unix":  # a Unix datagram socket never drops: the sender waits instead
        assert len(outcome.replies) == 100
    assert after.replies == (b"AFTER",)


@needs_unix
def test_a_unix_flood_that_reads_nothing_still_ends_by_its_deadline(socket_dir: Path) -> None:
    with serve_in_thread(datagram_server("unix", Upper, socket_dir)) as server:
        outcome = flood_datagrams(server.server_address, b"x", count=10_000, timeout=0.5)
        after = flood_datagrams(server.server_address, b"after", count=1, replies=1)
    assert outcome.error == "deadline" or outcome.sent == 10_000
    assert outcome.replies == ()
    assert after.replies == (b"AFTER",)


def test_an_oversized_udp_datagram_is_refused_by_the_senders_kernel() -> None:
    with serve_in_thread(sockserve.ThreadingUDPServer(("127.0.0.1", 0), Upper)) as server:
        outcome = oversized_datagram(server.server_address, 70_000)
    assert outcome == DatagramOutcome(
        sent=0, sent_bytes=0, replies=(), error="EMSGSIZE", elapsed=outcome.elapsed
    )


class SmallUDPServer(sockserve.ThreadingUDPServer):
    max_packet_size = 1024


@pytest.mark.parametrize("family", DATAGRAM_FAMILIES)
def test_an_oversized_datagram_is_dropped_and_the_server_goes_on(
    family: str, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if family == "unix":  # beyond sockserve's 65,535: only a Unix datagram carries it
        server, size = datagram_server("unix", Upper, socket_dir), 100_000
    else:
        host = "::1" if family == "ipv6" else "127.0.0.1"
        server, size = SmallUDPServer((host, 0), Upper), 2000
    with caplog.at_level(logging.WARNING, logger="sockserve"), serve_in_thread(server):
        outcome = oversized_datagram(server.server_address, size)
        after = flood_datagrams(server.server_address, b"after", count=1, replies=1)
    assert (outcome.sent, outcome.sent_bytes, outcome.error) == (1, size, None)
    assert after.replies == (b"AFTER",)  # answered, and the oversized one was not
    assert server.stats().rejected == {"datagram_too_large": 1}
    assert any("over max_packet_size" in r.getMessage() for r in caplog.records)


# -- run_concurrently -------------------------------------------------------------------


def test_normal_clients_are_served_while_attackers_trickle() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        address = server.server_address
        attack = partial(trickle, address, b"x" * 100 + b"\n", interval=0.2, timeout=1.0)
        normal = partial(half_close, address, b"normal\n", timeout=DEADLINE)
        outcomes = run_concurrently([attack] * 4 + [normal] * 3, timeout=2 * DEADLINE)
    assert [o.ended for o in outcomes] == ["open"] * 4 + ["eof"] * 3
    assert [o.received for o in outcomes[4:]] == [b"normal\n"] * 3
    assert all(o.elapsed < 1.0 for o in outcomes[4:])  # served while the attack went on


def test_run_concurrently_keeps_order_and_starts_everything_together() -> None:
    started = threading.Barrier(3)  # passes only if all three run at the same time

    def call(value: int) -> int:
        started.wait(CLIENT_TIMEOUT)
        return value

    assert run_concurrently([partial(call, n) for n in (3, 1, 2)]) == [3, 1, 2]
    assert run_concurrently([]) == []


def test_run_concurrently_reports_every_failure_in_order() -> None:
    def fail(message: str) -> None:
        raise RuntimeError(message)

    with pytest.raises(ExceptionGroup) as caught:
        run_concurrently([partial(fail, "first"), lambda: None, partial(fail, "second")])
    assert [str(e) for e in caught.value.exceptions] == ["first", "second"]


def test_run_concurrently_times_out_on_a_call_without_a_deadline() -> None:
    release = threading.Event()
    try:
        with pytest.raises(ClientsDidNotFinish, match=r"calls \[1\] of 2"):
            run_concurrently([lambda: None, partial(release.wait, CLIENT_TIMEOUT)], timeout=0.2)
    finally:
        release.set()


# -- your own client from ClientConnection ----------------------------------------------


def test_client_connection_composes_a_custom_client() -> None:
    """Two requests on one connection, the second cut off by RST after a pause."""
    handler, seen = reporting(ReportingEcho)
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), handler)) as server:
        with ClientConnection(server.server_address, timeout=DEADLINE) as connection:
            assert connection.send(b"one\n")
            connection.read(reply_bytes=4)
            connection.watch(0.05)  # the server closes after one line: seen while waiting
            outcome = connection.outcome()
        assert seen.get(timeout=CLIENT_TIMEOUT) == "done"
    assert (outcome.received, outcome.ended) == (b"one\n", "eof")


# -- the documentation's example runs ---------------------------------------------------


def documented_example() -> str:
    """The first ```python block of the "Faulty clients" section of docs/testing.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Faulty clients\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "docs/testing.md has no python example under 'Faulty clients'"
    return str(blocks[0])


def test_the_documented_example_runs(request: pytest.FixtureRequest) -> None:
    """Its tests run here as pytest would run them, the fixture included."""
    namespace: dict[str, Any] = {"__name__": "doc_example"}
    exec(compile(documented_example(), str(DOC), "exec"), namespace)
    tests = {name: f for name, f in namespace.items() if name.startswith("test_")}
    assert tests, "the example defines no test"
    for test in tests.values():
        arguments = test.__code__.co_varnames[: test.__code__.co_argcount]
        test(*(request.getfixturevalue(argument) for argument in arguments))
