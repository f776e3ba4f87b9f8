"""Replies on a datagram server's socket without ever blocking the event loop.

Design: a reply is sent at once with ``MSG_DONTWAIT``. When the kernel's send buffer is
full (rare for UDP, common for a Unix datagram peer that reads slowly) the datagram waits
in a bounded queue and goes out when the socket is writable again; ``drain()`` waits for
that queue to empty. Past the bound a reply is dropped with one warning per episode:
datagrams may be lost anyway, and an unbounded queue would trade that for memory.

The socket stays in blocking mode, as the synchronous core leaves it: every call here
passes ``MSG_DONTWAIT`` instead, so nothing else that shares the socket is surprised.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any

from ..addresses import format_address
from ..handlers import send_datagram_reply

log = logging.getLogger("sockserve.aio.datagrams")

#: Replies that may wait for a full send buffer before new ones are dropped.
MAX_QUEUED_REPLIES = 1024

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class DatagramSender:
    """``sendto(data, address)`` like a socket's, plus ``await drain()``.

    Handlers see it as ``self.socket`` (and as ``request[1]``), so stdlib-style code
    ``self.socket.sendto(reply, self.client_address)`` works unchanged.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._is_dropping = False
        self._dropped = 0

    @property
    def family(self) -> int:
        return self._sock.family

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendto(self, data: bytes | bytearray | memoryview, address: Any) -> None:
        """Send one datagram now, or queue it if the kernel's buffer is full."""
        if not self._queue:
            try:
                send_datagram_reply(self._sock, data, address, _DONTWAIT)
                return
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._flush)
        if len(self._queue) >= MAX_QUEUED_REPLIES:
            self._drop(address)
            return
        self._queue.append((bytes(data), address))

    async def drain(self) -> None:
        """Wait until every queued reply has gone to the kernel."""
        if self._queue:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Forget queued replies and stop watching the socket (the server owns it)."""
        if self._queue:
            self._queue.clear()
            self._loop.remove_writer(self._sock.fileno())
        self._release_waiters()

    def _flush(self) -> None:
        while self._queue:
            data, address = self._queue[0]
            try:
                self._sock.sendto(data, _DONTWAIT, address)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("reply to %s failed: %s", format_address(address), exc)
            self._queue.popleft()
        self._loop.remove_writer(self._sock.fileno())
        if self._is_dropping:
            log.info("reply queue has room again; %d replies were dropped", self._dropped)
            self._is_dropping = False
            self._dropped = 0
        self._release_waiters()

    def _drop(self, address: Any) -> None:
        self._dropped += 1
        if not self._is_dropping:
            self._is_dropping = True
            log.warning(
                "send buffer full and %d replies queued: dropping replies (first to %s)",
                MAX_QUEUED_REPLIES,
                format_address(address),
            )

    def _release_waiters(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
