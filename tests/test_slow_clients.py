"""Slow and greedy clients are cut by their limit, counted, and nobody else notices.

For each limit (``idle_timeout``, ``connection_deadline``, ``min_transfer_rate``,
``write_timeout``) and each mode (threads, pool, inline, async on both loops, forking,
and pre-fork with single-threaded, thread-pool and async workers), a faulty client from
``sockserve.testing`` breaks it while a normal client keeps asking: the faulty
connection ends within the limit (plus a sweep), is counted once in ``stats().peer_faults``
by kind (a forked child's exit status carries it to the parent; pre-fork: the master's
combined stats), is logged once (per process: a forked child or a worker is an episode
of its own), and every normal exchange succeeds. The judge itself
(``slow_clients.ConnectionVerdict``) is tested on made-up kernel readings, and the
command line's options on their own.

Forked children (forking, pre-fork) would keep copies of this process's client sockets:
``forked_clients.clients_of`` makes them let go, as a real client's server would never
have them. Timing: the limits are a few tenths of a second, the clients' pacing is theirs (no sleep
here synchronises anything); the counters are read once the server has stopped (its
request threads joined, its children reaped), so they are final.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import sockserve
from forked_clients import clients_of, server_log
from sockserve.cli import options
from sockserve.slow_clients import ConnectionVerdict, SlowClientLimits, TcpCounters
from sockserve.testing import StreamOutcome, never_read, serve_in_thread, trickle

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns that fork() in a process with threads may deadlock the child; the
    # threads are the test's own (clients, serving thread), and children only serve.
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

#: What the "flood" request makes the handler send, forever, in pieces of this.
FLOOD_CHUNK = b"x" * 65536
#: A request the handler floods in answer to, then enough bytes that some stay unread in
#: the server's kernel when it closes, so that the client sees a reset (never_read).
FLOOD_REQUEST = b"flood\n" + b"." * (256 * 1024) + b"\n"
#: The longest line the handlers accept (for the composition with max_line_length).
LINE_LIMIT = 64
#: Each exchange of the normal client gets this long before it counts as failed.
CLIENT_TIMEOUT = 5.0

#: The limit each test sets, the faulty client that breaks it, and the kind counted.
LIMITS: dict[str, tuple[dict[str, float], Callable[[Any], StreamOutcome], str]] = {
    "idle": ({"idle_timeout": 0.3}, lambda a: trickle(a, b"abc", interval=3.0), "idle_timeout"),
    "deadline": (
        {"connection_deadline": 0.5},
        lambda a: trickle(a, b"a" * 1000, interval=0.05),
        "deadline",
    ),
    "rate": (
        {"min_transfer_rate": 200.0, "min_transfer_window": 0.6},
        lambda a: trickle(a, b"a" * 1000, interval=0.05),  # 20 bytes/s
        "too_slow",
    ),
    "write": (
        {"write_timeout": 0.3},
        lambda a: never_read(a, FLOOD_REQUEST),
        "write_timeout",
    ),
}


class EchoOrFlood(sockserve.StreamRequestHandler):
    max_line_length = LINE_LIMIT
    longest_seen = 0

    def handle(self) -> None:
        for line in self.rfile:
            type(self).longest_seen = max(type(self).longest_seen, len(line.rstrip(b"\n")))
            if line == b"flood\n":
                while True:
                    self.wfile.write(FLOOD_CHUNK)
            self.wfile.write(line)


class AsyncEchoOrFlood(sockserve.AsyncStreamRequestHandler):
    max_line_length = LINE_LIMIT

    async def handle(self) -> None:
        async for line in self.reader:
            if line == b"flood\n":
                while True:
                    self.writer.write(FLOOD_CHUNK)
                    await self.writer.drain()
            self.writer.write(line)
            await self.writer.drain()


def _sync(base: type, **kw: Any) -> Callable[..., Any]:
    return partial(base, ("127.0.0.1", 0), EchoOrFlood, **kw)


def _async(loop: str) -> Callable[..., Any]:
    return partial(sockserve.AsyncTCPServer, ("127.0.0.1", 0), AsyncEchoOrFlood, event_loop=loop)


class PreforkPoolTCPServer(sockserve.PreforkMixIn, sockserve.ThreadPoolMixIn, sockserve.TCPServer):
    """Pre-fork workers of threads: the shape ``sockserve serve --workers`` builds."""


class PreforkAsyncTCPServer(sockserve.PreforkMixIn, sockserve.AsyncTCPServer):
    """Pre-fork workers each running an event loop."""


MODES: dict[str, Callable[..., Any]] = {
    "threading": _sync(sockserve.ThreadingTCPServer),
    "pool": _sync(sockserve.ThreadPoolTCPServer, max_workers=4),
    "inline": _sync(sockserve.TCPServer),
    "async-asyncio": _async("asyncio"),
    "async-uvloop": _async("uvloop"),
    "forking": _sync(sockserve.ForkingTCPServer),
    # Single-threaded workers: the faulty client holds one, the other serves the rest.
    "prefork": _sync(sockserve.PreforkTCPServer, workers=2),
    "prefork-pool": _sync(PreforkPoolTCPServer, workers=1, max_workers=4),
    "prefork-async": partial(
        PreforkAsyncTCPServer,
        ("127.0.0.1", 0),
        AsyncEchoOrFlood,
        event_loop="asyncio",
        workers=1,
    ),
}
#: The start of the line a peer-fault episode opens with (``ServingCore.peer_fault_log``).
EPISODE_LINE = "connections ended by the client: "


def exchange(address: Any, payload: bytes) -> bool:
    """One normal request on a fresh connection: True if it was echoed in full."""
    try:
        with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
            return received == payload
    except OSError:
        return False


def normal_client_until(address: Any, done: threading.Event, results: list[bool]) -> None:
    """Exchange lines, one connection each, until ``done`` (and at least five times)."""
    while not done.is_set() or len(results) < 5:
        results.append(exchange(address, b"hello %d\n" % len(results)))


@pytest.fixture
def uvloop_installed() -> None:
    pytest.importorskip("uvloop", reason="the async-uvloop mode needs uvloop installed")


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_the_faulty_connection_is_cut_counted_and_others_are_served(
    mode: str, limit: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if mode == "async-uvloop":
        request.getfixturevalue("uvloop_installed")
    settings, faulty_client, kind = LIMITS[limit]
    server = MODES[mode](**settings)
    done = threading.Event()
    results: list[bool] = []
    log_path = tmp_path / "server.log"
    with server_log(log_path), serve_in_thread(server) as running, clients_of(server):
        address = running.server_address
        normal = threading.Thread(target=normal_client_until, args=(address, done, results))
        normal.start()
        try:
            outcome = faulty_client(address)
        finally:
            done.set()
            normal.join(CLIENT_TIMEOUT * 10)
    stats = server.stats()
    assert outcome.ended in ("eof", "reset"), outcome
    longest = max(settings.values()) + 1.5  # the limit, a sweep, a loaded machine
    assert outcome.elapsed < longest, outcome
    assert stats.peer_faults.get(kind) == 1, stats
    assert results, results
    assert all(results), results
    assert stats.handler_errors == 0, stats
    firsts = [line for line in log_path.read_text().splitlines() if EPISODE_LINE + kind in line]
    assert len(firsts) == 1, firsts  # one faulty connection: one episode, one line
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_max_line_length_and_min_transfer_rate_together(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A fast over-long line is refused by the line limit, a slow one cut by the rate;
    the handler never sees a line over max_line_length; each is logged once."""
    if mode == "async-uvloop":
        request.getfixturevalue("uvloop_installed")
    EchoOrFlood.longest_seen = 0
    server = MODES[mode](min_transfer_rate=200.0, min_transfer_window=0.6)
    log_path = tmp_path / "server.log"
    with server_log(log_path), serve_in_thread(server) as running, clients_of(server):
        address = running.server_address
        too_long = b"y" * (LINE_LIMIT * 4) + b"\n"
        assert not exchange(address, too_long)
        slow = trickle(address, b"z" * (LINE_LIMIT * 4) + b"\n", interval=0.02)
        assert exchange(address, b"fine\n")
    stats = server.stats()
    assert slow.ended in ("eof", "reset"), slow
    assert stats.peer_faults.get("line_too_long", 0) >= 1, stats
    assert stats.peer_faults.get("too_slow", 0) + stats.peer_faults["line_too_long"] == 2, stats
    # (In a forked child the handler's class attribute is the child's: 0 here, as it was.)
    assert EchoOrFlood.longest_seen <= LINE_LIMIT
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    assert 1 <= log_text.count(EPISODE_LINE) <= 2, log_text  # per process, one episode


def test_limits_are_off_by_default_and_checked() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), EchoOrFlood) as server:
        assert server._core.connection_watch is None
    with pytest.raises(sockserve.ConfigurationError, match="idle_timeout"):
        sockserve.TCPServer(("127.0.0.1", 0), EchoOrFlood, idle_timeout=-1)
    with sockserve.UDPServer(("127.0.0.1", 0), EchoOrFlood, idle_timeout=5) as datagrams:
        assert datagrams._core.connection_watch is None  # datagrams have no connection


# -- the judge, on made-up kernel readings --------------------------------------------


def reading(received: int, acked: int = 0, quiet: float = 0.0, unsent: bool = False) -> Any:
    return TcpCounters(received, acked, quiet, unsent)


def test_a_quiet_client_is_idle_not_slow() -> None:
    limits = SlowClientLimits(idle_timeout=5.0, min_transfer_rate=500.0, min_transfer_window=2)
    verdict = ConnectionVerdict(limits, started=0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        assert verdict.judge(now, reading(100, quiet=now)) is None
    breach = verdict.judge(5.0, reading(100, quiet=5.0))
    assert isinstance(breach, sockserve.IdleTimeoutError)


def test_a_trickling_client_is_too_slow_an_answered_one_is_not() -> None:
    limits = SlowClientLimits(min_transfer_rate=500.0, min_transfer_window=2)
    trickler = ConnectionVerdict(limits, started=0.0)
    interactive = ConnectionVerdict(limits, started=0.0)
    breaches = []
    for step in range(1, 6):
        breaches.append(trickler.judge(float(step), reading(step, quiet=0.5)))
        # as slow, but the server answers each request: it is waiting for nobody
        assert interactive.judge(float(step), reading(step, acked=step, quiet=0.5)) is None
    assert any(isinstance(b, sockserve.TransferTooSlowError) for b in breaches)


def test_a_client_that_does_not_read_breaks_the_write_timeout() -> None:
    limits = SlowClientLimits(write_timeout=3.0)
    verdict = ConnectionVerdict(limits, started=0.0)
    assert verdict.judge(1.0, reading(10, acked=1000, unsent=True)) is None
    assert verdict.judge(2.0, reading(10, acked=2000, unsent=True)) is None  # reading
    assert verdict.judge(4.0, reading(10, acked=2000, unsent=True)) is None
    breach = verdict.judge(5.0, reading(10, acked=2000, unsent=True))
    assert isinstance(breach, sockserve.WriteTimeoutError)


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def limit_options() -> dict[str, options.Option]:
    return {
        name: options.BY_NAME[name]
        for name in ("idle-timeout", "connection-deadline", "min-transfer-rate", "write-timeout")
    }


def test_the_command_turns_the_limits_on_and_off(limit_options: dict[str, Any]) -> None:
    for option in limit_options.values():
        assert option.default > 0  # on by default for the command
        assert option.from_text("off") == 0.0
        assert option.from_text("0") == 0.0
        assert option.from_text("2.5") == 2.5
        with pytest.raises(options.OptionValueError):
            option.from_text("-1")
