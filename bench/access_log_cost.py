"""What the access log costs the server, per connection: on versus off, in µs of CPU.

Usage: ``python3 -m bench.access_log_cost [--connections N] [--rounds R] [--placement P]``

It starts the real command (``sockserve demo echo --mode sync``: one thread, so nothing
but the serving itself runs) once per setting, and, as the baseline, the library alone
(``sockserve.TCPServer`` with the same handler, no command around it); churns N short
connections through each (connect, send 16 bytes, read the echo, close) from this
process, and reads the server's CPU time before and after from
``/proc/<pid>/task/*/schedstat`` (nanoseconds, where ``/proc/<pid>/stat`` counts 10 ms
ticks). The settings take turns within each round, so drift of a shared machine hits
them alike; the report gives each setting's median µs/connection and the median of the
per-round differences to "off".

Placement: by default (``same``) the servers and this client run on one CPU. On a
loopback ping-pong, where the scheduler puts the two ends dominates the server's CPU
time: on two CPUs every send wakes the other end across CPUs (an IPI; in a VM a
trip through the hypervisor) and the server wakes from idle each time, which tripled the
cost of every server here, the stdlib's included (measured: 27 µs on one CPU, 111 µs on
two, ``--placement apart``). Left to the scheduler (``free``) a run switches between the
two regimes as the machine's load changes: a quiet machine has an idle CPU to spread
them onto. Pinning to one CPU measures the server's own work.
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
#: The command's slow-client limits, all off (``sockserve serve --help``).
NO_LIMITS = [
    "--idle-timeout",
    "off",
    "--connection-deadline",
    "off",
    "--min-transfer-rate",
    "off",
    "--write-timeout",
    "off",
]
#: The settings compared, by name: extra command-line arguments (None: the library alone).
SETTINGS: dict[str, list[str] | None] = {
    "library": None,
    "off, no limits": NO_LIMITS,
    "off": [],
    "text log": ["--access-log", "{log}"],
    "json log": ["--access-log", "{log}", "--log-format", "json"],
    "metrics only": ["--metrics", "0"],
}
PLACEMENTS = ("same", "apart", "free")
READY = re.compile(r"on 127\.0\.0\.1:(\d+)[ ;]")
#: The baseline: the library serving the command's demo handler, with no command around it.
LIBRARY_SERVER = """
import sockserve
from sockserve.demo import EchoHandler
server = sockserve.TCPServer(("127.0.0.1", 0), EchoHandler)
print(f"serving on 127.0.0.1:{server.server_address[1]} ", flush=True)
server.serve_forever()
"""


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
    setting = SETTINGS[name]
    if setting is None:
        command = [sys.executable, "-c", LIBRARY_SERVER]
    else:
        args = [a.format(log=os.path.join(directory, f"{name}.log")) for a in setting]
        command = [sys.executable, "-m", "sockserve", "demo", "echo", "--port", "0"]
        command += ["--mode", "sync", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    match = READY.search(process.stdout.readline())
    assert match, "no ready line"
    return process, int(match[1])


def place(placement: str) -> tuple[set[int] | None, set[int] | None]:
    """The CPUs for the servers and for the client (None: wherever the scheduler likes)."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "free":
        return None, None
    if placement == "apart":
        if len(cpus) < 2:
            raise SystemExit("--placement apart needs two CPUs")
        return {cpus[-2]}, {cpus[-1]}
    return {cpus[-1]}, {cpus[-1]}


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--connections", type=int, default=5000)
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--placement", choices=PLACEMENTS, default="same")
    options.add_argument(
        "--only", nargs="+", choices=list(SETTINGS), help="compare these settings (and off)"
    )
    args = options.parse_args()
    names = [n for n in SETTINGS if not args.only or n in args.only or n == "off"]
    server_cpus, client_cpus = place(args.placement)
    load_before = os.getloadavg()
    per_connection: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as directory:
        if server_cpus is not None:
            os.sched_setaffinity(0, server_cpus)  # the servers inherit it, every thread
        servers = {name: start(name, directory) for name in names}
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)
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
    load_after = os.getloadavg()
    print(
        f"{args.connections} connections x {args.rounds} rounds, placement {args.placement}, "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        "server CPU per connection:"
    )
    for name, values in per_connection.items():
        deltas = [v - off for v, off in zip(values, per_connection["off"], strict=True)]
        print(
            f"  {name:14s} median {statistics.median(values):6.2f} µs"
            f"  (rounds: {', '.join(f'{v:.1f}' for v in values)})"
            f"  vs off: {statistics.median(deltas):+.2f} µs"
        )


if __name__ == "__main__":
    main()
