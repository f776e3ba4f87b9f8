"""What the access log costs the server, per connection: on versus off, in µs of CPU.

Usage: ``python3 -m bench.access_log_cost [--connections N] [--rounds R] [--placement P]
[--before DIR]``

It starts the real command (``sockserve demo echo --mode sync``: one thread, so nothing
but the serving itself runs) once per setting, and, as baselines, the library alone
(``sockserve.TCPServer`` with the same handler, no command around it) and the stdlib's
``socketserver.TCPServer`` with that handler; churns N short
connections through each (connect, send 16 bytes, read the echo, close) from this
process, and reads the server's CPU time before and after from
``/proc/<pid>/task/*/schedstat`` (nanoseconds, where ``/proc/<pid>/stat`` counts 10 ms
ticks). The settings take turns every ``SLICE_CONNECTIONS`` connections within each
round, so drift of a shared machine hits them alike; the report gives each setting's
median µs/connection and the median of the per-round differences to "off".

``--before DIR`` also runs each command setting from another source tree (DIR/src: an
earlier commit, e.g. ``git archive COMMIT src | tar -x -C DIR``) in the same rounds, its
differences taken to its own "off": before and after from one run, on one machine state.

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
#: The settings compared, by name: extra command-line arguments, or for a server without
#: the command, the module whose ``TCPServer`` serves the demo's handler.
SETTINGS: dict[str, list[str] | str] = {
    "stdlib": "socketserver",
    "library": "sockserve",
    "off, no limits": NO_LIMITS,
    "off": [],
    "text log": ["--access-log", "{log}"],
    "json log": ["--access-log", "{log}", "--log-format", "json"],
    "metrics only": ["--metrics", "0"],
}
PLACEMENTS = ("same", "apart", "free")
#: Connections per turn: the settings take turns this often within a round, so a change
#: in the machine's load (other tenants come and go within seconds) hits them alike.
SLICE_CONNECTIONS = 250
#: Connections a fresh server serves before it is measured: imports, first allocations.
WARM_UP_CONNECTIONS = 200
READY = re.compile(r"on 127\.0\.0\.1:(\d+)[ ;]")
#: The baselines: a ``TCPServer`` (the stdlib's or the library's) serving the command's demo
#: handler, with no command around it.
PLAIN_SERVER = """
import {module} as servers
from sockserve.demo import EchoHandler
server = servers.TCPServer(("127.0.0.1", 0), EchoHandler)
print(f"serving on 127.0.0.1:{{server.server_address[1]}} ", flush=True)
server.serve_forever()
"""


def slices(total: int, size: int) -> list[int]:
    """``total`` cut into pieces of ``size`` (the last one shorter)."""
    return [min(size, total - start) for start in range(0, total, size)]


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended (the slow-client sweeper, when idle): ~0 CPU
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


#: The prefix of the settings run from the ``--before`` source tree.
BEFORE = "before: "


def launch(name: str, directory: str, before: Path | None) -> subprocess.Popen[str]:
    source = ROOT / "src"
    if name.startswith(BEFORE):
        assert before is not None
        name, source = name.removeprefix(BEFORE), before / "src"
    setting = SETTINGS[name]
    if isinstance(setting, str):
        command = [sys.executable, "-c", PLAIN_SERVER.format(module=setting)]
    else:
        log = os.path.join(directory, f"{name}{'.before' if source != ROOT / 'src' else ''}.log")
        args = [a.format(log=log) for a in setting]
        command = [sys.executable, "-m", "sockserve", "demo", "echo", "--port", "0"]
        command += ["--mode", "sync", *args]
    # One hash seed for all: dict and set layouts then cost every server the same.
    env = dict(os.environ, PYTHONPATH=str(source), PYTHONHASHSEED="0")
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def start_all(
    names: list[str], directory: str, before: Path | None, cpus: set[int] | None
) -> dict[str, tuple[subprocess.Popen[str], int]]:
    """A fresh server per setting (on ``cpus``), each warmed up: ``{name: (process, port)}``."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # the servers inherit it, every thread
    processes = {name: launch(name, directory, before) for name in names}
    servers = {}
    for name, process in processes.items():
        assert process.stdout is not None
        match = READY.search(process.stdout.readline())
        assert match, f"{name}: no ready line"
        servers[name] = (process, int(match[1]))
    return servers


def stop_all(servers: dict[str, tuple[subprocess.Popen[str], int]]) -> None:
    for process, _ in servers.values():
        process.terminate()
    for process, _ in servers.values():
        process.wait(10)


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
    options.add_argument(
        "--before", type=Path, metavar="DIR", help="also run the command from DIR/src"
    )
    args = options.parse_args()
    names = [n for n in SETTINGS if not args.only or n in args.only or n == "off"]
    if args.before is not None:
        names += [BEFORE + n for n in names if not isinstance(SETTINGS[n], str)]
    server_cpus, client_cpus = place(args.placement)
    load_before = os.getloadavg()
    per_connection: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            # Fresh processes each round: one process may run a few µs slower than its
            # twin for as long as it lives (where its memory landed); the median over
            # rounds then takes several draws of that, not one.
            servers = start_all(names, directory, args.before, server_cpus)
            try:
                if client_cpus is not None:
                    os.sched_setaffinity(0, client_cpus)
                for _, port in servers.values():
                    churn(port, WARM_UP_CONNECTIONS)
                spent = dict.fromkeys(servers, 0)
                for count in slices(args.connections, SLICE_CONNECTIONS):
                    for name, (process, port) in servers.items():
                        before = cpu_ns(process.pid)
                        churn(port, count)
                        spent[name] += cpu_ns(process.pid) - before
            finally:
                stop_all(servers)
            for name, nanoseconds in spent.items():
                per_connection[name].append(nanoseconds / args.connections / 1000)
    load_after = os.getloadavg()
    print(
        f"{args.connections} connections x {args.rounds} rounds, placement {args.placement}, "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        "server CPU per connection:"
    )
    for name, values in per_connection.items():
        off_values = per_connection[BEFORE + "off" if name.startswith(BEFORE) else "off"]
        deltas = [v - off for v, off in zip(values, off_values, strict=True)]
        print(
            f"  {name:22s} median {statistics.median(values):6.2f} µs"
            f"  (rounds: {', '.join(f'{v:.1f}' for v in values)})"
            f"  vs off: {statistics.median(deltas):+.2f} µs"
        )


if __name__ == "__main__":
    main()
