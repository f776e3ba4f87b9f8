"""Line-oriented test clients for every transport: a timeout on every socket.

``StreamClient.receive`` returns one line; ``DatagramClient.receive`` one datagram. The
contract suite and the async suite drive servers of every kind through these.
"""

from __future__ import annotations

import socket
from typing import Any

#: Every client socket's timeout: only a failing test ever waits this long.
CLIENT_TIMEOUT = 10.0


class StreamClient:
    """A connected stream client with a timeout; ``receive`` returns one line."""

    def __init__(self, family: int, server_address: Any, bind_to: Any = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            if bind_to is not None:
                self.sock.bind(bind_to)
            self.sock.connect(server_address)
        except BaseException:
            self.sock.close()
            raise
        self._buffer = b""

    @property
    def address(self) -> Any:
        """How the server sees this client."""
        return self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next line; at end of stream whatever came before it (b"" if nothing)."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def exchange(self, data: bytes) -> bytes:
        self.send(data)
        return self.receive()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DatagramClient:
    """A bound datagram client with a timeout; ``receive`` returns one datagram."""

    def __init__(self, family: int, server_address: Any, bind_to: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            self.sock.bind(bind_to)
        except BaseException:
            self.sock.close()
            raise
        self.server_address = server_address

    @property
    def address(self) -> Any:
        return self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server_address)

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(65536)
        return data

    def exchange(self, data: bytes) -> bytes:
        self.send(data)
        return self.receive()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DatagramClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Client = StreamClient | DatagramClient
