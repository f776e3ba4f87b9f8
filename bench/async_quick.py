"""Quick comparison: sockserve's async mode against bare asyncio servers, 64-byte echoes.

Each server runs in its own process pinned to CPU 0; the client runs in another process
pinned to CPU 1 and keeps ``--connections`` persistent connections ping-ponging one
64-byte line each. Printed per server: messages per second, and the server's CPU time per
message (user + system, from /proc), which is steadier than throughput on a shared machine
and is what the server itself costs. Run it a few times; compare ratios within one run.

    python bench/async_quick.py [--seconds 3] [--connections 50] [--rounds 3]
                                [--baseline SRC_DIR] [--loops uvloop,asyncio]

``--baseline SRC_DIR`` adds ``sockserve@base``: the same handler importing sockserve from
another source tree (say a copy of ``src/`` from before a change), so before and after
are measured in one run, interleaved, on the same noisy machine.

Servers: ``sockserve`` (AsyncTCPServer + AsyncStreamRequestHandler, readline/write/drain),
``sockserve-pure`` (the same with the compiled fast path off: SOCKSERVE_PURE_PYTHON=1),
``streams`` (asyncio.start_server, the same loop body), ``protocol`` (an asyncio.Protocol
whose data_received writes back: no task, no await), ``floor`` (the least an awaiting
handler can cost: a coroutine resumed by data_received with the chunk itself, no task,
future, reader or line parsing), each on uvloop (if installed) and on the stdlib loop.
The ratios printed last are the median of the per-round ratios, and their range: a round
runs every server back to back, so a slow moment of the machine hits them all alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import select
import socket
import statistics
import subprocess
import sys
import time

MESSAGE = b"x" * 63 + b"\n"

SERVER = r"""
import asyncio, os, sys
kind, loop_name = sys.argv[1], sys.argv[2]
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

class _NextChunk:
    __slots__ = ()
    def __await__(self):
        return (yield self)

NEXT_CHUNK = _NextChunk()

class FloorProtocol(asyncio.Protocol):
    # The least an awaiting handler can cost: data_received resumes the coroutine with
    # the chunk itself; no task, no future, no reader, no line parsing, no drain.
    def connection_made(self, transport):
        self.resume = self.handler(transport.write).send
        self.resume(None)
    async def handler(self, write):
        while True:
            write(await NEXT_CHUNK)
    def data_received(self, data):
        self.resume(data)

async def echo_streams(reader, writer):
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()

async def bare():
    loop = asyncio.get_running_loop()
    if kind == "streams":
        server = await asyncio.start_server(echo_streams, "127.0.0.1", 0)
    elif kind == "floor":
        server = await loop.create_server(FloorProtocol, "127.0.0.1", 0)
    else:
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

if kind.startswith("sockserve"):
    from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer

    class Echo(AsyncStreamRequestHandler):
        async def handle(self):
            reader, writer = self.reader, self.writer
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()

    server = AsyncTCPServer(("127.0.0.1", 0), Echo, event_loop=loop_name)
    print(server.server_address[1], flush=True)
    server.serve_forever()
elif loop_name == "uvloop":
    import uvloop
    uvloop.run(bare())
else:
    asyncio.run(bare())
"""


def run_client(port: int, connections: int, seconds: float) -> int:
    """Ping-pong on every connection for ``seconds``; the number of round trips."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    by_fd = {sock.fileno(): sock for sock in socks}
    pending = dict.fromkeys(by_fd, 0)
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    for sock in socks:
        sock.send(MESSAGE)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(1.0):
            data = by_fd[fd].recv(65536)
            if not data:
                raise SystemExit("server closed a connection")
            pending[fd] += len(data)
            while pending[fd] >= len(MESSAGE):
                pending[fd] -= len(MESSAGE)
                count += 1
                by_fd[fd].send(MESSAGE)
    for sock in socks:
        sock.close()
    return count


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, loop_name: str, args: argparse.Namespace) -> tuple[float, float]:
    env = None
    if kind == "sockserve@base":
        kind = "sockserve"
        env = {**os.environ, "PYTHONPATH": args.baseline}
    elif kind == "sockserve-pure":
        env = {**os.environ, "SOCKSERVE_PURE_PYTHON": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, kind, loop_name], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        count = run_client(port, args.connections, args.seconds)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    return count / elapsed, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="SRC_DIR", help="also run sockserve from here")
    parser.add_argument("--loops", help="comma-separated subset of uvloop,asyncio")
    args = parser.parse_args()
    loops = ["uvloop", "asyncio"] if importlib.util.find_spec("uvloop") else ["asyncio"]
    if args.loops:
        loops = [loop for loop in loops if loop in args.loops.split(",")]
    kinds = ["sockserve", "sockserve-pure", "streams", "protocol", "floor"]
    if args.baseline:
        kinds.insert(1, "sockserve@base")
    configs = [(kind, loop) for loop in loops for kind in kinds]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in configs}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits every server
        for config in configs:
            results[config].append(measure(*config, args))
    print(f"{'server':22} {'msg/s (best)':>14} {'server CPU us/msg (median)':>28}")
    for (kind, loop), runs in results.items():
        best = max(rate for rate, _ in runs)
        cpu = statistics.median(us for _, us in runs)
        print(f"{kind + ' / ' + loop:22} {best:14,.0f} {cpu:28.2f}")
    for loop in loops:
        ours = [us for _, us in results[("sockserve", loop)]]
        for kind in kinds[1:]:
            theirs = [us for _, us in results[(kind, loop)]]
            ratios = sorted(their / our for their, our in zip(theirs, ours, strict=True))
            print(
                f"{loop}: sockserve is {statistics.median(ratios):.2f}x {kind} by server CPU"
                f" per message (median of {len(ratios)} rounds; {ratios[0]:.2f}-{ratios[-1]:.2f})"
            )


if __name__ == "__main__":
    main()
