"""A threaded echo server: every connection is served on a thread of its own.

Shows ``ThreadingMixIn``. The mixin comes first in the bases, so its
``process_request()`` (start a thread) replaces the server's (serve right here).
``ThreadingTCPServer`` is exactly this class, ready-made. The reply starts with the name
of the thread that served it; the demo keeps several connections open at once, and each
gets its own thread.

    python3 examples/echo_threaded.py [--clients N]
"""

from __future__ import annotations

import argparse
import socket
import threading
from collections.abc import Sequence
from contextlib import ExitStack

import sockserve as socketserver
from sockserve.testing import serve_in_thread

#: Bytes asked of each recv(); the echo has no framing.
CHUNK_BYTES = 4096


class ThreadedEchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A TCPServer that hands each connection to a new thread."""


class ThreadNameEchoHandler(socketserver.BaseRequestHandler):
    """Reply ``<thread name>: `` followed by the echo of everything the client sends."""

    def handle(self) -> None:
        self.request.sendall(f"{threading.current_thread().name}: ".encode())
        while data := self.request.recv(CHUNK_BYTES):
            self.request.sendall(data)


def send_message(address: tuple[str, int], message: bytes) -> socket.socket:
    """Client, first half: connect, send the whole message, and close our sending side."""
    sock = socket.create_connection(address, timeout=5.0)
    sock.sendall(message)
    sock.shutdown(socket.SHUT_WR)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Client, second half: read until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(CHUNK_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--clients", type=int, default=3, help="connections open at once")
    args = parser.parse_args(argv)

    server = ThreadedEchoServer((args.host, args.port), ThreadNameEchoHandler)
    with serve_in_thread(server), ExitStack() as clients:
        print(f"main thread: {threading.current_thread().name}")
        # Every connection is open (and its handler running) before any reply is read.
        socks = [
            clients.enter_context(send_message(server.server_address, f"hello {n}".encode()))
            for n in range(1, args.clients + 1)
        ]
        for sock in socks:
            print(f"received: {read_reply(sock).decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
