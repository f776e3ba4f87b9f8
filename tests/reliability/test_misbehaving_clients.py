"""Misbehaving clients beside normal ones: resets mid-request and mid-reply, half-closes.

Normal clients (the integrity client: pipelined, in pieces, some truncated) and
half-closing clients must see 100% success while others reset the connection mid-request
(``sockserve.testing.reset_mid_request``) and mid-reply (``reset_mid_reply``, on a
4 MiB reply, so the server is still writing when the reset comes), and others send a
whole request and close without reading the reply. While the server still serves, its
connection descriptors must all be closed again once the clients are done. The server must
count each reset it sees in ``stats().peer_faults`` (never in ``handler_errors``), log
it as one line with no traceback (per process: a forked child or worker is its own
episode), and still give it to a user's own ``handle_error``.

Figure: normal replies correct; resets seen as peer faults / resets made; log lines.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.handler_errors import peer_fault_kind
from sockserve.testing import (
    half_close,
    reset_mid_reply,
    reset_mid_request,
    run_concurrently,
    serve_in_thread,
)
from test_contract import Harness, Kind

from .battery import (
    CLIENT_TIMEOUT,
    FORK_WARNING,
    STREAM_MODES,
    Ledger,
    Resources,
    assert_back_to,
    clients_of,
    connect_stream,
    handler_of,
    loop_kwargs,
    mode_name,
    payload,
    server_log,
    stream_client,
    wait_until,
)
from .protocol import record, request_line

pytestmark = FORK_WARNING

#: What the episode log's first line of a peer-fault episode says.
PEER_FAULT_LINE = "connections ended by the client: "


def recording_server_class(kind: Kind, calls: Path) -> Any:
    class Recording(kind.server_class):  # type: ignore[misc,name-defined]
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            record(str(calls), f"{peer_fault_kind(exc) if exc else None} {type(exc).__name__}")
            super().handle_error(request, client_address)

    return Recording


def half_closer(address: Any, client: int, requests: int, ledger: Ledger) -> None:
    rng = random.Random(client)
    for number in range(requests):
        line = request_line(client, number, payload(rng))
        outcome = half_close(address, line, timeout=CLIENT_TIMEOUT)
        ledger.check(client, [line], outcome.received)


def leaver(address: Any, client: int, count: int) -> int:
    """Sends a whole request and closes at once, never reading the reply: the server's
    reply then meets a closed socket (and the client's kernel answers it with RST)."""
    for number in range(count):
        with connect_stream(address) as sock:
            sock.sendall(request_line(client, number, b"and goodbye"))
    return count


def resetter(address: Any, client: int, count: int, mid_reply: bool) -> int:
    for number in range(count):
        if mid_reply:
            reset_mid_reply(address, request_line(client, number, b"BIG"), read_bytes=1)
        else:
            # A partial line, held a moment so the handler is reading when the RST comes.
            reset_mid_request(address, b"%d.%d partial" % (client, number), hold=0.02)
    return count


@pytest.mark.parametrize(("kind", "loop"), STREAM_MODES)
def test_resets_and_half_closes_beside_normal_clients(
    harness: Harness,
    loop: str | None,
    size: Callable[[int, int], int],
    figure: Any,
    tmp_path: Path,
) -> None:
    kind: Kind = harness.kind
    normal, requests, resets = size(3, 16), size(20, 200), size(4, 50)
    mode = mode_name(kind, loop)
    ledger = Ledger(mode)
    calls = tmp_path / "handle_error.calls"
    log_path = tmp_path / "server.log"
    before = Resources.before_serving(loop)
    started = time.monotonic()
    server = harness.server(
        handler_of(kind), server_class=recording_server_class(kind, calls), **loop_kwargs(loop)
    )
    with server_log(log_path), serve_in_thread(server), clients_of(server):
        address = server.server_address
        stream_client(address, 999, 1, ledger, seed=999)  # the loop's own descriptors open
        wait_until(lambda: server.stats().active == 0, CLIENT_TIMEOUT, "the first to end")
        idle = Resources.now()
        work: list[Callable[[], object]] = []
        for client in range(normal):
            work.append(partial(stream_client, address, client, requests, ledger, seed=client))
            work.append(partial(half_closer, address, 100 + client, requests // 2, ledger))
        for client in range(2):
            work.append(partial(resetter, address, 200 + client, resets, mid_reply=False))
            work.append(partial(resetter, address, 300 + client, resets, mid_reply=True))
            work.append(partial(leaver, address, 400 + client, resets))
        run_concurrently(work, timeout=60)
        # While still serving: every connection's descriptor is closed again (this
        # process's: the server's, and in forking mode the parent's copies).
        wait_until(lambda: server.stats().active == 0, CLIENT_TIMEOUT, "requests to end")
        serving = Resources.now().settle_to(idle)
        assert serving.descriptors == idle.descriptors, (
            f"{mode}: {serving.descriptors - idle.descriptors} connection descriptors "
            "still open after every client was done"
        )
    elapsed = time.monotonic() - started
    after = assert_back_to(before, mode)
    ledger.assert_nothing_lost()

    stats = server.stats()
    reported = calls.read_text().splitlines() if calls.exists() else []
    seen = [line.split()[1:] for line in reported]
    assert stats.handler_errors == 0, f"{mode}: resets counted as handler errors: {seen}"
    assert all(fault != "None" for fault, _ in seen), f"{mode}: not peer faults: {seen}"
    assert len(seen) == stats.peer_faults_total, (
        f"{mode}: handle_error saw {len(seen)} peer faults, stats().peer_faults {stats.peer_faults}"
    )
    mid_reply_resets = 2 * resets
    assert stats.peer_faults.get("reset", 0) >= mid_reply_resets, (
        f"{mode}: {mid_reply_resets} clients reset mid-reply, stats().peer_faults is "
        f"{stats.peer_faults}"
    )
    log_lines = log_path.read_text().splitlines()
    assert not [line for line in log_lines if "Traceback" in line or "ERROR" in line], (
        f"{mode}: the log has errors or tracebacks:\n" + "\n".join(log_lines[:40])
    )
    firsts = [line for line in log_lines if PEER_FAULT_LINE in line]
    per_process: dict[str, int] = {}
    for line in firsts:
        per_process[line.split()[0]] = per_process.get(line.split()[0], 0) + 1
    assert firsts, f"{mode}: no peer-fault line logged:\n" + "\n".join(log_lines[:40])
    assert max(per_process.values()) == 1, f"{mode}: more than one line per episode:\n" + (
        "\n".join(firsts[:20])
    )
    figure(
        f"{ledger.correct}/{ledger.expected} normal replies correct; peer faults "
        f"{stats.peer_faults} for {4 * resets} resets and {2 * resets} leavers "
        "(all seen by handle_error), "
        f"handler_errors 0; {len(firsts)} log line(s), no traceback ({elapsed:.2f} s); "
        f"leaks: none ({after.describe()})"
    )
