"""Slowloris against the thread-pool and async modes: are normal clients still served?

For each mode, a server runs in a subprocess (a line echo, ``min_transfer_rate`` on);
the bench process runs the clients with asyncio: ``--normal`` clients ping-pong lines as
fast as they are answered, first alone (the baseline), then beside ``--slow``
connections that each send one byte a second and never a whole line. Printed per mode:
the normal clients' success % and exchanges/s in both runs, and how many slow
connections the server closed and when (they must all be closed by their limit: about
``--window`` seconds, plus a sweep).

    PYTHONPATH=src python3 bench/slowloris.py [--seconds 15] [--slow 500] [--normal 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_SCRIPT = """
import sys, sockserve
mode, window, rate, threads = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
class Echo(sockserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
class AsyncEcho(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        async for line in self.reader:
            self.writer.write(line)
            await self.writer.drain()
limits = dict(min_transfer_rate=rate, min_transfer_window=window, idle_timeout=60.0)
if mode == "async":
    server = sockserve.AsyncTCPServer(("127.0.0.1", 0), AsyncEcho, **limits)
else:
    server = sockserve.ThreadPoolTCPServer(
        ("127.0.0.1", 0), Echo, max_workers=threads, max_pending=threads, **limits)
    server.daemon_threads = True
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
server.server_close()
print(dict(server.stats().peer_faults), flush=True)
"""

#: A normal exchange slower than this counts as failed.
REPLY_TIMEOUT = 5.0


@dataclass
class NormalResult:
    exchanges: int = 0
    failures: int = 0


async def normal_client(port: int, stop_at: float, result: NormalResult) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), REPLY_TIMEOUT
        )
    except (OSError, TimeoutError):
        result.failures += 1
        return
    line = b"ping %d\n" % id(result)
    try:
        while time.monotonic() < stop_at:
            writer.write(line)
            try:
                reply = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            except (OSError, TimeoutError):
                reply = b""
            if reply != line:
                result.failures += 1
                return
            result.exchanges += 1
    finally:
        writer.close()


async def slow_client(port: int, stop_at: float, started: float, closed_after: list[float]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        while time.monotonic() < stop_at:
            writer.write(b"x")
            try:
                data = await asyncio.wait_for(reader.read(1), 1.0)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:  # the server ended it
                closed_after.append(time.monotonic() - started)
                return
    finally:
        writer.close()


async def run_clients(
    port: int, seconds: float, normal: int, slow: int
) -> tuple[NormalResult, list[float]]:
    started = time.monotonic()
    stop_at = started + seconds
    closed_after: list[float] = []
    result = NormalResult()
    slow_tasks = [slow_client(port, stop_at, started, closed_after) for _ in range(slow)]
    normal_tasks = [normal_client(port, stop_at, result) for _ in range(normal)]
    await asyncio.gather(*slow_tasks, *normal_tasks)
    return result, closed_after


def serve(mode: str, window: float, rate: float, threads: int) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, mode, str(window), str(rate), str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def measure(
    mode: str, args: argparse.Namespace, slow: int
) -> tuple[NormalResult, list[float], str]:
    process, port = serve(mode, args.window, args.rate, args.threads)
    try:
        result, closed = asyncio.run(run_clients(port, args.seconds, args.normal, slow))
    finally:
        process.send_signal(2)
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
    return result, closed, out.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--normal", type=int, default=50)
    parser.add_argument("--window", type=float, default=5.0, help="min_transfer_window")
    parser.add_argument("--rate", type=float, default=500.0, help="min_transfer_rate")
    parser.add_argument("--threads", type=int, default=1024, help="pool mode's max_workers")
    parser.add_argument("--modes", default="pool,async")
    args = parser.parse_args()
    print(
        f"{args.normal} normal ping-pong clients, {args.slow} slowloris (1 byte/s), "
        f"{args.seconds:.0f} s per run; min_transfer_rate={args.rate:.0f} bytes/s over "
        f"{args.window:.0f} s; pool max_workers={args.threads}"
    )
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    for mode in args.modes.split(","):
        base, _, _ = measure(mode, args, 0)
        under, closed, faults = measure(mode, args, args.slow)
        for label, result in (("alone", base), ("under attack", under)):
            total = result.exchanges + result.failures
            success = 100.0 * result.exchanges / total if total else 0.0
            print(
                f"{mode:6} {label:13} normal: {success:6.2f}% success, "
                f"{result.exchanges / args.seconds:9.0f} exchanges/s"
            )
        if closed:
            print(
                f"{mode:6} slow connections closed by the server: {len(closed)}/{args.slow},"
                f" after {min(closed):.1f}-{max(closed):.1f} s; server peer_faults {faults}"
            )
        else:
            print(f"{mode:6} slow connections closed by the server: 0/{args.slow}")


if __name__ == "__main__":
    main()
