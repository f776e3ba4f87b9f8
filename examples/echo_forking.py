"""A forking echo server: every connection is served by a child process of its own.

Shows ``ForkingMixIn`` (POSIX only). The reply starts with the pid of the process that
served it, which is never the server's own. ``server_close()`` waits for the children.

The demo stays on one thread on purpose: fork() copies only the calling thread, so
forking while other threads hold locks can deadlock the child (Python 3.12 warns about
it). The clients connect and send first, the kernel queues their connections, and then
one ``handle_request()`` per client forks a child for it.

    python3 examples/echo_forking.py [--clients N]
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from contextlib import ExitStack

import sockserve as socketserver

#: Bytes asked of each recv(); the echo has no framing.
CHUNK_BYTES = 4096


class ForkingEchoServer(socketserver.ForkingMixIn, socketserver.TCPServer):
    """A TCPServer that forks a child to serve each connection."""


class PidEchoHandler(socketserver.BaseRequestHandler):
    """Reply ``<pid>: `` followed by the echo of everything the client sends."""

    def handle(self) -> None:
        self.request.sendall(f"{os.getpid()}: ".encode())
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
    parser.add_argument("--clients", type=int, default=3, help="connections to serve")
    args = parser.parse_args(argv)

    # Leaving the block closes the clients, then the server (which reaps the children).
    with ForkingEchoServer((args.host, args.port), PidEchoHandler) as server, ExitStack() as es:
        print(f"server process: {os.getpid()}")
        socks = [
            es.enter_context(send_message(server.server_address, f"hello {n}".encode()))
            for n in range(1, args.clients + 1)
        ]
        for _ in socks:
            server.handle_request()  # accept one queued connection, fork, return at once
        for sock in socks:
            print(f"received: {read_reply(sock).decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
