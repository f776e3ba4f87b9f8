"""What the access log costs the server, per connection: on versus off, in µs of CPU.

Usage: ``python3 -m bench.access_log_cost [--connections N] [--rounds R]``

It starts the real command (``sockserve demo echo --mode sync``: one thread, so nothing
but the serving itself runs) once per setting, churns N short connections through it
(connect, send 16 bytes, read the echo, close) from this process, and reads the
server's CPU time before and after from ``/proc/<pid>/task/*/schedstat`` (nanoseconds,
where ``/proc/<pid>/stat`` counts 10 ms ticks). The settings take turns within each
round, so drift of a shared machine hits them alike; the report gives each setting's
median µs/connection and the median of the per-round differences to "off".
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"0123456789abcde\n"
#: The settings compared, by name: extra command-line arguments.
SETTINGS: dict[str, list[str]] = {
    "off": [],
    "text log": ["--access-log", "{log}"],
    "json log": ["--access-log", "{log}", "--log-format", "json"],
    "metrics only": ["--metrics", "0"],
}
READY = re.compile(r"on 127\.0\.0\.1:(\d+) ")


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def churn(port: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(PAYLOAD)
            received = b""
            while len(received) < len(PAYLOAD):
                received += client.recv(100)
            client.shutdown(socket.SHUT_WR)
            client.recv(100)


def start(name: str, directory: str) -> tuple[subprocess.Popen[str], int]:
    args = [a.format(log=os.path.join(directory, f"{name}.log")) for a in SETTINGS[name]]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "demo", "echo", "--port", "0", "--mode", "sync"] + args,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    match = READY.search(process.stdout.readline())
    assert match, "no ready line"
    return process, int(match[1])


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--connections", type=int, default=5000)
    options.add_argument("--rounds", type=int, default=5)
    args = options.parse_args()
    per_connection: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as directory:
        servers = {name: start(name, directory) for name in SETTINGS}
        try:
            for _, port in servers.values():
                churn(port, 200)  # warm up: imports, first allocations
            for _ in range(args.rounds):
                for name, (process, port) in servers.items():
                    before = cpu_ns(process.pid)
                    churn(port, args.connections)
                    spent = cpu_ns(process.pid) - before
                    per_connection[name].append(spent / args.connections / 1000)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)
    print(f"{args.connections} connections x {args.rounds} rounds, server CPU per connection:")
    for name, values in per_connection.items():
        deltas = [v - off for v, off in zip(values, per_connection["off"], strict=True)]
        print(
            f"  {name:13s} median {statistics.median(values):6.2f} µs"
            f"  (rounds: {', '.join(f'{v:.1f}' for v in values)})"
            f"  vs off: {statistics.median(deltas):+.2f} µs"
        )


if __name__ == "__main__":
    main()
