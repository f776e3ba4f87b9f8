"""Slow and greedy clients beside normal ones: cut by their limit, normal clients 100%.

Every stream mode of the battery serves the checksum protocol with all the slow-client
limits on (``slow_clients.py``) while, beside normal clients (the integrity client:
pipelined, in pieces, some truncated), attackers hold connections open:

- slowloris, three ways: a client that sends half a request and goes quiet
  (``idle_timeout``), one that trickles a byte every 50 ms (``min_transfer_rate``), and
  an interactive one that never stops asking (``connection_deadline``);
- a client that asks for a 4 MiB reply and never reads it (``write_timeout``).

On a Unix socket the kernel keeps no TCP counters, so only ``connection_deadline``
applies there: its attackers are the trickler and the non-reader, both cut by the
deadline (the idle and interactive ones would only repeat that).

Each attacker's connection must be ended by the server within its limit (plus a sweep
and a loaded machine's slack; where requests are served one at a time, inline and the
two single-threaded pre-fork workers, plus the limits of attackers served before it),
be counted once in ``stats().peer_faults`` under its limit's kind (forking: through the
child's exit status; pre-fork: the master's combined stats), and be logged as one
episode per process (an in-process server logs its first fault and counts the rest; a
forked child or worker is a process of its own). Every normal reply must be correct,
and the process's descriptors, threads and children must come back.

Time: the modes run at once, each on its own server, so the case costs about the
slowest mode's attackers (the serial Unix modes': two deadlines), not their sum.

Figure per mode: attackers cut by kind and how long each took; normal replies correct.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sockserve.testing import StreamOutcome, never_read, run_concurrently, serve_in_thread, trickle
from test_contract import Harness, Kind

from .battery import (
    CLIENT_TIMEOUT,
    FORK_WARNING,
    STREAM_MODES,
    Ledger,
    Resources,
    assert_back_to,
    clients_of,
    handler_of,
    loop_kwargs,
    mode_name,
    server_log,
    stream_client,
    wait_until,
)
from .figures import record_figure
from .protocol import request_line

pytestmark = FORK_WARNING

#: The limits every TCP server gets: short, so the case is quick, and apart enough that
#: a sweep late by a loaded machine still names the right one (the rate's verdict comes
#: at about one window, well before the idle and deadline limits). idle_timeout is the
#: longest because it also ends a *normal* connection that sits still that long (the
#: trade-off in slow_clients.py): this process runs every mode's clients at once, and
#: with 0.5 s and 1.0 s a normal client starved of the GIL on this loaded 2-core
#: machine was cut now and then (measured: 3 runs in 5 at 1.0 s; none alone).
LIMITS = {
    "idle_timeout": 2.0,
    "connection_deadline": 2.5,
    "min_transfer_rate": 100.0,
    "min_transfer_window": 0.5,
    "write_timeout": 0.3,
}
#: On a Unix socket only the deadline applies (no TCP counters), so it can be short.
UNIX_LIMITS = {**LIMITS, "connection_deadline": 1.0}
#: Seconds an attacker's connection may outlive its limit, as its client sees it: a
#: sweep (a quarter of the finest limit), the accept, and this process's threads (every
#: mode's clients and servers at once) on a 2-core machine shared with other test runs.
#: Measured here: up to 2.1 s late under that load, 0.1-0.2 s with one mode alone.
SLACK = 3.0
#: The interactive attacker's requests, fixed width so that each piece is one request.
KEEPALIVE_LINE = b"902.%03d keep me\n"
#: The non-reader's request: a 4 MiB reply (``BIG``), then a line longer than any
#: read-ahead, left unread in the server's kernel when it closes: its RST is how the
#: client sees the end without reading (``never_read``). Longer than what an event loop
#: reads ahead (twice the 64 KiB line limit, plus uvloop's 256 KiB read buffer: with
#: 256 KiB here, measured, uvloop sometimes took it all and its close sent a FIN that
#: the full window kept from the client); the client may block sending it, and the
#: server's RST ends that too.
NEVER_READ_REQUEST = request_line(903, 0, b"BIG") + b"903.1 " + b"." * (1024 * 1024) + b"\n"


@dataclass(frozen=True)
class Attacker:
    """One faulty client: what it does, the limit that must end it, and that limit."""

    name: str
    run: Callable[[Any], StreamOutcome]
    kind: str  # the peer-fault kind counted
    limit: float


def attackers_for(kind: Kind) -> list[Attacker]:
    idle = Attacker(
        "idle",
        lambda a: trickle(
            a, b"900.0 half a req", piece_size=8, interval=CLIENT_TIMEOUT, timeout=CLIENT_TIMEOUT
        ),
        "idle_timeout",
        LIMITS["idle_timeout"],
    )
    trickler = Attacker(
        "trickler",  # 20 bytes/s, under the 100 bytes/s asked for
        lambda a: trickle(
            a, request_line(901, 0, b"s" * 200), piece_size=1, interval=0.05, timeout=CLIENT_TIMEOUT
        ),
        "too_slow",
        LIMITS["min_transfer_window"],
    )
    interactive = Attacker(
        "interactive",  # answered every 50 ms: neither idle nor slow, only long
        lambda a: trickle(
            a,
            b"".join(KEEPALIVE_LINE % n for n in range(400)),
            piece_size=len(KEEPALIVE_LINE % 0),
            interval=0.05,
            timeout=CLIENT_TIMEOUT,
        ),
        "deadline",
        LIMITS["connection_deadline"],
    )
    non_reader = Attacker(
        "non-reader",
        lambda a: never_read(a, NEVER_READ_REQUEST, timeout=CLIENT_TIMEOUT),
        "write_timeout",
        LIMITS["write_timeout"],
    )
    if kind.is_unix:  # no TCP counters: the deadline is the only limit
        deadline = UNIX_LIMITS["connection_deadline"]
        return [
            Attacker(trickler.name, trickler.run, "deadline", deadline),
            Attacker(non_reader.name, non_reader.run, "deadline", deadline),
        ]
    return [idle, trickler, interactive, non_reader]


def serves_one_at_a_time(kind: Kind) -> bool:
    """Inline servers and single-threaded pre-fork workers (two, fewer than attackers)."""
    return kind.mode in ("sync", "prefork")


@dataclass
class ModeRun:
    mode: str
    kind: Kind
    server: Any
    attackers: list[Attacker]
    ledger: Ledger
    outcomes: list[StreamOutcome] = field(default_factory=list)

    @property
    def forks_log(self) -> bool:
        """Its faults are logged by forked children, not this process."""
        return self.kind.mode in ("forking", "prefork")


def start_mode(kind: Kind, loop: str | None, harness: Harness, stack: ExitStack) -> ModeRun:
    """Build ``kind``'s server with the limits on and serve it (until ``stack`` closes).

    Every server serves (pre-fork workers forked and ready) before any client starts:
    ``clients_of`` is entered before serving, so children forked from then on (this
    server's, and the other modes') let go of its clients and of the other servers'
    connections; and the workers are forked while this process is still quiet.
    """
    mode = mode_name(kind, loop)
    limits = UNIX_LIMITS if kind.is_unix else LIMITS
    server = harness.server(handler_of(kind), **limits, **loop_kwargs(loop))
    stack.enter_context(clients_of(server))
    stack.enter_context(serve_in_thread(server))
    if kind.is_prefork:
        wanted = kind.server_kwargs["workers"]
        wait_until(lambda: server.workers_ready() == wanted, CLIENT_TIMEOUT, f"{mode} workers")
    return ModeRun(mode, kind, server, attackers_for(kind), Ledger(mode))


def attack(run: ModeRun, normal: int, requests: int) -> None:
    """Run the mode's attackers beside its normal clients; keep the attackers' outcomes."""
    address = run.server.server_address
    work: list[Callable[[], Any]] = [partial(a.run, address) for a in run.attackers]
    work += [
        partial(stream_client, address, c, requests, run.ledger, seed=c) for c in range(normal)
    ]
    run.outcomes = run_concurrently(work, timeout=60)[: len(run.attackers)]


def check_mode(run: ModeRun) -> str:
    """Assert what one mode must show; its figure."""
    bound_extra = sum(a.limit for a in run.attackers) if serves_one_at_a_time(run.kind) else 0.0
    for attacker, outcome in zip(run.attackers, run.outcomes, strict=True):
        assert outcome.ended in ("eof", "reset"), f"{run.mode} {attacker.name}: {outcome}"
        bound = attacker.limit + SLACK + bound_extra
        assert outcome.elapsed < bound, (
            f"{run.mode} {attacker.name}: open {outcome.elapsed:.2f} s, over {bound:.2f} s"
        )
    expected: dict[str, int] = {}
    for attacker in run.attackers:
        expected[attacker.kind] = expected.get(attacker.kind, 0) + 1
    stats = run.server.stats()  # the server has stopped: final (pre-fork: combined)
    faults = stats.peer_faults
    assert dict(faults) == expected, f"{run.mode}: peer_faults {dict(faults)}, want {expected}"
    assert stats.handler_errors == 0, f"{run.mode}: {stats}"
    run.ledger.assert_nothing_lost()
    cut = ", ".join(
        f"{a.name} by {a.kind} in {o.elapsed:.2f} s"
        for a, o in zip(run.attackers, run.outcomes, strict=True)
    )
    return (
        f"{len(run.attackers)}/{len(run.attackers)} attackers cut ({cut}); counted "
        f"{dict(faults)}, handler_errors 0; "
        f"{run.ledger.correct}/{run.ledger.expected} normal replies correct"
    )


def test_slow_and_non_reading_clients_are_cut_while_others_are_served(
    short_dir: Path, tmp_path: Path, size: Callable[[int, int], int]
) -> None:
    normal, requests = size(2, 8), size(12, 100)
    log_path = tmp_path / "server.log"
    Resources.before_serving("uvloop")  # libuv's process-wide pipe opens before counting
    before = Resources.now()
    started = time.monotonic()
    modes = [tuple(param.values) for param in STREAM_MODES]  # (kind, loop)
    harnesses = []
    for index, (kind, _) in enumerate(modes):
        directory = short_dir / str(index)  # each harness numbers its Unix paths from 0
        directory.mkdir()
        harnesses.append(Harness(kind, directory, tmp_path))
    try:
        with server_log(log_path), ExitStack() as stack:
            results = [
                start_mode(kind, loop, harness, stack)
                for (kind, loop), harness in zip(modes, harnesses, strict=True)
            ]
            run_concurrently(
                [partial(attack, run, normal, requests) for run in results], timeout=120
            )
    finally:
        for harness in harnesses:
            harness.close()
    elapsed = time.monotonic() - started
    after = assert_back_to(before, "all modes")

    log_lines = log_path.read_text().splitlines()
    assert not [line for line in log_lines if "Traceback" in line or "ERROR" in line], (
        "the log has errors or tracebacks:\n" + "\n".join(log_lines[:40])
    )
    figures = {run.mode: check_mode(run) for run in results}
    episode_lines = [line for line in log_lines if "connections ended by the client: " in line]
    by_process: dict[str, int] = {}
    for line in episode_lines:
        by_process[line.split()[0]] = by_process.get(line.split()[0], 0) + 1
    in_process = sum(1 for run in results if not run.forks_log)
    here = by_process.pop(str(os.getpid()), 0)
    assert here == in_process, (
        f"{here} episode lines from this process's {in_process} servers (one each):\n"
        + "\n".join(episode_lines)
    )
    assert all(count == 1 for count in by_process.values()), (
        "more than one episode line from a forked process:\n" + "\n".join(episode_lines)
    )
    case = "slowloris/slow_and_non_reading_clients_are_cut_while_others_are_served"
    for mode, text in figures.items():
        record_figure(case, mode, text)
        print(f"\n[{case}] {mode}: {text}")
    print(
        f"\n[{case}] all {len(results)} modes at once in {elapsed:.2f} s; "
        f"{len(episode_lines)} episode lines; leaks: none ({after.describe()})"
    )
