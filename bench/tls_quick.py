"""Quick TLS figures: echo ping-pong over TLS, and handshakes per second, with server CPU.

The C load generator (``loadgen.c``) speaks plain TCP only, so this client is Python: one
process on uvloop (asyncio if missing), pinned to CPU 1, the server pinned to CPU 0.
Each server runs in its own process with the same certificate (a throw-away ``trustme``
CA, ECDSA P-256 by default, TLS 1.3):

- ``sockserve-async``: ``AsyncTCPServer`` (uvloop) with ``ssl_context``: the event loop's
  own TLS does the handshakes.
- ``uvloop-streams``: ``asyncio.start_server(..., ssl=context)`` on uvloop, the same
  handler body: what the event loop costs without sockserve.
- ``sockserve-pool``: ``ThreadPoolTCPServer`` with ``ssl_context``: the handshake is a
  prelude on the accepting loop, the handler a blocking ``StreamRequestHandler``.
- ``stdlib``: ``socketserver.ThreadingTCPServer`` with its listening socket wrapped
  (``context.wrap_socket(server.socket, server_side=True)``), the usual recipe: the
  handshake runs inside ``accept()``, on the serve loop, one client at a time.

- ``uvloop-streams-tuned`` (not run unless named in ``--servers``): ``uvloop-streams``
  with glibc's malloc told to keep big blocks on the heap (``CLIENT_MALLOC_TUNABLES``,
  below): what that server costs without the mmap/munmap per TLS record that
  ``SSLObject.read(256 KiB)`` makes glibc do for a protocol that is not buffered.

- ``--baseline-src DIR`` adds ``sockserve-async-baseline`` and
  ``sockserve-pool-baseline``: the same servers from another checkout's ``src`` (with its
  extension built), for a before/after in one interleaved run:
  ``git archive <commit> src | tar -x -C DIR`` (copy the built ``_fastpath*.so`` into
  ``DIR/src/sockserve/aio/`` if ``_fastpath.c`` did not change).

Workloads: ``echo`` keeps ``--connections`` TLS connections ping-ponging a 64-byte line;
``handshakes`` runs ``--handshakers`` clients that each connect, handshake, exchange one
line and close, again and again. Printed: the rate, and the server's CPU time (user +
system from /proc) per message or per handshake; the median of ``--rounds`` rounds.

The client's glibc is tuned (``CLIENT_MALLOC_TUNABLES``): its asyncio streams read each
TLS record with ``SSLObject.read(256 KiB)``, which glibc serves with mmap, mremap and
munmap, about 10 µs of the client's CPU per message (strace), or none at all when a
free happened to raise glibc's dynamic mmap threshold: the rates swung by 2x between
runs. The client is the bottleneck of the echo workload, so that is removed from it;
the servers run untuned.

    python bench/tls_quick.py [--seconds 3] [--rounds 3] [--connections 50]
                              [--handshakers 8] [--servers sockserve-async,...]
                              [--workloads echo,handshakes] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
SERVERS = ("sockserve-async", "uvloop-streams", "sockserve-pool", "stdlib")
#: The comparisons the issue asks for: (sockserve's server, the baseline).
RATIOS = (
    ("sockserve-async", "uvloop-streams"),
    ("sockserve-pool", "stdlib"),
    ("sockserve-async-baseline", "uvloop-streams"),
    ("sockserve-pool-baseline", "stdlib"),
)
#: glibc malloc settings for the client (and ``uvloop-streams-tuned``): 256 KiB blocks
#: come from the heap (threshold 4 MiB), and the heap is not trimmed after each one.
CLIENT_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608"

SERVER = r"""
import asyncio, os, socketserver, ssl, sys
kind, cert, key = sys.argv[1:4]
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})
import sockserve
from sockserve.tls import server_context
context = server_context(cert, key)

class Echo(sockserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)

class AsyncEcho(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        while line := await self.reader.readline():
            self.writer.write(line)
            await self.writer.drain()

class StdlibEcho(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)

def ready(port):
    print(port, flush=True)

if kind == "sockserve-async":
    server = sockserve.AsyncTCPServer(("127.0.0.1", 0), AsyncEcho, ssl_context=context,
                                      event_loop="uvloop")
    ready(server.server_address[1]); server.serve_forever()
elif kind == "sockserve-pool":
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, ssl_context=context)
    ready(server.server_address[1]); server.serve_forever()
elif kind == "stdlib":
    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        request_queue_size = 1024
    server = Server(("127.0.0.1", 0), StdlibEcho)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    ready(server.server_address[1]); server.serve_forever()
else:
    import uvloop
    async def echo(reader, writer):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()
    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context, backlog=1024)
        ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()
    uvloop.run(main())
"""

CLIENT = r"""
import asyncio, os, ssl, sys, time
port, ca, workload = sys.argv[1:4]
seconds, count = float(sys.argv[4]), int(sys.argv[5])
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {1})
context = ssl.create_default_context(cafile=ca)
LINE = b"x" * 63 + b"\n"

async def ping_pong(stop, done):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port), ssl=context,
                                                   server_hostname="example.test")
    while time.monotonic() < stop:
        writer.write(LINE)
        await reader.readline()
        done[0] += 1
    writer.close()

async def handshakes(stop, done):
    while time.monotonic() < stop:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port), ssl=context,
                                                       server_hostname="example.test")
        writer.write(LINE)
        await reader.readline()
        writer.close()
        done[0] += 1

async def main():
    done = [0]
    work = ping_pong if workload == "echo" else handshakes
    stop = time.monotonic() + seconds
    await asyncio.gather(*(work(stop, done) for _ in range(count)), return_exceptions=True)
    print(done[0])

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(
    kind: str, workload: str, args: argparse.Namespace, files: dict[str, str]
) -> tuple[float, float]:
    """(rate per second, server CPU microseconds per unit) of one run."""
    env = dict(os.environ, PYTHONPATH=SRC)
    tuned_env = dict(env, GLIBC_TUNABLES=CLIENT_MALLOC_TUNABLES)
    server_env = tuned_env if kind.endswith("-tuned") else env
    if kind.endswith("-baseline"):
        server_env = dict(env, PYTHONPATH=str(Path(args.baseline_src) / "src"))
    server_kind = kind.removesuffix("-tuned").removesuffix("-baseline")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, server_kind, files["cert"], files["key"]],
        stdout=subprocess.PIPE, text=True, env=server_env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        count = args.connections if workload == "echo" else args.handshakers
        cpu_before = cpu_seconds(server.pid)
        client_args = [port, files["ca"], workload, str(args.seconds), str(count)]
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, *client_args],
            capture_output=True, text=True, timeout=args.seconds + 30, env=tuned_env,
        )  # fmt: skip
        cpu = cpu_seconds(server.pid) - cpu_before
        done = int(client.stdout.strip() or 0)
    finally:
        server.kill()
        server.wait()
    return done / args.seconds, (cpu / done * 1e6) if done else float("nan")


def make_certificates(directory: str) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("example.test")
    files = {name: str(Path(directory) / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    leaf.private_key_pem.write_to_path(files["key"])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--handshakers", type=int, default=8)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--workloads", default="echo,handshakes")
    parser.add_argument("--baseline-src", help="a checkout to run as the *-baseline servers")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if args.baseline_src:
        servers += [f"{kind}-baseline" for kind in servers if kind.startswith("sockserve")]
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as directory:
        files = make_certificates(directory)
        for workload in args.workloads.split(","):
            unit = "msg" if workload == "echo" else "handshake"
            results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in servers}
            for _ in range(args.rounds):
                for kind in servers:  # interleaved: a slow moment hits every server alike
                    results[kind].append(run_one(kind, workload, args, files))
            print(f"{workload} ({args.rounds} rounds of {args.seconds:g} s, median):")
            medians = {
                kind: (
                    statistics.median(r for r, _ in results[kind]),
                    statistics.median(c for _, c in results[kind]),
                )
                for kind in servers
            }
            for kind, (rate, cpu) in medians.items():
                print(f"  {kind:22} {rate:10.0f} {unit}/s   server CPU {cpu:8.1f} µs/{unit}")
            for ours, theirs in RATIOS:
                if ours in medians and theirs in medians:
                    (rate, cpu), (their_rate, their_cpu) = medians[ours], medians[theirs]
                    print(
                        f"  {ours} / {theirs}: rate {rate / their_rate:.2f}x, "
                        f"CPU per {unit} {their_cpu / cpu:.2f}x (above 1: {ours} is cheaper)"
                    )
        print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
