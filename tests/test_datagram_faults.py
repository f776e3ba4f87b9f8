"""Oversized datagrams are counted, dropped and logged once per episode, in every mode.

Before the serving core, 300 oversized UDP datagrams wrote 300 WARNING lines and no
counter said so. Now each is counted in ``stats().rejected["datagram_too_large"]``, none
is handed to a handler cut short, and the log gets one line for the episode (and one
summary line per quiet window).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import pytest

from sockserve.metrics import ServerStats, combine
from sockserve.sockets import kernel_drops
from sockserve.testing import serve_in_thread
from test_connection_setup import loop_kwargs, with_loops
from test_contract import ALL_KINDS, CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

DATAGRAM_KINDS = [kind for kind in ALL_KINDS if not kind.is_stream]
OVERSIZED = 300
#: Between checkpoints the kernel holds at most this many unread datagrams: far below
#: what a default receive buffer takes, so none is dropped before the server reads it.
CHECKPOINT_EVERY = 50
MAX_PACKET = 512


@pytest.mark.parametrize(("kind", "loop"), with_loops(DATAGRAM_KINDS))
def test_oversized_datagrams_are_counted_not_shouted(
    harness: Harness, kind: Kind, loop: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def respond(handler: Any, line: bytes) -> bytes:
        seen.append(len(handler.packet) if hasattr(handler, "packet") else len(line))
        return line

    class Small(kind.server_class):  # type: ignore[misc,name-defined]
        max_packet_size = MAX_PACKET

    server = harness.server(harness.handler(respond), server_class=Small, **loop_kwargs(loop))
    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT), harness.connect(server) as client:
        for sent in range(1, OVERSIZED + 1):
            client.send(b"x" * (MAX_PACKET + 100) + b"\n")
            if sent % CHECKPOINT_EVERY == 0:  # served in order: all before it were read
                assert client.exchange(f"checkpoint {sent}\n".encode()).startswith(b"check")
        if kind.is_prefork:
            assert server._supervisor.wait_for_stats(
                lambda s: s.rejected.get("datagram_too_large") == OVERSIZED, CLIENT_TIMEOUT
            )
        stats = server.stats()
    assert stats.rejected == {"datagram_too_large": OVERSIZED}
    assert stats.handler_errors == 0
    if not kind.is_prefork and kind.mode != "forking":  # handlers ran in this process
        assert all(size <= MAX_PACKET for size in seen), "a cut datagram reached a handler"
    if not kind.is_prefork:  # workers log in their own processes
        dropped = [r for r in caplog.records if "dropped datagrams" in r.getMessage()]
        assert 1 <= len(dropped) <= 2, [r.getMessage() for r in dropped]


def test_kernel_drops_reads_what_linux_dropped_on_the_socket() -> None:
    """``sockets.kernel_drops``: the socket's own drop count, 0 once closed; combined
    snapshots sum it."""
    if sys.platform != "linux":
        pytest.skip("SO_MEMINFO's drop counter is Linux's")
    sent = 200
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)  # never waits: it reads only what is queued
        sender.settimeout(CLIENT_TIMEOUT)
        assert kernel_drops(receiver) == 0
        for _ in range(sent):
            sender.sendto(b"x" * 64, receiver.getsockname())
        queued = 0
        while True:
            try:
                receiver.recv(100)
            except BlockingIOError:
                break
            queued += 1
        assert 0 < queued < sent
        assert kernel_drops(receiver) == sent - queued
    assert kernel_drops(receiver) == 0
    parts = [ServerStats(kernel_drops=3), ServerStats(kernel_drops=4)]
    assert combine(parts).kernel_drops == 7
    assert ServerStats.from_dict(parts[0].to_dict()).kernel_drops == 3
