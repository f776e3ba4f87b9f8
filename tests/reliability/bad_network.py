"""A bad network between two network namespaces: latency, jitter, loss and reordering.

Two namespaces this process makes itself (``unshare(CLONE_NEWNET)`` on a short-lived
thread), "server" and "client", each with a TUN device (``SERVER_IP``, ``CLIENT_IP``);
a relay thread in this process is the wire between the two devices: every IP packet
one side sends is read from its device and written to the other's after ``delay`` +-
``jitter`` seconds, unless it is lost (probability ``loss``) or sent ahead of the
queue (probability ``reorder``: no delay, so it overtakes the packets before it). The
kernel's TCP and UDP on both sides see a real lossy, slow, reordering path and do their
own retransmissions and reassembly.

Why not ``tc qdisc ... netem`` (the usual tool): it needs the kernel's sch_netem,
which many kernels, containers and CI runners lack (this one is built without
``CONFIG_NET_SCH_NETEM`` and has no modules); TUN devices and network namespaces are
built in nearly everywhere root is. The impairment is netem's model (delay, jitter,
loss, reorder-by-skipping-the-delay), applied per packet in Python: a few microseconds
each, far below the delays it adds.

Sockets belong to the namespace they were created in for life, so ``inside(ns, fn)``
runs ``fn`` on a thread that has entered ``ns``: a server built there listens in the
server namespace, and the threads and processes serving it can live anywhere.
Namespaces disappear with the last descriptor that holds them: ``close()`` stops the
relay and closes the devices and namespace handles, so nothing outlives the test
(no ``/run/netns`` names to clean up after a crash).

``unavailable()`` says why this cannot run here (not root, no TUN, no namespaces), for
the test to skip with that reason.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import itertools
import os
import random
import select
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
#: ``TUNSETIFF`` and its flags (linux/if_tun.h): a layer-3 device, no packet-info header.
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SERVER_IP = "10.201.0.1"
CLIENT_IP = "10.201.0.2"
PREFIX = 24
#: The largest packet the devices carry (their default MTU is 1500).
MAX_PACKET = 65535
#: Bounds how long setting up or stopping the wire may take (only a failure waits).
SETUP_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def enter(namespace_fd: int) -> None:
    _check(_libc.setns(namespace_fd, CLONE_NEWNET), "setns")


def inside(namespace_fd: int, action: Callable[[], T]) -> T:
    """``action()`` on a thread inside the namespace; its result (or its exception)."""

    def entered() -> T:
        enter(namespace_fd)
        return action()

    return on_a_thread(entered)


def on_a_thread(action: Callable[[], T]) -> T:
    """``action()`` on a fresh thread (which may change its namespace and then end)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="namespace-action")
    thread.start()
    thread.join(SETUP_TIMEOUT)
    assert outcome, "a namespace action did not finish"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def unavailable() -> str | None:
    """Why a bad network cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and TUN devices need root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (TUN devices are not available)"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    for tool in ("ip", "nsenter"):  # iproute2, util-linux
        if shutil.which(tool) is None:
            return f"no {tool} command to configure the namespaces"
    return None


@dataclass(frozen=True)
class Impairment:
    """netem's model: ``delay`` +- ``jitter`` seconds, ``loss`` and ``reorder`` odds."""

    delay: float
    jitter: float
    loss: float
    reorder: float

    def describe(self) -> str:
        return (
            f"delay {self.delay * 1000:.0f}+-{self.jitter * 1000:.0f} ms, "
            f"loss {self.loss:.0%}, reorder {self.reorder:.0%}"
        )


@dataclass
class WireCounts:
    forwarded: int = 0
    lost: int = 0
    reordered: int = 0


class BadNetwork:
    """The two namespaces and the wire between them; ``close()`` undoes everything."""

    def __init__(self, impairment: Impairment, *, seed: int = 14) -> None:
        self.impairment = impairment
        self.counts = WireCounts()
        self._rng = random.Random(seed)
        self._fds: list[int] = []
        self._stop_read, self._stop_write = os.pipe()
        self._fds += [self._stop_read, self._stop_write]
        self._relay: threading.Thread | None = None
        try:
            self.server_ns, server_tun = self._namespace("ssrv0", SERVER_IP)
            self.client_ns, client_tun = self._namespace("scli0", CLIENT_IP)
            self._relay = threading.Thread(
                target=self._run, args=(server_tun, client_tun), name="bad-network-wire"
            )
            self._relay.start()
        except BaseException:
            self.close()
            raise

    def _namespace(self, device: str, address: str) -> tuple[int, int]:
        """A new namespace with loopback up and ``device`` at ``address``: (ns fd, tun fd)."""

        def make() -> tuple[int, int]:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            namespace = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            self._fds.append(namespace)
            tun = os.open("/dev/net/tun", os.O_RDWR)
            self._fds.append(tun)
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
            return namespace, tun

        namespace, tun = on_a_thread(make)
        where = f"--net=/proc/{os.getpid()}/fd/{namespace}"
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{address}/{PREFIX}", "dev", device],
            ["ip", "link", "set", device, "up"],
        ):
            subprocess.run(
                ["nsenter", where, *command], check=True, capture_output=True, timeout=SETUP_TIMEOUT
            )
        os.set_blocking(tun, False)
        return namespace, tun

    def _run(self, server_tun: int, client_tun: int) -> None:
        """The wire: read both devices, hold each packet for its delay, write it across."""
        other = {server_tun: client_tun, client_tun: server_tun}
        due: list[tuple[float, int, int, bytes]] = []  # (when, order, target, packet)
        order = itertools.count()
        latest_due = {server_tun: 0.0, client_tun: 0.0}
        impairment = self.impairment
        while True:
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
            watched = [server_tun, client_tun, self._stop_read]
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._stop_read in readable:
                return
            now = time.monotonic()
            for source in readable:
                while True:
                    try:
                        packet = os.read(source, MAX_PACKET)
                    except BlockingIOError:
                        break
                    if self._rng.random() < impairment.loss:
                        self.counts.lost += 1
                        continue
                    target = other[source]
                    if self._rng.random() < impairment.reorder:
                        when = now  # netem's reorder: this one skips the delay
                    else:
                        spread = self._rng.uniform(-impairment.jitter, impairment.jitter)
                        when = now + max(0.0, impairment.delay + spread)
                    if when < latest_due[target]:
                        self.counts.reordered += 1
                    latest_due[target] = max(latest_due[target], when)
                    heapq.heappush(due, (when, next(order), target, packet))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, target, packet = heapq.heappop(due)
                try:
                    os.write(target, packet)
                    self.counts.forwarded += 1
                except OSError:
                    self.counts.lost += 1  # the device's queue is full: a drop, as on a wire

    def close(self) -> None:
        if self._relay is not None:
            os.write(self._stop_write, b"x")
            self._relay.join(SETUP_TIMEOUT)
            assert not self._relay.is_alive(), "the wire did not stop"
            self._relay = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> BadNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
