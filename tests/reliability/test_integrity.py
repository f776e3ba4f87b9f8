"""Integrity: N clients x M requests, every reply checksummed, nothing lost, nothing leaked.

Stream: each client sends its requests over connections of 1-8 pipelined requests, in
1-64-byte pieces (``sockserve.testing.send_in_pieces``), and one connection in four
ends with a truncated request and a half-close (``half_close``). Datagram: each client
sends one datagram at a time and waits for its answer. Every reply must be the
checksum of that very request; after the server stops, this process's descriptors,
threads and children are back to what they were before it started.

Figure: replies correct of replies expected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from sockserve.testing import run_concurrently, serve_in_thread
from test_contract import Harness, Kind

from .battery import (
    DATAGRAM_MODES,
    FORK_WARNING,
    STREAM_MODES,
    Ledger,
    Resources,
    assert_back_to,
    clients_of,
    datagram_bind_address,
    datagram_client,
    handler_of,
    loop_kwargs,
    mode_name,
    stream_client,
)

pytestmark = FORK_WARNING


@pytest.mark.parametrize(("kind", "loop"), STREAM_MODES)
def test_stream_requests_all_answered(
    harness: Harness, loop: str | None, size: Callable[[int, int], int], figure: Any
) -> None:
    kind: Kind = harness.kind
    clients, requests = size(8, 64), size(50, 200)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    before = Resources.before_serving(loop)
    started = time.monotonic()
    server = harness.server(handler_of(kind), **loop_kwargs(loop))
    with serve_in_thread(server), clients_of(server):
        address = server.server_address
        run_concurrently(
            [
                partial(stream_client, address, client, requests, ledger, seed=client)
                for client in range(clients)
            ],
            timeout=60,
        )
    elapsed = time.monotonic() - started
    after = assert_back_to(before, mode)
    ledger.assert_nothing_lost()
    figure(
        f"{ledger.correct}/{ledger.expected} replies correct ({clients} clients x "
        f"{requests} requests, {elapsed:.2f} s); leaks: none ({after.describe()})"
    )


@pytest.mark.parametrize(("kind", "loop"), DATAGRAM_MODES)
def test_datagram_requests_all_answered(
    harness: Harness, loop: str | None, size: Callable[[int, int], int], figure: Any, short_dir: Any
) -> None:
    kind: Kind = harness.kind
    clients, requests = size(6, 64), size(40, 200)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    before = Resources.before_serving(loop)
    started = time.monotonic()
    server = harness.server(handler_of(kind), **loop_kwargs(loop))
    with serve_in_thread(server):
        address = server.server_address
        run_concurrently(
            [
                partial(
                    datagram_client,
                    kind.family,
                    address,
                    datagram_bind_address(kind, short_dir, f"i{client}"),
                    client,
                    requests,
                    ledger,
                    seed=client,
                )
                for client in range(clients)
            ],
            timeout=60,
        )
    elapsed = time.monotonic() - started
    after = assert_back_to(before, mode)
    ledger.assert_nothing_lost()
    figure(
        f"{ledger.correct}/{ledger.expected} replies correct ({clients} clients x "
        f"{requests} datagrams, {elapsed:.2f} s); leaks: none ({after.describe()})"
    )
