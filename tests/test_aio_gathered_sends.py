"""Collected writes sent together (``aio/gathered_sends.py``) on real connections.

A handler writes more in one step than the socket takes while its client does not
read: what the kernel did not take is buffered by the transport, ``pause_writing``
comes (so ``drain()`` waits), and once the client reads, every byte arrives once and
in order. Both loops; on the standard library's loop that is our own ``sendmsg`` path
(3.11-3.13).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer, gathered_sends
from sockserve.testing import serve_in_thread
from test_aio import LOOPS

TIMEOUT = 10.0
PIECES = [bytes([number]) * 150_000 for number in range(1, 81)]  # 12 MB in one step, in twos


class FloodingWriter(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        server = self.server
        await self.reader.readline()
        for piece in PIECES:
            self.writer.write(piece)
        flow = self.writer._flow
        server.seen.update(  # type: ignore[attr-defined]
            paused=flow.is_writing_paused,
            sender=getattr(flow.send_pieces, "func", flow.send_pieces),
        )
        server.written.set()  # type: ignore[attr-defined]
        await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_step_larger_than_the_socket_is_buffered_paused_and_arrives_whole(
    event_loop: str,
) -> None:
    seen = _flood_a_client_that_does_not_read(event_loop)
    if event_loop == "asyncio":
        assert seen["sender"] is gathered_sends._sendmsg_then_write


def test_without_sendmsg_the_pieces_are_joined_for_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fallback (no sendmsg, or a Python whose transport renamed what it reads):
    # the transport's public write(), which buffers and pauses as well.
    monkeypatch.setattr(gathered_sends, "_HAS_SENDMSG", False)
    seen = _flood_a_client_that_does_not_read("asyncio")
    assert seen["sender"] is gathered_sends._write_joined


def _flood_a_client_that_does_not_read(event_loop: str) -> dict[str, Any]:
    """12 MB written in one step to a client that reads only once the step is over:
    every byte arrives once, in order, and drain() had to wait. Returns what the
    handler saw (``paused``, ``sender``)."""
    server: Any = AsyncTCPServer(("127.0.0.1", 0), FloodingWriter, event_loop=event_loop)
    server.seen = {}
    server.written = threading.Event()
    with serve_in_thread(server), socket.create_connection(server.server_address) as client:
        client.settimeout(TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"go\n")
        assert server.written.wait(TIMEOUT)
        received = bytearray()
        while chunk := client.recv(1 << 20):
            received += chunk
    assert received == b"".join(PIECES)
    assert server.seen["paused"] is True  # drain() had to wait: the transport said so
    seen: dict[str, Any] = server.seen
    return seen
