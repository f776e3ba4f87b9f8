"""Capacity: out of descriptors, the accept loop waits instead of spinning; with
``max_connections``, never more at once, and nothing dropped after accept.

Descriptor starvation runs the server in a process of its own (``serve_process.py``)
whose RLIMIT_NOFILE leaves room for a few connections. Clients hold more connections
than that; while the server is starved its CPU time (``/proc/<pid>/stat``) must stay
under ``MAX_STARVED_CPU`` of a core, its log must say once that accepts pause and once
that they work again, and after the holders let go a new client must be served within
``RESUME_SECONDS`` (the back-off tops out at ``listeners.ACCEPT_BACKOFF_MAX``, 1 s).
Every loop kind: the selector loop (threading), asyncio and uvloop.

``max_connections`` runs in every stream mode: clients outnumber the limit, each
request holds its handler a moment, and the handler records when it starts and ends;
no process may run more than the limit at once (a pre-fork limit is per worker), and
every request gets its reply (``overload_policy="wait"``: the others wait in the
kernel's backlog).

Figures: CPU share while starved, log lines, seconds to serve again; peak concurrency
per process and replies correct.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.listeners import ACCEPT_BACKOFF_MAX
from sockserve.testing import half_close, run_concurrently, serve_in_thread
from test_contract import Harness, Kind

from .battery import (
    CLIENT_TIMEOUT,
    FORK_WARNING,
    STREAM_MODES,
    Ledger,
    clients_of,
    concurrency_by_pid,
    cpu_seconds,
    handler_of,
    loop_kwargs,
    mode_name,
    payload,
    wait_until,
)
from .processes import ServerProcess
from .protocol import Behaviour, answer, request_line

pytestmark = FORK_WARNING

#: The most CPU a starved accept loop may use: 10% of one core.
MAX_STARVED_CPU = 0.10
#: How long the starved period is measured.
STARVED_SECONDS = 1.0
#: Serving again within this long after descriptors free up: the back-off's 1 s cap plus
#: room for a loaded machine.
RESUME_SECONDS = 1.5
#: Descriptors left for connections under the lowered limit, and connections held.
SPARE_DESCRIPTORS = 12
HELD_CONNECTIONS = 24
#: The capacity episode's log lines (listeners.AcceptBackoff).
PAUSED_LINE = "pausing accepts until resources free up"
RESUMED_LINE = "works again after"

LOOP_KINDS = [
    pytest.param("ThreadingTCPServer", None, id="selector-loop"),
    pytest.param("AsyncTCPServer", "asyncio", id="asyncio"),
    pytest.param("AsyncTCPServer", "uvloop", id="uvloop"),
]


@pytest.mark.parametrize(("server_class", "loop"), LOOP_KINDS)
def test_out_of_descriptors_the_loop_waits_and_recovers(
    server_class: str, loop: str | None, tmp_path: Path, figure: Any
) -> None:
    assert RESUME_SECONDS > ACCEPT_BACKOFF_MAX
    settings = {
        "class": server_class,
        "address": ["127.0.0.1", 0],
        "kwargs": loop_kwargs(loop),
        "nofile_spare": SPARE_DESCRIPTORS,
    }
    holders: list[socket.socket] = []
    with ServerProcess(settings, tmp_path / "server.log") as server:
        try:
            for number in range(HELD_CONNECTIONS):
                holder = socket.create_connection(server.address, timeout=CLIENT_TIMEOUT)
                holders.append(holder)
                holder.sendall(request_line(0, number, b"held"))
            wait_until(lambda: server.log_lines(PAUSED_LINE), CLIENT_TIMEOUT, "accepts pause")
            cpu_before = cpu_seconds(server.server_pid)
            measured_from = time.monotonic()
            time.sleep(STARVED_SECONDS)  # the measurement window itself, not a wait
            share = (cpu_seconds(server.server_pid) - cpu_before) / (
                time.monotonic() - measured_from
            )
            freed_at = time.monotonic()
            for holder in holders:
                holder.close()
            holders.clear()
            line = request_line(1, 0, b"after the starvation")
            with socket.create_connection(server.address, timeout=CLIENT_TIMEOUT) as probe:
                probe.sendall(line)
                probe.shutdown(socket.SHUT_WR)
                reply = probe.recv(4096)
            resumed = time.monotonic() - freed_at
            try:
                wait_until(lambda: server.log_lines(RESUMED_LINE), CLIENT_TIMEOUT, "resume line")
            except AssertionError as exc:  # what the server said instead: the evidence
                raise AssertionError(f"{exc}; the server's log:\n{server.log()[-3000:]}") from exc
            stats, _, _ = server.stop()
        finally:
            for holder in holders:
                holder.close()
        paused = server.log_lines(PAUSED_LINE)
        resumed_lines = server.log_lines(RESUMED_LINE)
        tracebacks = server.log_lines("Traceback")
    assert reply == answer(line), f"{server_class}-{loop}: after starvation got {reply!r}"
    assert share < MAX_STARVED_CPU, f"{server_class}-{loop}: {share:.0%} of a core while starved"
    assert resumed < RESUME_SECONDS, f"{server_class}-{loop}: served again after {resumed:.2f} s"
    assert len(paused) == 1, f"{server_class}-{loop}: pause lines: {paused}"
    assert len(resumed_lines) == 1, f"{server_class}-{loop}: resume lines: {resumed_lines}"
    assert not tracebacks
    figure(
        f"CPU {share:.1%} of a core while starved {STARVED_SECONDS:g} s; served again "
        f"{resumed:.2f} s after descriptors freed; log: 1 pause + 1 resume line; "
        f"accept_errors {stats['accept_errors']}"
    )


#: ``max_connections`` in the concurrency case, and how many clients push against it.
CONNECTION_LIMIT = 3
PUSHING_CLIENTS = 10


def holding_client(address: Any, client: int, requests: int, ledger: Ledger) -> None:
    rng = random.Random(client)
    for number in range(requests):
        line = request_line(client, number, b"HOLD" + payload(rng))
        outcome = half_close(address, line, timeout=CLIENT_TIMEOUT)
        ledger.check(client, [line], outcome.received)


@pytest.mark.parametrize(("kind", "loop"), STREAM_MODES)
def test_max_connections_is_never_exceeded_and_nothing_is_dropped(
    harness: Harness,
    loop: str | None,
    size: Callable[[int, int], int],
    figure: Any,
    tmp_path: Path,
) -> None:
    kind: Kind = harness.kind
    requests = size(3, 20)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    running = tmp_path / "running.log"

    class Recorded(Behaviour):
        record_to = str(running)

    server = harness.server(
        handler_of(kind, Recorded), max_connections=CONNECTION_LIMIT, **loop_kwargs(loop)
    )
    with serve_in_thread(server), clients_of(server):
        run_concurrently(
            [
                partial(holding_client, server.server_address, client, requests, ledger)
                for client in range(PUSHING_CLIENTS)
            ],
            timeout=60,
        )
    ledger.assert_nothing_lost()
    peaks = concurrency_by_pid(running)
    assert peaks, f"{mode}: the handler recorded nothing"
    assert max(peaks.values()) <= CONNECTION_LIMIT, (
        f"{mode}: more than max_connections={CONNECTION_LIMIT} at once: {peaks} (by pid)"
    )
    stats = server.stats()
    figure(
        f"peak {max(peaks.values())} at once per process (limit {CONNECTION_LIMIT}, "
        f"{len(peaks)} process(es)); {ledger.correct}/{ledger.expected} replies correct; "
        f"rejected {stats.rejected_total}"
    )
