"""Per-client tables under a flood of distinct clients: ``PYTHONPATH=src python3 -m
bench.client_table_flood [--clients N] [--mode async|threading] [--table N]``.

A server runs in a child process with ``client_rate`` (one token per 100 s, so no bucket
refills during the run and only the cap frees room), ``client_burst=1``,
``max_connections_per_client=4`` and ``client_rate_max_clients`` (default 65,536, the
library's default). This process then connects from N distinct loopback addresses
(Linux routes all of 127.0.0.0/8 to ``lo``; client ``i`` binds 127.a.b.c from ``i``),
closes each at once, and finally checks that an ordinary client is still served. It
prints the elapsed time, the server's RSS before and after (``/proc/<pid>/status``
VmRSS), its counters and the tables' sizes. Linux only; no asserts: figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The server child: serve in a thread; for each line on stdin, once nothing is in flight,
#: print a JSON report.
SERVER = """
import json, sys, threading, time
import sockserve

class Echo(sockserve.{handler}):
    {body}

server = sockserve.{server_class}(
    ("127.0.0.1", 0), Echo, client_rate=0.01, client_burst=1,
    client_rate_max_clients={table}, max_connections_per_client=4,
)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps(server.server_address[1]), flush=True)
for _ in sys.stdin:
    server._core.limiter.wait_idle(time.monotonic() + 10)  # the last clients' EOFs
    stats = server.stats()
    report = dict(server.client_limits.tables(), accepted=stats.accepted,
                  active=stats.active, rejected=stats.rejected)
    print(json.dumps(report), flush=True)
"""

HANDLERS = {
    "async": (
        "AsyncTCPServer",
        "AsyncStreamRequestHandler",
        "async def handle(self):\n"
        "        line = await self.reader.readline()\n"
        "        self.writer.write(line)\n"
        "        await self.writer.drain()",
    ),
    "threading": (
        "ThreadingTCPServer",
        "StreamRequestHandler",
        "def handle(self):\n        self.wfile.write(self.rfile.readline())",
    ),
}

#: Every client socket's timeout: only a broken run waits this long.
CLIENT_TIMEOUT = 10.0


def client_address(i: int) -> str:
    """The i-th source address, from 127.1.0.0 up (127.0.0.0/16 stays for the others)."""
    return f"127.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--mode", choices=sorted(HANDLERS), default="async")
    parser.add_argument("--table", type=int, default=65_536)
    args = parser.parse_args()
    server_class, handler, body = HANDLERS[args.mode]
    source = SERVER.format(server_class=server_class, handler=handler, body=body, table=args.table)
    child = subprocess.Popen(
        [sys.executable, "-c", source],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None
    assert stdout is not None
    try:
        port = json.loads(stdout.readline())

        def report() -> dict[str, object]:
            stdin.write("\n")
            stdin.flush()
            result: dict[str, object] = json.loads(stdout.readline())
            return result

        def exchange(source_address: str, line: bytes | None) -> bytes:
            with socket.socket() as sock:
                sock.settimeout(CLIENT_TIMEOUT)
                sock.bind((source_address, 0))
                sock.connect(("127.0.0.1", port))
                if line is None:
                    return b""
                sock.sendall(line)
                return sock.recv(100)

        exchange("127.0.0.2", b"warm-up\n")
        rss_before = rss_kib(child.pid)
        started = time.monotonic()
        for i in range(args.clients):
            exchange(client_address(i), None)
        elapsed = time.monotonic() - started
        reply = exchange("127.0.0.3", b"still served\n")
        rss_after = rss_kib(child.pid)
        figures = report()
    finally:
        stdin.close()
        child.wait(CLIENT_TIMEOUT)
    print(f"Python {sys.version.split()[0]}, {args.mode} server, table cap {args.table:,}")
    print(
        f"  {args.clients:,} distinct clients in {elapsed:.1f} s"
        f" ({args.clients / elapsed:,.0f} connections/s)"
    )
    print(
        f"  server RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB"
        f" (+{(rss_after - rss_before) / 1024:.1f} MiB)"
    )
    print(f"  tables and counters: {figures}")
    print(f"  an ordinary client afterwards: {reply!r}")


if __name__ == "__main__":
    main()
