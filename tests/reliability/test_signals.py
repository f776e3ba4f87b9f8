"""Signals: a signal every millisecond to the server's processes fails no request.

The server runs in a process of its own (``serve_process.py``) with a no-op Python
handler for SIGWINCH, so every delivery interrupts whatever system call is under way
(``accept``, ``recv``, ``select``, ``epoll_wait``, a worker's ``read`` of its pipe) and
runs Python code between bytecodes. A thread sends SIGWINCH to the server's whole
process group (master, workers, forked children) every ``SIGNAL_INTERVAL`` seconds while
the integrity clients run. Every mode, every transport.

Figure: replies correct; signals sent.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.testing import run_concurrently
from test_contract import Kind

from .battery import (
    ALL_MODES,
    Ledger,
    datagram_bind_address,
    datagram_client,
    loop_kwargs,
    mode_name,
    stream_client,
)
from .processes import ServerProcess

#: One signal per millisecond (as the issue asks).
SIGNAL_INTERVAL = 0.001
#: The clients run rounds until the storm has lasted this long (CI; full size: --soak).
STORM_SECONDS = (0.4, 3.0)


@pytest.mark.parametrize(("kind", "loop"), ALL_MODES)
def test_a_signal_every_millisecond_fails_no_request(
    kind: Kind,
    loop: str | None,
    tmp_path: Path,
    short_dir: Path,
    size: Callable[[Any, Any], Any],
    figure: Any,
) -> None:
    clients, requests = size(4, 32), size(25, 200)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    address: Any = str(short_dir / "sig") if kind.is_unix else ["127.0.0.1", 0]
    settings = {
        "class": kind.name,
        "address": address,
        "kwargs": {**kind.server_kwargs, **loop_kwargs(loop)},
        "noise_signal": "SIGWINCH",
    }
    sent = 0
    stop = threading.Event()
    with ServerProcess(settings, tmp_path / "server.log") as server:

        def storm() -> None:
            nonlocal sent
            while not stop.wait(SIGNAL_INTERVAL):
                try:
                    os.killpg(server.pid, signal.SIGWINCH)
                except ProcessLookupError:
                    return
                sent += 1

        stormer = threading.Thread(target=storm, daemon=True)
        stormer.start()
        started = time.monotonic()
        try:
            if True:  # the server is another process: no copies of our clients
                if kind.is_stream:
                    calls = [
                        partial(stream_client, server.address, c, requests, ledger, seed=c)
                        for c in range(clients)
                    ]
                else:
                    calls = [
                        partial(
                            datagram_client,
                            kind.family,
                            server.address,
                            datagram_bind_address(kind, short_dir, f"c{c}"),
                            c,
                            requests,
                            ledger,
                            seed=c,
                        )
                        for c in range(clients)
                    ]
                rounds = 0
                while rounds == 0 or time.monotonic() - started < size(*STORM_SECONDS):
                    run_concurrently(calls, timeout=60)
                    rounds += 1
        finally:
            stop.set()
            stormer.join(10)
        elapsed = time.monotonic() - started
        stats, _, _ = server.stop()
        errors = server.log_lines("ERROR") + server.log_lines("Traceback")
    ledger.assert_nothing_lost()
    assert not errors, f"{mode}: the server logged errors under the signal storm: {errors[:5]}"
    figure(
        f"{ledger.correct}/{ledger.expected} replies correct under {sent} signals "
        f"({sent / elapsed:.0f}/s, {rounds} rounds); handler_errors {stats['handler_errors']}"
    )
