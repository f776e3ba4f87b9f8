"""Pre-fork faults: the master stopped or killed under load, workers killed, hung, recycled.

The master runs in a process of its own (``serve_process.py``, a new session), so what
it leaves behind is counted from /proc: its children, and every process of its session.

- SIGTERM to the master under load: every busy client's reply is correct, and once the
  master has exited nothing of its session is left (no zombie, no orphan).
- SIGKILL to the master: its workers notice (parent-death signal, the master pipe) and
  exit within ``ORPHAN_EXIT_SECONDS``.
- A worker killed with SIGKILL, and a worker hung in a handler (``worker_timeout``), are
  replaced, and serving goes on.
- ``max_requests`` recycling under load loses no request.

Figures: replies correct; processes left; seconds until the workers were gone; workers
replaced; distinct workers seen while recycling.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.testing import half_close, run_concurrently

from .battery import (
    CLIENT_TIMEOUT,
    Ledger,
    children_of,
    session_members,
    stream_client,
    wait_until,
)
from .processes import ServerProcess
from .protocol import answer, request_line
from .test_shutdown import BusyClient

#: How long workers may outlive a SIGKILLed master.
ORPHAN_EXIT_SECONDS = 5.0
#: worker_timeout for the hung-worker case (the master checks heartbeats every tick).
HUNG_WORKER_TIMEOUT = 1.0

TRANSPORTS = [
    pytest.param("PreforkTCPServer", id="PreforkTCPServer"),
    pytest.param("PreforkUnixStreamServer", id="PreforkUnixStreamServer"),
]


def start(server_class: str, tmp_path: Path, short_dir: Path, **kwargs: Any) -> ServerProcess:
    address: Any = ["127.0.0.1", 0] if "TCP" in server_class else str(short_dir / "pf")
    settings = {"class": server_class, "address": address, "kwargs": {"workers": 2, **kwargs}}
    server = ServerProcess(settings, tmp_path / "server.log")
    try:
        wait_until(lambda: len(children_of(server.server_pid)) == 2, CLIENT_TIMEOUT, "workers")
    except BaseException:
        server.close()
        raise
    return server


def exchange(address: Any, client: int, number: int) -> bytes:
    line = request_line(client, number, b"probe")
    outcome = half_close(address, line, timeout=CLIENT_TIMEOUT)
    assert outcome.received == answer(line), f"request {client}.{number}: got {outcome}"
    return outcome.received


@pytest.mark.parametrize("server_class", TRANSPORTS)
def test_sigterm_under_load_leaves_nothing_behind(
    server_class: str, tmp_path: Path, short_dir: Path, figure: Any
) -> None:
    ledger = Ledger(server_class)
    with start(server_class, tmp_path, short_dir) as server:
        busy = [BusyClient(server.address, client, ledger) for client in range(4)]
        threads = [threading.Thread(target=client.run, daemon=True) for client in busy]
        for thread in threads:
            thread.start()
        wait_until(lambda: ledger.correct >= 20, CLIENT_TIMEOUT, "busy clients served")
        workers = children_of(server.server_pid)
        stats, _, seconds = server.stop()
        for client in busy:
            client.stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT)
        left = session_members(server.pid)
    ledger.assert_nothing_lost()
    assert left == set(), f"{server_class}: left behind after SIGTERM: {left} (workers {workers})"
    figure(
        f"{ledger.correct}/{ledger.expected} replies correct under SIGTERM; master exited "
        f"in {seconds:.2f} s; processes left in its session: 0 (workers were {len(workers)})"
    )


@pytest.mark.parametrize("server_class", TRANSPORTS)
def test_workers_exit_when_the_master_is_killed(
    server_class: str, tmp_path: Path, short_dir: Path, figure: Any
) -> None:
    with start(server_class, tmp_path, short_dir) as server:
        exchange(server.address, 0, 0)
        workers = children_of(server.server_pid)
        killed_at = time.monotonic()
        server.signal(signal.SIGKILL)
        server.process.wait(CLIENT_TIMEOUT)
        wait_until(
            lambda: not (session_members(server.pid) & workers),
            ORPHAN_EXIT_SECONDS,
            f"workers {workers} to exit after the master's SIGKILL",
        )
        gone_in = time.monotonic() - killed_at
    figure(f"{len(workers)} workers gone {gone_in:.2f} s after SIGKILL to the master")


@pytest.mark.parametrize("server_class", TRANSPORTS)
def test_killed_and_hung_workers_are_replaced(
    server_class: str, tmp_path: Path, short_dir: Path, figure: Any
) -> None:
    with start(server_class, tmp_path, short_dir, worker_timeout=HUNG_WORKER_TIMEOUT) as server:
        master = server.server_pid
        first = children_of(master)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(children_of(master) - {victim}) == 2 and victim not in children_of(master),
            CLIENT_TIMEOUT,
            "a replacement for the killed worker",
        )
        for number in range(5):
            exchange(server.address, 1, number)
        # A request that freezes its worker (time.sleep in the handler): no heartbeat.
        before_hang = children_of(master)
        hanging = socket.socket(
            socket.AF_INET if isinstance(server.address, tuple) else socket.AF_UNIX
        )
        hanging.settimeout(CLIENT_TIMEOUT)
        try:
            hanging.connect(server.address)
            hanging.sendall(request_line(2, 0, b"HANG"))
            wait_until(
                lambda: (
                    len(before_hang - children_of(master)) == 1 and len(children_of(master)) == 2
                ),
                CLIENT_TIMEOUT + HUNG_WORKER_TIMEOUT,
                "the hung worker to be killed and replaced",
            )
        finally:
            hanging.close()
        for number in range(5):
            exchange(server.address, 3, number)
        server.stop()
        replaced = server.log_lines("killed it")
    figure(
        f"killed worker replaced; hung worker killed after worker_timeout="
        f"{HUNG_WORKER_TIMEOUT:g} s and replaced ({len(replaced)} kill line(s)); 10/10 "
        "requests served after"
    )


@pytest.mark.parametrize("server_class", TRANSPORTS)
def test_recycling_after_max_requests_loses_nothing(
    server_class: str,
    tmp_path: Path,
    short_dir: Path,
    size: Callable[[int, int], int],
    figure: Any,
) -> None:
    clients, requests = size(4, 16), size(30, 200)
    ledger = Ledger(server_class)
    with start(server_class, tmp_path, short_dir, max_requests=5) as server:
        seen: set[int] = set(children_of(server.server_pid))
        run_concurrently(
            [
                partial(stream_client, server.address, client, requests, ledger, seed=client)
                for client in range(clients)
            ],
            timeout=60,
        )
        seen |= children_of(server.server_pid)
        server.stop()
        recycled = server.log_lines("served its max_requests")
    ledger.assert_nothing_lost()
    assert recycled, f"{server_class}: no worker was recycled"
    figure(
        f"{ledger.correct}/{ledger.expected} replies correct while {len(recycled)} workers "
        "recycled (max_requests=5)"
    )
