"""Quick bulk echo (or churn) in the async mode: server CPU per MB (per connection).

One connection of the C load generator (``bench/loadgen.c``, bulk mode: 64 KiB writes,
counting the echo) against, in turn: asyncio's bare ``Protocol`` echo, and
``AsyncTCPServer`` with a ``read(n)``/``write``/``drain`` handler importing sockserve
from each source tree given. Server pinned to CPU 0, load generator to CPU 1. Printed:
each server's µs of CPU per MB in every round, and the median. Per-MB CPU on loopback
moves with the dynamics (a server that keeps the load generator busy spares itself the
wake-ups), so compare medians of several rounds run back to back, not single runs.

``--mode churn``: the load generator's churn mode instead (16 slots: connect, send 64
bytes, read them back, close; from 200 loopback addresses, as ``python -m bench``), the
same servers; printed per connection. ``--peers`` chooses the bare servers measured
beside sockserve (``protocol,floor,task,streams``; ``--help`` says what each is).

    python bench/bulk_quick.py [--read-bytes 65536] [--seconds 2] [--rounds 5]
                               [--loop asyncio|uvloop] [--mode bulk|churn] [SRC_DIR ...]

Without SRC_DIR: this checkout's ``src``. ``--profile perf|strace`` records the last
sockserve server of the last round (``perf record -g`` / ``strace -c``) into the
current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.build import compile_c  # noqa: E402

SERVER = r"""
import asyncio, os, sys
sys.path.insert(0, SRC)
os.sched_setaffinity(0, {0})
if KIND in ("protocol", "floor", "soon", "bare-task", "task", "streams"):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    class _NextChunk:
        __slots__ = ()
        def __await__(self):
            return (yield self)

    NEXT_CHUNK = _NextChunk()
    RUNNING = []  # the loop (on 3.11, get_running_loop() makes a getpid system call)

    class Floor(asyncio.Protocol):
        # The least an awaiting handler can cost: a coroutine per connection, resumed by
        # data_received with the chunk itself; no task, future, reader or drain.
        def connection_made(self, transport):
            self.transport = transport
            self.resume = self.handle(transport.write).send
            self.resume(None)
        async def handle(self, write):
            while data := await NEXT_CHUNK:
                write(data)
        def data_received(self, data):
            self.resume(data)
        def eof_received(self):
            try:
                self.resume(b"")
            except StopIteration:
                pass

    class TaskFloor(Floor):
        # The least a server that gives each connection an asyncio Task can cost (what
        # asyncio.timeout, TaskGroup and current_task() in a handler need): the Task
        # exists, but the handler is resumed by data_received as in Floor; the Task only
        # waits for the handler's end.
        def connection_made(self, transport):
            self.ended = RUNNING[0].create_future()
            super().connection_made(transport)
            RUNNING[0].create_task(self.wait_for_end())
        async def wait_for_end(self):
            await self.ended
        def eof_received(self):
            super().eof_received()
            self.ended.set_result(None)

    class FloorCallSoon(Floor):
        # The floor plus one call_soon per connection: what a loop turn's callback costs.
        def connection_made(self, transport):
            super().connection_made(transport)
            RUNNING[0].call_soon(len, "")

    async def returns_at_once():
        pass

    class FloorBareTask(Floor):
        # The floor plus an asyncio Task per connection that returns at once: what a
        # Task costs by itself (created, registered, run once, done).
        def connection_made(self, transport):
            super().connection_made(transport)
            RUNNING[0].create_task(returns_at_once())

    async def echo_streams(reader, writer):
        while data := await reader.read(READ_BYTES):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        RUNNING.append(loop)
        if KIND == "streams":
            server = await asyncio.start_server(echo_streams, "127.0.0.1", 0)
        else:
            factory = {
                "floor": Floor,
                "task": TaskFloor,
                "soon": FloorCallSoon,
                "bare-task": FloorBareTask,
            }.get(KIND, Echo)
            server = await loop.create_server(factory, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    if LOOP_NAME == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
else:
    import sockserve
    from sockserve.aio import AsyncStreamRequestHandler
    class Echo(AsyncStreamRequestHandler):
        async def handle(self):
            reader, writer = self.reader, self.writer
            try:
                while data := await reader.read(READ_BYTES):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
    server = sockserve.AsyncTCPServer(("127.0.0.1", 0), Echo, event_loop=LOOP_NAME)
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    kind: str, src: str, args: argparse.Namespace, loadgen: Path, profile: str | None
) -> float:
    """One server, one measured run: µs of server CPU per MB echoed (per connection)."""
    code = f"SRC={src!r}\nKIND={kind!r}\nREAD_BYTES={args.read_bytes}\nLOOP_NAME={args.loop!r}\n"
    server = subprocess.Popen(
        [sys.executable, "-c", code + SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        command = ["taskset", "-c", "1", str(loadgen), "--port", port, "--mode", args.mode]
        conns = "1" if args.mode == "bulk" else "16"
        command += ["--conns", conns, "--warmup", "0.5", "--duration", str(args.seconds)]
        if args.mode == "churn":
            command += ["--sources", "200"]  # as python -m bench: connect() finds ports fast
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert load.stdout is not None
        assert load.stdin is not None
        recorder = None
        start = end = 0.0
        result: dict[str, float] = {}
        for line in load.stdout:
            if line.startswith("MARK start"):
                start = cpu_seconds(server.pid)
                if profile == "perf":
                    output = f"{args.mode}.perf.data"
                    recorder = subprocess.Popen(
                        ["perf", "record", "-g", "-o", output, "-p", str(server.pid)],
                        stderr=subprocess.DEVNULL,
                    )
                elif profile == "strace":
                    output = f"{args.mode}.strace.txt"
                    recorder = subprocess.Popen(
                        ["strace", "-c", "-f", "-o", output, "-p", str(server.pid)]
                    )
            elif line.startswith("MARK end"):
                end = cpu_seconds(server.pid)
                if recorder is not None:
                    recorder.send_signal(2)
                    recorder.wait()
                load.stdin.write("\n")
                load.stdin.flush()
            elif line.startswith("RESULT"):
                result = json.loads(line.split(" ", 1)[1])
                break
        load.wait()
        if args.mode == "churn":
            return (end - start) * 1e6 / result["requests"]
        return (end - start) * 1e6 / (result["bytes"] / 1e6)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", help="src directories to import sockserve from")
    parser.add_argument("--read-bytes", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--mode", default="bulk", choices=["bulk", "churn"])
    parser.add_argument(
        "--peers",
        default="protocol",
        help="comma list of bare peers on the same loop: protocol (an echo Protocol), "
        "floor (a coroutine per connection resumed by data_received: no task, future or "
        "reader), soon (floor plus a call_soon per connection), bare-task (floor plus an "
        "asyncio Task per connection that returns at once), task (floor plus a Task that "
        "waits for the handler's end), streams (asyncio.start_server)",
    )
    parser.add_argument("--profile", choices=["perf", "strace"])
    args = parser.parse_args()
    sources = args.sources or [str(HERE.parent / "src")]
    loadgen = compile_c("loadgen.c")
    peers = [(kind, sources[0]) for kind in args.peers.split(",") if kind]
    servers = peers + [("sockserve", src) for src in sources]
    figures: dict[str, list[float]] = {f"{kind} {src}": [] for kind, src in servers}
    for round_number in range(args.rounds):
        for index, (kind, src) in enumerate(servers):
            last = round_number == args.rounds - 1 and index == len(servers) - 1
            figure = run_once(kind, src, args, loadgen, args.profile if last else None)
            figures[f"{kind} {src}"].append(figure)
    unit = "MB" if args.mode == "bulk" else "connection"
    print(f"µs of server CPU per {unit}, {args.mode}, read({args.read_bytes}), {args.loop} loop:")
    for name, values in figures.items():
        rounds = " ".join(f"{value:.0f}" for value in values)
        label = name if name.startswith("sockserve") else name.split(" ")[0]
        print(f"  {label}: median {statistics.median(values):.0f}  ({rounds})")


if __name__ == "__main__":
    main()
