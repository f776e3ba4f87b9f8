"""What reporting the kernel's UDP drops would cost per datagram, by method.

Usage: ``python3 -m bench.kernel_drops_cost [--datagrams N] [--rounds R]``

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
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datagrams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
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


if __name__ == "__main__":
    main()
