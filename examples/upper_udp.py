"""A UDP service: the server answers each datagram with the same bytes upper-cased.

Shows ``UDPServer``. There is no connection: each datagram is one request, and
``self.request`` is the pair ``(data, socket)``. The handler answers with
``socket.sendto(..., self.client_address)``. ``DatagramRequestHandler`` offers the same
through ``rfile``/``wfile``; this example keeps to the raw pair.

    python3 examples/upper_udp.py [--message TEXT]   # start, send one datagram, stop
    python3 examples/upper_udp.py --serve            # until Ctrl-C; nc -u 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve as socketserver
from sockserve.testing import serve_in_thread

#: The largest datagram the client accepts as an answer (the largest UDP payload).
MAX_DATAGRAM_BYTES = 65535


class UpperDatagramHandler(socketserver.BaseRequestHandler):
    """Answer the datagram with its upper-cased bytes."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


def ask(address: tuple[str, int], message: bytes) -> bytes:
    """Client: send one datagram and wait (at most 5 s) for the answer."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.sendto(message, address)  # no connect(): UDP addresses every datagram
        answer, _ = sock.recvfrom(MAX_DATAGRAM_BYTES)
    return answer


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
    parser.add_argument("--message", default="hello world", help="what the client sends")
    args = parser.parse_args(argv)

    server = socketserver.UDPServer((args.host, args.port), UpperDatagramHandler)
    if args.serve:
        with server:
            serve_until_signalled(server)
        return 0
    with serve_in_thread(server):
        answer = ask(server.server_address, args.message.encode())
    print(f"sent:     {args.message}")
    print(f"received: {answer.decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
