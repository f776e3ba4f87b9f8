"""Connection churn with the PROXY protocol on and off. Prints; asserts nothing.

Each connection is the shortest useful one: connect, (a v2 header,) one line, its echo,
the server closes. The server runs in its own process and session (thread pool, or
async on asyncio), so its CPU time is read from /proc (``procstat.sample_session``) apart
from the client's; the figure that matters is the server's CPU per connection, and how
much the header prelude adds to it. The client is Python too (``--clients`` threads), so
the rate is bounded by the client on a small machine: read it as a comparison::

    PYTHONPATH=src python3 bench/proxy_churn.py [--connections 4000] [--clients 2] [--rounds 3]

Each configuration runs ``--rounds`` times, PROXY off and on interleaved so that a
neighbour's burst hits both alike; the medians are printed. On a loaded, shared
machine compare within one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.procstat`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import sample_session
from sockserve.proxy_protocol import encode_v2

MODES = ("pool", "async")
HEADER = encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443))
LINE = b"ping\n"
TIMEOUT = 10.0


def serve(mode: str, proxy: bool) -> None:
    """The server process: print the port, serve until killed."""
    import sockserve

    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class AsyncEcho(sockserve.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            self.writer.write(await self.reader.readline())

    settings: dict[str, Any] = {}
    if proxy:
        settings = {"proxy_protocol": "v2", "trusted_proxies": ["127.0.0.1"]}
    server: Any
    if mode == "pool":
        server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=8, **settings)
    else:
        server = sockserve.AsyncTCPServer(
            ("127.0.0.1", 0), AsyncEcho, event_loop="asyncio", **settings
        )
    print(server.server_address[1], flush=True)
    server.serve_forever()


def churn(port: int, count: int, prefix: bytes) -> None:
    payload = prefix + LINE
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as client:
            client.sendall(payload)
            reply = b""
            while chunk := client.recv(64):
                reply += chunk
            if reply != LINE:
                raise SystemExit(f"unexpected reply {reply!r}")


def measure(mode: str, proxy: bool, connections: int, clients: int) -> tuple[float, float]:
    """Connections per second and server CPU µs per connection."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode] + (["--proxy"] if proxy else []),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ},
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        prefix = HEADER if proxy else b""
        churn(port, 200, prefix)  # warm up: imports, thread pool, caches
        before = sample_session(server.pid).cpu_s
        started = time.perf_counter()
        per_client = connections // clients
        threads = [
            threading.Thread(target=churn, args=(port, per_client, prefix)) for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = sample_session(server.pid).cpu_s - before
        done = per_client * clients
        return done / elapsed, cpu / done * 1e6
    finally:
        server.kill()
        server.wait(TIMEOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.proxy)
        return
    print(
        f"{args.connections} connections, {args.clients} client threads, one line each; "
        f"median of {args.rounds} rounds, off and on interleaved"
    )
    for mode in MODES:
        figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for proxy in (False, True):
                figures[proxy].append(measure(mode, proxy, args.connections, args.clients))
        for proxy, runs in figures.items():
            rate = statistics.median(run[0] for run in runs)
            cpu_us = statistics.median(run[1] for run in runs)
            label = f"{mode}, PROXY v2 {'on' if proxy else 'off'}"
            print(f"{label:<22} {rate:8.0f} connections/s  {cpu_us:7.1f} µs server CPU each")


if __name__ == "__main__":
    main()
