"""Server instructions per TLS echo message and per handshake, under callgrind.

Timing on a shared 2-core machine moves by 10% from run to run; instruction counts do
not. Each server of ``tls_quick.py`` runs under ``valgrind --tool=callgrind`` twice, for
two amounts of work, and the difference of the two totals divided by the difference of
the work is what one unit costs the server (start-up, imports and the idle loop cancel
out). The client is a blocking ``ssl`` socket in this process, one message at a time, so
the server sees the same sequence of reads every run:

- ``echo``: ``--connections`` connections (one handshake each), then that many
  64-byte lines echoed per round, ``--messages`` in all;
- ``handshakes``: connect, handshake, one line echoed, close; ``--handshakes`` times.

    python bench/tls_instructions.py [--servers sockserve-async,uvloop-streams]
                                     [--messages 2000] [--handshakes 100]
                                     [--baseline-src DIR]

``--baseline-src DIR`` adds ``sockserve-async-baseline``: the server from another
checkout's ``src`` (see ``tls_quick.py``).

Slow (valgrind runs the server about 50 times slower): a minute or two per server.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tls_quick import SERVER, SRC, make_certificates  # noqa: E402

LINE = b"x" * 63 + b"\n"
#: Seconds a reply may take: the server runs under valgrind, about 50 times slower.
REPLY_TIMEOUT_SECONDS = 120.0


def client_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_SECONDS)
    return context.wrap_socket(raw, server_hostname="example.test")


def echo_once(conn: ssl.SSLSocket) -> None:
    conn.sendall(LINE)
    received = b""
    while not received.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("server closed")
        received += chunk


def drive(workload: str, amount: int, connections: int, port: int, ca: str) -> None:
    context = client_context(ca)
    if workload == "handshakes":
        for _ in range(amount):
            with connect(port, context) as conn:
                echo_once(conn)
        return
    conns = [connect(port, context) for _ in range(connections)]
    try:
        for _ in range(amount // connections):
            for conn in conns:
                echo_once(conn)
    finally:
        for conn in conns:
            conn.close()


def instructions(
    kind: str, workload: str, amount: int, args: argparse.Namespace, files: dict[str, str]
) -> int:
    """Total instructions the server process ran (callgrind's Ir) for ``amount`` units."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--dump-line=no", "--compress-strings=no", sys.executable, "-c", SERVER,
            kind.removesuffix("-baseline"), files["cert"], files["key"],
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=SRC)
        if kind.endswith("-baseline"):
            env["PYTHONPATH"] = str(Path(args.baseline_src) / "src")
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            drive(workload, amount, args.connections, port, files["ca"])
        finally:
            server.send_signal(signal.SIGTERM)  # callgrind writes its totals on the way out
            server.wait(timeout=120)
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"{kind}: no callgrind totals")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="sockserve-async,uvloop-streams")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--handshakes", type=int, default=100)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--workloads", default="echo,handshakes")
    parser.add_argument("--baseline-src", help="a checkout to run as sockserve-async-baseline")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if args.baseline_src:
        servers.append("sockserve-async-baseline")
    with tempfile.TemporaryDirectory() as directory:
        files = make_certificates(directory)
        for workload in args.workloads.split(","):
            full = args.messages if workload == "echo" else args.handshakes
            unit = "msg" if workload == "echo" else "handshake"
            for kind in servers:
                small = instructions(kind, workload, full // 5, args, files)
                large = instructions(kind, workload, full, args, files)
                per_unit = (large - small) / (full - full // 5)
                print(f"{workload:10} {kind:24} {per_unit:12,.0f} instructions/{unit}", flush=True)


if __name__ == "__main__":
    main()
