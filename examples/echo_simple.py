"""The smallest useful server: echo every byte back until the client hangs up.

Shows: a ``BaseRequestHandler`` subclass that overrides only ``handle()`` and talks to
``self.request`` (the connected socket) with ``recv()`` and ``sendall()``. A plain
``TCPServer`` serves one connection at a time, which is all an echo needs.

    python3 examples/echo_simple.py             # start, echo one message, stop
    python3 examples/echo_simple.py --serve     # serve until Ctrl-C; try nc 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve as socketserver
from sockserve.testing import serve_in_thread

#: Bytes asked of each recv(). An echo has no framing: it returns whatever has arrived.
CHUNK_BYTES = 4096


class EchoHandler(socketserver.BaseRequestHandler):
    """Send back everything the client sends, until it closes its side."""

    def handle(self) -> None:
        while data := self.request.recv(CHUNK_BYTES):
            self.request.sendall(data)


def echo(address: tuple[str, int], message: bytes, *, timeout: float = 5.0) -> bytes:
    """Client: send ``message``, close our side, and read the echo until the server closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)  # the handler's recv() returns b"": message complete
        chunks = []
        while chunk := sock.recv(CHUNK_BYTES):
            chunks.append(chunk)
    return b"".join(chunks)


def serve_until_signalled(server: socketserver.BaseServer) -> None:
    """Print the ready line, then serve on this thread until SIGINT or SIGTERM."""

    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()  # on the loop's own thread sockserve only asks: no deadlock

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--serve", action="store_true", help="serve until SIGINT/SIGTERM")
    parser.add_argument("--message", default="Hello, sockserve", help="what the client sends")
    args = parser.parse_args(argv)

    server = socketserver.TCPServer((args.host, args.port), EchoHandler)
    if args.serve:
        with server:
            serve_until_signalled(server)
        return 0
    with serve_in_thread(server):  # serve_forever() on a thread; shut down and closed after
        reply = echo(server.server_address, args.message.encode())
    print(f"sent:     {args.message}")
    print(f"received: {reply.decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
