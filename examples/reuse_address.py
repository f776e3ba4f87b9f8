"""Restart on the same port at once: the ``allow_reuse_address`` class attribute.

Shows why servers set ``allow_reuse_address = True``. When the server side closes a TCP
connection first, the kernel keeps that connection's port in TIME_WAIT for a while
(60 s on Linux). Until then a new server cannot bind the port unless both sockets set
``SO_REUSEADDR``. Setting the attribute on a subclass makes ``server_bind()`` set it;
changing ``TCPServer.allow_reuse_address`` itself would change every server in the
process.

The demo serves one client with each class, closes the server, and binds a new one to
the same port right away.

    python3 examples/reuse_address.py
    python3 examples/reuse_address.py --serve --port 9000   # stop it, start it again
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve as socketserver
from sockserve.testing import serve_in_thread


class ReusableTCPServer(socketserver.TCPServer):
    """A TCPServer that sets SO_REUSEADDR before binding."""

    allow_reuse_address = True


class OneLineEchoHandler(socketserver.StreamRequestHandler):
    """Send back one line, then close: the server closes first, as HTTP/1.0 servers do."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def echo_line(address: tuple[str, int], line: str) -> str:
    """Client: send one line, read the answer, and wait until the server has closed."""
    with socket.create_connection(address, timeout=5.0) as sock, sock.makefile("rb") as replies:
        sock.sendall(line.encode() + b"\n")
        answer = replies.readline()
        replies.read()  # b"" once the server has closed its end (it closed first)
    return answer.decode().rstrip("\n")


def restart(server_class: type[socketserver.TCPServer], address: tuple[str, int]) -> str:
    """Serve one client, close the server, then bind a new one to the same port."""
    with serve_in_thread(server_class(address, OneLineEchoHandler)) as first:
        host, port = first.server_address
        echo_line((host, port), "hello")
    try:
        second = server_class((host, port), OneLineEchoHandler)
    except OSError as exc:  # sockserve raises AddressInUseError, an OSError
        return f"{server_class.__name__}: could not bind port {port} again: {exc}"
    second.server_close()
    return f"{server_class.__name__}: bound port {port} again at once"


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
    args = parser.parse_args(argv)

    if args.serve:
        with ReusableTCPServer((args.host, args.port), OneLineEchoHandler) as server:
            serve_until_signalled(server)
        return 0
    # Without the option, on a fresh port: its TIME_WAIT would also block the reusable
    # server (both sockets must set SO_REUSEADDR).
    print(restart(socketserver.TCPServer, (args.host, 0)))
    print(restart(ReusableTCPServer, (args.host, args.port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
