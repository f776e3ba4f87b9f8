"""Datagram floods: memory stays bounded, the counters add up, oversized datagrams are
dropped (never handed on cut short) and logged once per episode.

Two clients flood the server (``sockserve.testing.flood_datagrams``) while a third sends
datagrams over ``max_packet_size`` (``oversized_datagram``). Afterwards, in every
datagram mode: every datagram the server took from the kernel is accounted for
(``accepted`` = handled + refused by reason; oversized ones in
``rejected["datagram_too_large"]``), no handler ever saw an oversized datagram, the
drop warning is logged at most once per process, and this process's RSS grew by less
than ``MAX_RSS_GROWTH``. What the kernel itself dropped (its receive queue overflowed)
is what the clients sent minus what the server read; the server reports it in
``stats().kernel_drops`` (Linux's own count, ``SO_MEMINFO``). With a small
``SO_RCVBUF`` the UDP flood overflows the queue, so that count must be above 0 and
explain what was not read; a Unix datagram sender waits for room instead, so there
nothing is dropped at all.

Figure: sent, read, handled, dropped by reason, kernel drops (counted by the server's
socket / not read), RSS growth.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sockserve.testing import flood_datagrams, oversized_datagram, run_concurrently, serve_in_thread
from test_contract import Harness, Kind

from .battery import (
    CLIENT_TIMEOUT,
    DATAGRAM_MODES,
    FORK_WARNING,
    clients_of,
    datagram_bind_address,
    handler_of,
    loop_kwargs,
    mode_name,
    requests_seen,
    rss_bytes,
    server_log,
    wait_until,
)
from .protocol import Behaviour, answer, request_line

pytestmark = FORK_WARNING

#: The server's max_packet_size here, and the oversized datagrams' size.
MAX_PACKET = 1024
OVERSIZED = 2000
OVERSIZED_COUNT = 5
#: How much this process's RSS may grow while it floods its own server.
MAX_RSS_GROWTH = 32 * 1024 * 1024
#: The marker datagram: each try waits this long for its answer.
MARKER_WAIT = 1.0
MARKER_TRIES = 10
#: The server socket's SO_RCVBUF under the flood: small, so the kernel must drop (Linux
#: doubles it and allows one datagram past it: about 20 queued 64-byte datagrams).
FLOOD_RCVBUF = 4096
DROP_LINE = "dropped datagrams: datagram_too_large"


def send_marker(kind: Kind, address: Any, short_dir: Path) -> int:
    """Send marker datagrams until one is answered (the flood may have filled the queue);
    how many were sent."""
    bind_to = datagram_bind_address(kind, short_dir, "marker")
    line = request_line(6, 1, b"marker")
    sent = 0
    try:
        with socket.socket(kind.family, socket.SOCK_DGRAM) as sock:
            sock.bind(bind_to)
            sock.settimeout(MARKER_WAIT)
            for _ in range(MARKER_TRIES):
                sock.sendto(line, address)
                sent += 1
                try:
                    if sock.recv(1024) == answer(line):
                        return sent
                except TimeoutError:
                    continue
    finally:
        if isinstance(bind_to, str) and os.path.exists(bind_to):
            os.unlink(bind_to)
    raise AssertionError(f"no marker answered in {MARKER_TRIES} tries")


@pytest.mark.parametrize(("kind", "loop"), DATAGRAM_MODES)
def test_a_flood_is_accounted_for(
    harness: Harness,
    loop: str | None,
    size: Callable[[int, int], int],
    figure: Any,
    tmp_path: Path,
    short_dir: Path,
) -> None:
    kind: Kind = harness.kind
    count = size(800, 50000)
    mode = mode_name(kind, loop)
    started_log = tmp_path / "started.log"
    log_path = tmp_path / "server.log"

    class Recorded(Behaviour):
        record_to = str(started_log)

    rss_before = rss_bytes(os.getpid())
    server = harness.server(handler_of(kind, Recorded), **loop_kwargs(loop))
    server.max_packet_size = MAX_PACKET
    flood_line = request_line(5, 1, b"flood")
    with server_log(log_path), serve_in_thread(server), clients_of(server):
        address = server.server_address
        # Oversized first, one at a time with the server idle: a full queue would let the
        # kernel drop them before the server could.
        for _ in range(OVERSIZED_COUNT):
            oversized_datagram(address, OVERSIZED, timeout=CLIENT_TIMEOUT)
        wait_until(
            lambda: server.stats().rejected.get("datagram_too_large", 0) == OVERSIZED_COUNT,
            CLIENT_TIMEOUT,
            "the oversized datagrams to be dropped",
        )
        # Only now (a 2000-byte datagram alone outgrows it): the socket is the same open
        # file in a pre-fork master and its workers, so this reaches them too.
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FLOOD_RCVBUF)
        outcomes = run_concurrently(
            # replies=1: the client reads while it floods, as a real one would; a Unix
            # datagram server blocks replying to a client whose queue is full.
            [partial(flood_datagrams, address, flood_line, count=count, replies=1, timeout=20)] * 2,
            timeout=60,
        )
        sent = sum(outcome.sent for outcome in outcomes)
        # A marker answered means the server has read everything queued before it.
        sent += send_marker(kind, address, short_dir)
        wait_until(
            lambda: (
                server.stats().active == 0
                and len(requests_seen(started_log)) == server.stats().finished
            ),
            CLIENT_TIMEOUT,
            "the last handlers to finish",
        )
        stats = server.stats()
    rss_growth = rss_bytes(os.getpid()) - rss_before
    handled = requests_seen(started_log)
    refused = {k: v for k, v in stats.rejected.items() if k != "datagram_too_large"}
    assert all(number == 1 for number in handled), f"{mode}: a handler saw an oversized one"
    assert stats.handler_errors == 0, f"{mode}: {stats}"
    assert stats.accepted == len(handled) + sum(refused.values()), (
        f"{mode}: accepted {stats.accepted} != handled {len(handled)} + refused {refused}"
    )
    assert stats.rejected.get("datagram_too_large") == OVERSIZED_COUNT, f"{mode}: {stats}"
    read = stats.accepted + OVERSIZED_COUNT
    kernel_dropped = sent + OVERSIZED_COUNT - read
    assert kernel_dropped >= 0, f"{mode}: read {read} of {sent + OVERSIZED_COUNT} sent"
    if kind.is_unix:
        assert kernel_dropped == stats.kernel_drops == 0, f"{mode}: {stats}"
    else:
        # Loopback may lose a few more before the socket (its backlog queue, counted in
        # /proc/net/softnet_stat), never fewer: the socket only counts what reached it.
        assert 0 < stats.kernel_drops <= kernel_dropped, (
            f"{mode}: kernel_drops {stats.kernel_drops}, {kernel_dropped} not read"
        )
    drop_lines = [line for line in log_path.read_text().splitlines() if DROP_LINE in line]
    per_process: dict[str, int] = {}
    for line in drop_lines:
        per_process[line.split()[0]] = per_process.get(line.split()[0], 0) + 1
    assert drop_lines, f"{mode}: oversized datagrams were not logged"
    assert max(per_process.values()) == 1, f"{mode}: the drop log repeats: {drop_lines}"
    assert rss_growth < MAX_RSS_GROWTH, f"{mode}: RSS grew {rss_growth / 2**20:.1f} MiB"
    figure(
        f"sent {sent + OVERSIZED_COUNT}, read {read} = handled {len(handled)} + refused "
        f"{sum(refused.values())} + too large {OVERSIZED_COUNT}; kernel dropped "
        f"{stats.kernel_drops} (stats) of {kernel_dropped} not read; {len(drop_lines)} drop "
        f"log line(s); RSS +{rss_growth / 2**20:.1f} MiB"
    )
