"""A pre-allocated pool: one plain TCPServer, several threads all running serve_forever().

Shows how to bound concurrency without a mixin. A ``ThreadingMixIn`` server starts a
thread per connection, however many arrive. Here ``--workers`` threads share one
listening socket instead: whichever is idle accepts the next connection and serves it to
the end, so at most that many clients are served at once and the rest wait in the
kernel's queue. One ``shutdown()`` stops every loop.

The handler answers each line with the worker's name. The demo keeps one connection per
worker open at once, so every worker has to take one.

    python3 examples/worker_pool.py [--workers N]
    python3 examples/worker_pool.py --serve      # until Ctrl-C; nc 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from types import FrameType

import sockserve as socketserver


class WorkerEchoHandler(socketserver.StreamRequestHandler):
    """Answer each line with ``<worker name>: <line>`` until the client closes."""

    def handle(self) -> None:
        name = threading.current_thread().name
        for line in self.rfile:
            self.wfile.write(f"{name}: ".encode() + line)


def start_workers(
    server: socketserver.BaseServer, count: int, *, daemon: bool = False
) -> list[threading.Thread]:
    """Start ``count`` threads, each running ``server.serve_forever()``."""
    workers = [
        threading.Thread(target=server.serve_forever, name=f"worker-{n}", daemon=daemon)
        for n in range(1, count + 1)
    ]
    for worker in workers:
        worker.start()
    return workers


def serve_until_signalled(server: socketserver.BaseServer, workers: int) -> None:
    """Start the pool, print the ready line, and stop every worker on SIGINT or SIGTERM."""
    received = threading.Event()

    def record(signum: int, frame: FrameType | None) -> None:
        received.set()  # only record it; the main thread acts

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Daemon workers: shutdown() stops every loop that is running, after its current
        # request, but a thread that had not yet reached serve_forever() when the signal
        # came would start its loop afterwards. It must not keep the process alive.
        start_workers(server, workers, daemon=True)
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        received.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    server.shutdown()  # returns when every running loop has left serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--serve", action="store_true", help="serve until SIGINT/SIGTERM")
    parser.add_argument("--workers", type=int, default=4, help="size of the pool")
    args = parser.parse_args(argv)

    with socketserver.TCPServer((args.host, args.port), WorkerEchoHandler) as server:
        if args.serve:
            serve_until_signalled(server, args.workers)
            return 0

        workers = start_workers(server, args.workers)
        try:
            with ExitStack() as clients:
                for n in range(1, args.workers + 1):
                    # Earlier connections stay open, keeping their workers busy, so this
                    # one must be served by a worker that is still free.
                    sock = clients.enter_context(
                        socket.create_connection(server.server_address, timeout=5.0)
                    )
                    replies = clients.enter_context(sock.makefile("rb"))
                    sock.sendall(f"hello {n}\n".encode())
                    print(f"received: {replies.readline().decode().rstrip()}")
        finally:
            server.shutdown()  # returns when every worker has left serve_forever()
            for worker in workers:
                worker.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
