"""``UDPServer`` and the Unix servers: one datagram per request on the server's socket."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

from ..addresses import format_address
from ..metrics import ServerStats
from ..sockets import kernel_drops, receive_datagram
from .stream import TCPServer

#: Oversized datagrams skipped in one ``get_request`` call before giving the loop a turn.
MAX_TRUNCATED_SKIPS = 64


class UDPServer(TCPServer):
    """A datagram server; each datagram is one request ``(data, socket)``."""

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 65535

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram; oversized (truncated) ones are dropped and counted
        (``stats().rejected["datagram_too_large"]``), logged once per episode."""
        for _ in range(MAX_TRUNCATED_SKIPS):
            data, client_address, truncated = receive_datagram(self.socket, self.max_packet_size)
            if not truncated:
                return (data, self.socket), client_address
            self._core.note_dropped(
                "datagram_too_large",
                f"from {format_address(client_address)}, over "
                f"max_packet_size={self.max_packet_size}",
                client_address,
            )
        raise BlockingIOError("only oversized datagrams were queued")

    def stats(self) -> ServerStats:
        """``BaseServer.stats()``, with ``kernel_drops`` read from the socket (once per
        call, nothing per datagram: see ``sockets.kernel_drops``). A pre-fork worker
        sharing the master's socket reports 0: the master reads the socket itself."""
        own = 0 if self._listener_is_shared else kernel_drops(self.socket)
        return replace(super().stats(), kernel_drops=own)

    def server_activate(self) -> None:
        """Datagram sockets do not listen."""

    def shutdown_request(self, request: Any) -> None:
        self._core.closing(request)
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """The socket is shared by every request: nothing to close."""


if hasattr(socket, "AF_UNIX"):

    class UnixDatagramServer(UDPServer):
        """A datagram server on a Unix socket path (or a Linux abstract name)."""

        address_family = socket.AF_UNIX
