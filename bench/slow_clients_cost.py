"""The cost of the slow-client limits on a small-message ping-pong: off against on.

One process, a thread-pool server (or the async server) and one client thread
exchanging 64-byte lines over loopback for ``--seconds``; printed: the process's CPU
time per exchange (client and server together: the difference is the limits' cost),
median of ``--rounds`` alternating runs. "on" sets all four limits, generous enough
that nothing is cut, so every sweep runs and judges the connection.

    PYTHONPATH=src python3 bench/slow_clients_cost.py [--mode pool|async] [--seconds 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Any

import sockserve
from sockserve.testing import serve_in_thread

LIMITS_ON = {
    "idle_timeout": 60.0,
    "connection_deadline": 3600.0,
    "min_transfer_rate": 500.0,
    "min_transfer_window": 0.2,  # the shortest sweep interval: the most sweeps
    "write_timeout": 60.0,
}
LINE = b"x" * 63 + b"\n"


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncEcho(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            self.writer.write(line)
            await self.writer.drain()


def run(mode: str, seconds: float, limits: dict[str, Any]) -> float:
    if mode == "async":
        server: Any = sockserve.AsyncTCPServer(("127.0.0.1", 0), AsyncEcho, **limits)
    else:
        server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, **limits)
    with (
        serve_in_thread(server) as running,
        socket.create_connection(running.server_address, timeout=5) as client,
    ):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        reader = client.makefile("rb")
        count = 0
        cpu = time.process_time()
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            client.sendall(LINE)
            reader.readline()
            count += 1
        cpu = time.process_time() - cpu
        reader.close()
    return cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="pool", choices=("pool", "async"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    off, on = [], []
    for _ in range(args.rounds):
        off.append(run(args.mode, args.seconds, {}))
        on.append(run(args.mode, args.seconds, LIMITS_ON))
    print(
        f"{args.mode}: CPU µs per exchange (client+server), median of {args.rounds}: "
        f"limits off {statistics.median(off):.2f}, on {statistics.median(on):.2f} "
        f"(off {min(off):.2f}-{max(off):.2f}, on {min(on):.2f}-{max(on):.2f})"
    )


if __name__ == "__main__":
    main()
