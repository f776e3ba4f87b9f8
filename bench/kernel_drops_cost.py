"""What reporting the kernel's UDP drops would cost per datagram, by method.

Usage: ``python3 -m bench.kernel_drops_cost [--datagrams N] [--rounds R] [--echo N]``

Two honest ways to learn how many datagrams Linux dropped on a server socket because
its receive queue was full (both read the same counter, ``sk_drops``):

- ``SO_RXQ_OVFL``: every ``recvmsg`` asks for ancillary data, and the kernel attaches
  the drop count to each datagram; Python then builds a list of ``(level, type, data)``
  tuples per call. Cost paid per datagram.
- ``SO_MEMINFO`` (``SK_MEMINFO_DROPS``): one ``getsockopt`` when ``stats()`` is asked.
  Nothing per datagram.

This fills a socket's queue with N datagrams, then times reading them as the server
does (``recvmsg`` with ``MSG_DONTWAIT``), with and without the ancillary buffer, in
alternating rounds; it prints the median ns per datagram of each and one
``getsockopt(SO_MEMINFO)`` call.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sockserve
from sockserve import sockets
from sockserve.servers import datagram

#: ``SO_RXQ_OVFL`` from Linux's asm-generic/socket.h (Python does not export it).
SO_RXQ_OVFL = 40
SO_MEMINFO = 55
PAYLOAD = b"x" * 64


def fill(receiver: socket.socket, sender: socket.socket, count: int) -> None:
    target = receiver.getsockname()
    for _ in range(count):
        sender.sendto(PAYLOAD, target)


def overflow(receiver: socket.socket, sender: socket.socket) -> None:
    """Make the kernel drop on ``receiver`` once: from then on (the drop count is not 0)
    every datagram carries the ``SO_RXQ_OVFL`` message, as on a server that ever dropped."""
    size = receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fill(receiver, sender, 200)
    while True:
        try:
            receiver.recv(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size // 2)


def read_all(receiver: socket.socket, count: int, ancillary: int) -> float:
    """Seconds to read ``count`` queued datagrams."""
    flags = socket.MSG_DONTWAIT
    started = time.perf_counter()
    for _ in range(count):
        _, messages, _, _ = receiver.recvmsg(65535, ancillary, flags)
        assert bool(messages) == bool(ancillary)
    return time.perf_counter() - started


#: The client of the echo measurement, in its own process (no GIL shared with the server).
ECHO_CLIENT = """
import socket, sys, time
count, port = int(sys.argv[1]), int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(5)
    started = time.perf_counter()
    for _ in range(count):
        sock.sendto(b"x" * 64, ("127.0.0.1", port))
        sock.recv(100)
    print(count / (time.perf_counter() - started))
"""


class Echo(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def receive_with_overflow_count(sock: socket.socket, max_size: int) -> tuple[bytes, Any, bool]:
    """``sockets.receive_datagram`` as it would be with ``SO_RXQ_OVFL``: ancillary data
    asked for and parsed on every datagram."""
    view = sockets._receive_buffer(max_size)
    size, messages, flags, address = sock.recvmsg_into(
        [view], socket.CMSG_SPACE(4), socket.MSG_DONTWAIT
    )
    for level, kind, value in messages:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
            struct.unpack("I", value)
    return bytes(view[:size]), address, bool(flags & socket.MSG_TRUNC)


def receive_into_new_buffer(sock: socket.socket, max_size: int) -> tuple[bytes, Any, bool]:
    """``sockets.receive_datagram`` before the soak case: a ``max_size`` object per
    datagram, shrunk to fit."""
    data, _, flags, address = sock.recvmsg(max_size, 0, socket.MSG_DONTWAIT)
    return data, address, bool(flags & socket.MSG_TRUNC)


#: The receive paths compared: None is the one sockserve ships.
RECEIVE_PATHS: dict[str, Any] = {
    "as shipped": None,
    "recvmsg, before": receive_into_new_buffer,
    "SO_RXQ_OVFL": receive_with_overflow_count,
}


@contextmanager
def receive_path(receive: Any, server: Any) -> Iterator[None]:
    shipped = datagram.receive_datagram
    if receive is not None:
        server.socket.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        datagram.receive_datagram = receive
    try:
        yield
    finally:
        datagram.receive_datagram = shipped
        server.socket.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 0)


def thread_cpu_ns(native_id: int) -> int:
    """CPU time the thread has run, in ns (/proc schedstat; /proc/<pid>/stat counts 10 ms
    ticks): a shared machine's load slows the rate, not this."""
    with open(f"/proc/self/task/{native_id}/schedstat") as stat:
        return int(stat.read().split()[0])


def echo_costs(count: int, rounds: int) -> dict[str, list[float]]:
    """The serving thread's CPU ns per echo, per receive path."""
    costs: dict[str, list[float]] = {name: [] for name in RECEIVE_PATHS}
    server = sockserve.UDPServer(("127.0.0.1", 0), Echo)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    try:
        port = server.server_address[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            overflow(server.socket, sender)  # as in the loop above: the count is not 0
        paths = list(RECEIVE_PATHS.items())
        for round_ in range(rounds):
            shift = round_ % len(paths)  # each path takes each place in turn
            for name, receive in paths[shift:] + paths[:shift]:
                with receive_path(receive, server):
                    assert serving.native_id is not None
                    before = thread_cpu_ns(serving.native_id)
                    subprocess.run(
                        [sys.executable, "-c", ECHO_CLIENT, str(count), str(port)],
                        capture_output=True,
                        check=True,
                        timeout=120,
                    )
                    costs[name].append((thread_cpu_ns(serving.native_id) - before) / count)
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datagrams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--echo", type=int, default=0, help="echoes per round (0: skip)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"plain recvmsg": [], "SO_RXQ_OVFL recvmsg": []}
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as counted,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        for sock in (plain, counted):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            sock.bind(("127.0.0.1", 0))
        counted.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        overflow(counted, sender)
        space = socket.CMSG_SPACE(4)
        for _ in range(args.rounds):
            for name, sock, ancillary in (
                ("plain recvmsg", plain, 0),
                ("SO_RXQ_OVFL recvmsg", counted, space),
            ):
                fill(sock, sender, args.datagrams)
                results[name].append(read_all(sock, args.datagrams, ancillary) / args.datagrams)
        calls = 10000
        started = time.perf_counter()
        for _ in range(calls):
            plain.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)
        meminfo = (time.perf_counter() - started) / calls
    base = statistics.median(results["plain recvmsg"])
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:22s} {median * 1e9:7.0f} ns/datagram ({(median / base - 1) * 100:+.1f}%)")
    print(f"{'getsockopt(SO_MEMINFO)':22s} {meminfo * 1e9:7.0f} ns/call (once per stats())")
    if args.echo:
        costs = echo_costs(args.echo, max(3, args.rounds // 3))
        shipped = statistics.median(costs["as shipped"])
        for name, values in costs.items():
            median = statistics.median(values)
            change = (median / shipped - 1) * 100
            print(f"UDPServer echo, {name:15s} {median:8.0f} ns CPU/echo ({change:+.1f}%)")


if __name__ == "__main__":
    main()
