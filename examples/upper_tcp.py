"""A TCP line service: the server sends back each line it receives, upper-cased.

Shows ``StreamRequestHandler``: ``self.rfile`` reads the connection like a file (here line
by line) and ``self.wfile`` writes to it. The handler serves lines until the client
closes its side; the client sends one line at a time and waits for each answer.

    python3 examples/upper_tcp.py [--message TEXT]   # start, send TEXT line by line, stop
    python3 examples/upper_tcp.py --serve            # serve until Ctrl-C; nc 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve as socketserver
from sockserve.testing import serve_in_thread


class UpperHandler(socketserver.StreamRequestHandler):
    """Answer every line with the same line in upper case."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def ask(address: tuple[str, int], lines: Sequence[str]) -> list[str]:
    """Client: send each line and collect each answer, over one connection."""
    answers = []
    with socket.create_connection(address, timeout=5.0) as sock, sock.makefile("rb") as replies:
        for line in lines:
            sock.sendall(line.encode() + b"\n")
            answers.append(replies.readline().decode().rstrip("\n"))
    return answers


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
    parser.add_argument("--message", default="hello world", help="words the client sends")
    args = parser.parse_args(argv)

    server = socketserver.TCPServer((args.host, args.port), UpperHandler)
    if args.serve:
        with server:
            serve_until_signalled(server)
        return 0
    lines = args.message.split()
    with serve_in_thread(server):
        answers = ask(server.server_address, lines)
    for line, answer in zip(lines, answers, strict=True):
        print(f"sent: {line}  received: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
