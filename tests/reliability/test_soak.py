"""Soak: hours of traffic in miniature; the server's memory stops growing after warm-up.

The server runs in a process of its own (``serve_process.py``) and clients from this
process send the integrity case's traffic (pipelined, in pieces, some truncated; one
datagram at a time for datagram modes) in rounds for ``SOAK_SECONDS``. After each
round, with no request in flight, the server's resident memory is read from /proc:
``VmRSS`` of the server process, plus its workers for pre-fork (the processes that
live as long as the server; a forking server's per-request children come and go and
are not the server's growth). The first ``WARMUP_SECONDS`` fill caches, pools, the
allocator's arenas; after that, RSS may grow by less than ``MAX_GROWTH`` (5%), and
every reply must be correct.

Sizes: with ``--soak``, every mode (``ALL_MODES``) for ``SOAK_SECONDS`` each; without
it, one mode (``CI_MODE``) for a couple of seconds, so the case's own code runs in CI
(pytest_generate_tests chooses at collection time: nothing is skipped).

Figure per mode: RSS after warm-up, at the end and at its peak, growth in %, requests
served, rounds.
"""

from __future__ import annotations

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
    children_of,
    datagram_bind_address,
    datagram_client,
    mode_name,
    rss_bytes,
    stream_client,
)
from .processes import ServerProcess

#: The whole soak and its warm-up per mode, with ``--soak`` / without it. 40 s a mode
#: keeps each test under the suite's 60 s timeout with the server's start and stop.
SOAK_SECONDS = (1.5, 40.0)
WARMUP_SECONDS = (0.5, 10.0)
#: RSS growth allowed after warm-up (issue 14).
MAX_GROWTH = 0.05
#: One round: this many clients at once, each this many requests.
ROUND_CLIENTS = 4
ROUND_REQUESTS = 25
#: The one mode the CI-sized run soaks briefly.
CI_MODE = "ThreadingTCPServer"
MIB = 1024 * 1024


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every mode under ``--soak``; else ``CI_MODE`` only (chosen at collection)."""
    modes = ALL_MODES
    if not metafunc.config.getoption("--soak"):
        modes = [param for param in ALL_MODES if param.id == CI_MODE]
    metafunc.parametrize(("kind", "loop"), modes)


def serving_rss(kind: Kind, pid: int) -> int:
    """Bytes resident in the server: its process, and a pre-fork master's workers."""
    pids = {pid} | (children_of(pid) if kind.is_prefork else set())
    total = 0
    for member in pids:
        try:
            total += rss_bytes(member)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a worker replaced between the listing and the read
    return total


def settings_for(kind: Kind, loop: str | None, short_dir: Path) -> dict[str, Any]:
    address: Any = str(short_dir / "soak") if kind.is_unix else ["127.0.0.1", 0]
    kwargs = {**kind.server_kwargs, **({"event_loop": loop} if loop else {})}
    return {"class": kind.name, "address": address, "kwargs": kwargs}


def one_round(kind: Kind, address: Any, ledger: Ledger, short_dir: Path, round_: int) -> None:
    calls: list[Callable[[], Any]] = []
    for client in range(ROUND_CLIENTS):
        seed = round_ * 100 + client
        if kind.is_stream:
            calls.append(partial(stream_client, address, client, ROUND_REQUESTS, ledger, seed=seed))
        else:
            bind_to = datagram_bind_address(kind, short_dir, f"c{client}")
            calls.append(
                partial(
                    datagram_client,
                    kind.family,
                    address,
                    bind_to,
                    client,
                    ROUND_REQUESTS,
                    ledger,
                    seed=seed,
                )
            )
    run_concurrently(calls, timeout=30)


def test_rss_stops_growing_after_warm_up(
    kind: Kind,
    loop: str | None,
    soak: bool,
    figure: Any,
    tmp_path: Path,
    short_dir: Path,
) -> None:
    mode = mode_name(kind, loop)
    seconds = SOAK_SECONDS[soak]
    warmup = WARMUP_SECONDS[soak]
    ledger = Ledger(mode)
    samples: list[int] = []
    with ServerProcess(settings_for(kind, loop, short_dir), tmp_path / "server.log") as server:
        address = server.address
        started = time.monotonic()
        baseline = 0
        rounds = 0
        while time.monotonic() - started < seconds:
            one_round(kind, address, ledger, short_dir, rounds)
            rounds += 1
            samples.append(serving_rss(kind, server.server_pid))
            if not baseline and time.monotonic() - started >= warmup:
                baseline = samples[-1]
        stats, _, _ = server.stop()
    ledger.assert_nothing_lost()
    assert baseline, f"{mode}: warm-up did not end within {seconds} s ({rounds} rounds)"
    final = samples[-1]
    growth = (final - baseline) / baseline
    figure(
        f"RSS {baseline / MIB:.1f} MiB after {warmup:g} s warm-up, {final / MIB:.1f} MiB "
        f"at {seconds:g} s (peak {max(samples) / MIB:.1f}): {growth:+.1%}; "
        f"{ledger.correct} replies correct in {rounds} rounds; handler_errors "
        f"{stats['handler_errors']}"
    )
    assert growth < MAX_GROWTH, (
        f"{mode}: RSS grew {growth:.1%} after warm-up: "
        + ", ".join(f"{sample / MIB:.1f}" for sample in samples)
        + " MiB"
    )
