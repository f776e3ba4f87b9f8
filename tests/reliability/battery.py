"""What every case of the battery shares: modes, clients, the loss ledger, resource counts.

Modes: every server class of the contract suite (``test_contract.ALL_KINDS``), the
async ones once per event loop (asyncio and uvloop). ``STREAM_MODES`` and
``DATAGRAM_MODES`` are pytest parameters ``(kind, loop)`` for the ``harness`` fixture.

Loss: a ``Ledger`` records what each client expected and what came back, and a failing
case prints the first losses as ``<mode> client <c> request <n>: expected ..., got ...``
rather than a bare count.

Forked children (forking modes, pre-fork workers) drop their copies of the test's
clients inside ``clients_of(server)`` (``tests/forked_clients.py``).

Resources: ``Resources.now()`` counts this process's descriptors (``/proc/self/fd``),
threads and child processes; ``settle_to`` waits (bounded) until they are back.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forked_clients import clients_of as clients_of  # (re-exported for the cases)
from forked_clients import server_log as server_log
from sockserve.testing import half_close, send_in_pieces
from sockserve.testing.client_connection import stream_target
from test_contract import ALL_KINDS, Kind

from .protocol import answer, handler_for, request_line

#: Every client socket's and every wait's bound: only a failing case waits this long.
CLIENT_TIMEOUT = 10.0
#: How long resource counts may take to return after a server stopped (threads end
#: just after they signal completion; children are reaped by server_close()).
SETTLE_SECONDS = 5.0
#: Losses printed in a failure message (the count says how many more).
LOSSES_SHOWN = 20

#: Python 3.12+ warns that fork() in a process with threads may deadlock the child; the
#: threads are the test's own (clients, serving thread), and children only run handlers.
FORK_WARNING = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def with_loops(kinds: list[Kind]) -> list[Any]:
    """Each kind once; async kinds once per event loop."""
    params = []
    for kind in kinds:
        for loop in ("asyncio", "uvloop") if kind.is_async else (None,):
            params.append(pytest.param(kind, loop, id=mode_name(kind, loop)))
    return params


def mode_name(kind: Kind, loop: str | None) -> str:
    return kind.name + (f"-{loop}" if loop else "")


STREAM_KINDS = [kind for kind in ALL_KINDS if kind.is_stream]
DATAGRAM_KINDS = [kind for kind in ALL_KINDS if not kind.is_stream]
STREAM_MODES = with_loops(STREAM_KINDS)
DATAGRAM_MODES = with_loops(DATAGRAM_KINDS)
ALL_MODES = STREAM_MODES + DATAGRAM_MODES


def loop_kwargs(loop: str | None) -> dict[str, Any]:
    return {} if loop is None else {"event_loop": loop}


def handler_of(kind: Kind, behaviour: Any = None) -> Any:
    if behaviour is None:
        return handler_for(is_stream=kind.is_stream, is_async=kind.is_async)
    return handler_for(is_stream=kind.is_stream, is_async=kind.is_async, behaviour=behaviour)


# -- the ledger ----------------------------------------------------------------------------


@dataclass
class Loss:
    client: int
    request: str
    expected: bytes
    got: bytes | str

    def describe(self, mode: str) -> str:
        return (
            f"{mode} client {self.client} request {self.request}: "
            f"expected {self.expected!r}, got {self.got!r}"
        )


class Ledger:
    """Expected and received replies of every client of one case, from many threads."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.expected = 0
        self.correct = 0
        self.losses: list[Loss] = []
        self._lock = threading.Lock()

    def check(self, client: int, requests: list[bytes], replies: bytes, tail: bytes = b"") -> None:
        """Compare the replies a connection got with what its requests (and a truncated
        ``tail``) should have brought, in order."""
        wanted = [answer(line) for line in requests] + ([answer(tail)] if tail else [])
        got = replies.splitlines(keepends=True)
        with self._lock:
            self.expected += len(wanted)
            for index, expected in enumerate(wanted):
                reply = got[index] if index < len(got) else "nothing"
                if reply == expected:
                    self.correct += 1
                else:
                    ident = (requests + [tail])[index].split(b" ", 1)[0].decode(errors="replace")
                    self.losses.append(Loss(client, ident, expected, reply))
            for extra in got[len(wanted) :]:
                self.losses.append(Loss(client, "(none)", b"", extra))

    def lose(self, client: int, request: str, expected: bytes, got: bytes | str) -> None:
        with self._lock:
            self.expected += 1
            self.losses.append(Loss(client, request, expected, got))

    def count_correct(self) -> None:
        with self._lock:
            self.expected += 1
            self.correct += 1

    @property
    def lost(self) -> int:
        return self.expected - self.correct

    def report(self) -> str:
        shown = [loss.describe(self.mode) for loss in self.losses[:LOSSES_SHOWN]]
        more = len(self.losses) - len(shown)
        return "\n".join(
            [f"{self.mode}: {self.lost} of {self.expected} replies lost or wrong:", *shown]
            + ([f"... and {more} more"] if more > 0 else [])
        )

    def assert_nothing_lost(self) -> None:
        assert not self.losses, self.report()
        assert self.correct == self.expected, self.report()


# -- clients -------------------------------------------------------------------------------


def payload(rng: random.Random) -> bytes:
    """A random printable payload of 1-200 bytes (no space at the start, no newline)."""
    size = rng.randint(1, 200)
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(size))


def connect_stream(address: Any) -> socket.socket:
    """A connected stream socket (TCP or Unix, by the address) with the client timeout."""
    family, target = stream_target(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def stream_client(
    address: Any, client: int, requests: int, ledger: Ledger, *, seed: int, batch: int = 8
) -> None:
    """``requests`` requests over connections of 1-``batch`` pipelined requests each, sent
    in 1-64-byte pieces; one connection in four ends with a truncated request."""
    rng = random.Random(seed)
    number = 0
    while number < requests:
        count = min(rng.randint(1, batch), requests - number)
        lines = [request_line(client, number + i, payload(rng)) for i in range(count)]
        number += count
        truncated = rng.random() < 0.25
        if truncated:
            tail = request_line(client, number, payload(rng))[: rng.randint(1, 40)]
            outcome = half_close(address, b"".join(lines) + tail, timeout=CLIENT_TIMEOUT)
            ledger.check(client, lines, outcome.received, tail)
        else:
            expected = sum(len(answer(line)) for line in lines)
            outcome = send_in_pieces(
                address,
                b"".join(lines),
                piece_size=rng.randint(1, 64),
                reply_bytes=expected,
                timeout=CLIENT_TIMEOUT,
            )
            ledger.check(client, lines, outcome.received)


def datagram_client(
    family: int,
    address: Any,
    bind_to: Any,
    client: int,
    requests: int,
    ledger: Ledger,
    *,
    seed: int,
) -> None:
    """``requests`` datagrams, each answered before the next is sent (no retries)."""
    rng = random.Random(seed)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            sock.bind(bind_to)
            for number in range(requests):
                line = request_line(client, number, payload(rng))
                sock.sendto(line, address)
                try:
                    reply = sock.recv(65536)
                except TimeoutError:
                    ledger.lose(client, f"{client}.{number}", answer(line), "no reply in time")
                    continue
                ledger.check(client, [line], reply)
    finally:
        if isinstance(bind_to, str) and os.path.exists(bind_to):
            os.unlink(bind_to)  # the Unix client's socket file: free for the next round


def datagram_bind_address(kind: Kind, short_dir: Path, name: str) -> Any:
    return str(short_dir / name) if kind.is_unix else ("127.0.0.1", 0)


# -- resources -----------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Live (or zombie) child processes of ``pid``, from /proc (every thread's list)."""
    children: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.update(int(child) for child in text.split())
    return children


@dataclass(frozen=True)
class Resources:
    descriptors: int
    threads: int
    children: frozenset[int]

    @classmethod
    def now(cls) -> Resources:
        return cls(
            descriptors=len(os.listdir("/proc/self/fd")),
            threads=threading.active_count(),
            children=frozenset(children_of(os.getpid())),
        )

    @classmethod
    def before_serving(cls, loop: str | None) -> Resources:
        """The counts to come back to. libuv opens one process-wide pipe (its signal
        pipe) with the first uvloop loop, and keeps it: measured, the first uvloop server
        of a process leaves 2 descriptors, the next ones none. So that pipe is made first.
        """
        if loop == "uvloop":
            import uvloop

            uvloop.new_event_loop().close()
        return cls.now()

    def settle_to(self, before: Resources) -> Resources:
        """Wait (bounded, polling /proc: no event announces a thread's or child's end)
        until the counts are back to ``before``; the last counts seen."""
        deadline = time.monotonic() + SETTLE_SECONDS
        now = self
        while now != before and time.monotonic() < deadline:
            time.sleep(0.01)
            now = Resources.now()
        return now

    def describe(self) -> str:
        return f"{self.descriptors} fds, {self.threads} threads, {len(self.children)} children"


def assert_back_to(before: Resources, mode: str) -> Resources:
    after = Resources.now().settle_to(before)
    assert after == before, f"{mode}: leaked: before {before.describe()}, after {after.describe()}"
    return after


# -- logs ----------------------------------------------------------------------------------


def concurrency_by_pid(path: Path) -> dict[int, int]:
    """The most requests each process had running at once, from a ``record_to`` file."""
    running: dict[int, int] = {}
    peak: dict[int, int] = {}
    if not path.exists():
        return peak
    for line in path.read_text().splitlines():
        pid_text, sign, _ = line.split(" ", 2)
        pid = int(pid_text)
        running[pid] = running.get(pid, 0) + (1 if sign == "+" else -1)
        peak[pid] = max(peak.get(pid, 0), running[pid])
    return peak


def requests_seen(path: Path) -> list[int]:
    """The request numbers the server started, from a ``record_to`` file."""
    if not path.exists():
        return []
    return [
        int(line.split(" ")[2])
        for line in path.read_text().splitlines()
        if line.split(" ")[1] == "+"
    ]


# -- other processes -----------------------------------------------------------------------


def session_members(session: int) -> set[int]:
    """Every process (zombies too) whose session id is ``session``."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session:  # after "pid (comm)": state ppid pgrp session
            members.add(int(entry))
    return members


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/<pid>/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` (state only /proc shows: no event announces it) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)
