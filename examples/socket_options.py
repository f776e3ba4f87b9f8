"""Set socket options before binding: ``bind_and_activate=False``, then bind and listen.

Shows the three-step construction. ``TCPServer(address, Handler, bind_and_activate=False)``
creates ``server.socket`` without binding it, so options that must precede ``bind()``
(here ``SO_REUSEADDR``) can be set on it; then ``server_bind()`` and
``server_activate()`` do what the constructor would have done.

    python3 examples/socket_options.py            # start, show the option, echo, stop
    python3 examples/socket_options.py --serve    # serve until Ctrl-C; nc 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve as socketserver
from sockserve.testing import serve_in_thread


class LineEchoHandler(socketserver.StreamRequestHandler):
    """Send back every line until the client closes."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def open_server(host: str, port: int) -> socketserver.TCPServer:
    """A listening TCPServer whose socket had SO_REUSEADDR set before bind()."""
    server = socketserver.TCPServer((host, port), LineEchoHandler, bind_and_activate=False)
    try:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()  # bind; server.server_address becomes the real address
        server.server_activate()  # listen
    except BaseException:
        server.server_close()  # the constructor would have closed the socket too
        raise
    return server


def echo_line(address: tuple[str, int], line: str) -> str:
    """Client: send one line, return the line that comes back."""
    with socket.create_connection(address, timeout=5.0) as sock, sock.makefile("rb") as replies:
        sock.sendall(line.encode() + b"\n")
        return replies.readline().decode().rstrip("\n")


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

    server = open_server(args.host, args.port)
    if args.serve:
        with server:
            serve_until_signalled(server)
        return 0
    with serve_in_thread(server):
        reuse = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        print(f"SO_REUSEADDR on the listening socket: {bool(reuse)}")
        print(f"received: {echo_line(server.server_address, 'hello')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
