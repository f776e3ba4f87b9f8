"""Handler failures: one request in ten raises, and ``handle_error`` itself raises now
and then; every other reply is correct, nothing leaks, and ``stats().handler_errors``
counts exactly the failures.

Each stream request has a connection of its own (a handler that raised ends its
connection, so a failure takes nothing else with it); a failed request gets the end
of the stream and no reply. A failed datagram gets no reply, or an empty one (the
synchronous handler's ``finish()`` still sends what was written, as the stdlib's does).
The server's ``handle_error`` records every call (in a file: it runs in forked children
and workers too) and raises itself for one failure in three.

Figure: replies correct, failures counted by ``stats()`` / failures made.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.testing import half_close, run_concurrently, serve_in_thread
from test_contract import Harness, Kind

from .battery import (
    ALL_MODES,
    CLIENT_TIMEOUT,
    FORK_WARNING,
    Ledger,
    Resources,
    assert_back_to,
    clients_of,
    datagram_bind_address,
    handler_of,
    loop_kwargs,
    mode_name,
    payload,
)
from .protocol import Behaviour, HandlerFailure, answer, record, request_line

pytestmark = FORK_WARNING

#: One request in ``FAIL_EVERY`` raises in the handler.
FAIL_EVERY = 10
#: ``handle_error`` raises for failed requests whose number is a multiple of this.
HANDLE_ERROR_FAILS_EVERY = 30


def failing_server_class(kind: Kind, calls: Path) -> Any:
    class FailingReports(kind.server_class):  # type: ignore[misc,name-defined]
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            record(str(calls), type(exc).__name__)
            super().handle_error(request, client_address)
            if isinstance(exc, HandlerFailure):
                number = int(str(exc).split()[1])
                if number % HANDLE_ERROR_FAILS_EVERY == 0:
                    raise RuntimeError(f"handle_error fails too, for request {number}")

    return FailingReports


def stream_requests(address: Any, client: int, requests: int, ledger: Ledger) -> None:
    import random

    rng = random.Random(client)
    for number in range(requests):
        line = request_line(client, number, payload(rng))
        outcome = half_close(address, line, timeout=CLIENT_TIMEOUT)
        if number % FAIL_EVERY == 0:
            if outcome.received:
                ledger.lose(client, f"{client}.{number}", b"(no reply)", outcome.received)
            else:
                ledger.count_correct()
        else:
            ledger.check(client, [line], outcome.received)


def datagram_requests(
    kind: Kind, address: Any, bind_to: Any, client: int, requests: int, ledger: Ledger
) -> None:
    import random

    rng = random.Random(client)
    with socket.socket(kind.family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.bind(bind_to)
        for number in range(requests):
            line = request_line(client, number, payload(rng))
            sock.sendto(line, address)
            if number % FAIL_EVERY == 0:
                ledger.count_correct()  # nothing to wait for; a late empty reply is skipped
                continue
            while True:
                try:
                    reply = sock.recv(65536)
                except TimeoutError:
                    ledger.lose(client, f"{client}.{number}", answer(line), "no reply in time")
                    break
                if reply:  # an empty one is a failed request's
                    ledger.check(client, [line], reply)
                    break


@pytest.mark.parametrize(("kind", "loop"), ALL_MODES)
def test_failing_requests_take_nothing_else_with_them(
    harness: Harness,
    loop: str | None,
    size: Callable[[int, int], int],
    figure: Any,
    short_dir: Path,
    tmp_path: Path,
) -> None:
    kind: Kind = harness.kind
    clients, requests = size(4, 32), size(30, 200)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    calls = tmp_path / "handle_error.calls"

    class Failing(Behaviour):
        fail_every = FAIL_EVERY

    before = Resources.before_serving(loop)
    started = time.monotonic()
    server = harness.server(
        handler_of(kind, Failing),
        server_class=failing_server_class(kind, calls),
        **loop_kwargs(loop),
    )
    with serve_in_thread(server), clients_of(server):
        address = server.server_address
        if kind.is_stream:
            calls_list = [
                partial(stream_requests, address, client, requests, ledger)
                for client in range(clients)
            ]
        else:
            calls_list = [
                partial(
                    datagram_requests,
                    kind,
                    address,
                    datagram_bind_address(kind, short_dir, f"f{client}"),
                    client,
                    requests,
                    ledger,
                )
                for client in range(clients)
            ]
        run_concurrently(calls_list, timeout=60)
        if not kind.is_stream:
            # The failures' datagrams carry no reply to wait for: wait for the server to
            # have seen them all (each failure calls handle_error once).
            failures = clients * len(range(0, requests, FAIL_EVERY))
            deadline = time.monotonic() + CLIENT_TIMEOUT
            while time.monotonic() < deadline and (
                not calls.exists() or len(calls.read_text().splitlines()) < failures
            ):
                time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert_back_to(before, mode)
    ledger.assert_nothing_lost()
    made = clients * len(range(0, requests, FAIL_EVERY))
    reported = calls.read_text().splitlines() if calls.exists() else []
    kinds = sorted({line.split()[1] for line in reported})
    assert kinds == ["HandlerFailure"], f"{mode}: handle_error saw {kinds}"
    assert len(reported) == made, (
        f"{mode}: handle_error called {len(reported)} times for {made} failures"
    )
    counted = server.stats().handler_errors
    assert counted == made, f"{mode}: stats().handler_errors is {counted}, {made} requests failed"
    figure(
        f"{ledger.correct}/{ledger.expected} outcomes correct; handler_errors {counted}/{made}"
        f" ({clients} clients x {requests} requests, {elapsed:.2f} s); leaks: none"
    )
