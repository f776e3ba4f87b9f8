"""The pool-memory client: ``python -m bench.holdclient --port P [options]``.

It opens ``--conns`` connections (2,000 by default); each sends one ``--size``-byte
message as soon as it is connected and waits for the echo. At most ``--in-flight`` (4)
connections are opening at a time, where a connection is opening until it is answered,
or until it has waited four times as long as answers have lately taken (at least
``--pace``, 1 ms; at most 50 ms; shorter with each connection given up on) since its
handshake completed. That is the idle
workload's pacing (fewer than the stdlib's listen backlog of 5 can queue, so this
measures holding connections, not surviving a connect burst), except that a server
which stops answering, as a full pool does, does not stop the rest from connecting.

A connection that got its echo then stays open and silent, so for a while every client
is connected at once and the server holds as many as it chooses to serve: a thread per
connection serves them all, a bounded pool serves ``max_workers`` and leaves the rest
queued (in its own queue, then the kernel backlog).

Phases, with the harness (bench/workloads.py) on the other end of stdout and stdin:

- **hold**: until every connection was answered, or ``--hold`` seconds after every
  connection was opened and connected (or ``--connect-timeout`` passed). Then
  ``MARK hold {json}`` (what was served so far); the harness samples the server's
  memory and threads at that moment and answers a line on stdin.
- **drain**: every answered connection closes, and from now on each connection closes
  as soon as its echo arrives, so a pool cycles through the rest. Until every connection
  is answered, failed, or ``--drain-timeout`` passes; then ``RESULT {json}``.

It is Python rather than part of bench/loadgen.c: what it measures is the server's
memory, threads and how many it served, not a rate the client could cap; its own CPU
time is reported so that can be checked. It runs pinned like the load generator.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import sys
import time
from typing import Any

#: Linux's IP_BIND_ADDRESS_NO_PORT (Python 3.11 does not name it): bind an address,
#: leave the port to connect(). See bind_next_source in bench/loadgen.c.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

CONNECTING, WAITING, HELD, CLOSED = range(4)
#: An unanswered connection frees its opening slot after PATIENCE_FACTOR times the moving
#: average (weight ANSWER_WEIGHT) of answer times, within [--pace, MAX_PATIENCE_S]; each
#: connection given up on shrinks that average by GIVE_UP_DECAY, so a server that stopped
#: answering (a full pool) soon gets the rest at the --pace rate.
PATIENCE_FACTOR = 4.0
ANSWER_WEIGHT = 0.1
GIVE_UP_DECAY = 0.8
MAX_PATIENCE_S = 0.05


class Conn:
    __slots__ = ("sock", "state", "received", "started", "connected")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.received = 0
        self.started = started
        self.connected = 0.0  # when the handshake completed


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.holdclient")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4, help="connections opening at once")
    parser.add_argument("--pace", type=float, default=0.001, help="least seconds a slot waits")
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=15.0)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--sources", type=int, default=0, help="spread over 127.0.0.2..")
    return parser.parse_args(argv)


def percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(p: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, int(p * len(ordered) + 0.999999) - 1))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    message = bytes(ord("a") + i % 26 for i in range(args.size))
    selector = selectors.DefaultSelector()
    conns: list[Conn] = []
    counts = {"connected": 0, "served": 0, "errors": 0, "dropped": 0}
    latencies: list[float] = []
    released = False
    started = time.monotonic()
    opening: list[Conn] = []  # the connections holding an opening slot
    answer_s = 0.0  # a moving average of how long answers take after the handshake
    connects_done_at: float | None = None
    connect_deadline = started + args.connect_timeout

    def close(conn: Conn) -> None:
        if conn.state != CLOSED:
            selector.unregister(conn.sock)
            conn.sock.close()
            conn.state = CLOSED

    def fail(conn: Conn) -> None:
        counts["errors"] += 1
        close(conn)

    def open_one(index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.sources:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            try:
                sock.bind((f"127.0.0.{2 + index % args.sources}", 0))
            except OSError:
                pass  # the default source address, then
        conn = Conn(sock, time.monotonic())
        conns.append(conn)
        code = sock.connect_ex((args.host, args.port))
        if code not in (0, errno.EINPROGRESS):
            counts["errors"] += 1
            sock.close()
            conn.state = CLOSED
            return
        selector.register(sock, selectors.EVENT_WRITE, conn)

    def on_event(conn: Conn, events: int) -> None:
        nonlocal answer_s
        if conn.state == CONNECTING:
            conn.connected = time.monotonic()
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                fail(conn)
                return
            counts["connected"] += 1
            try:
                conn.sock.send(message)  # a few bytes into an empty buffer: all of it
            except OSError:
                fail(conn)
                return
            conn.state = WAITING
            selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if conn.state == HELD:  # a held connection only reads when the server drops it
            counts["dropped"] += 1
            close(conn)
            return
        if not data:
            fail(conn)
            return
        conn.received += len(data)
        if conn.received >= args.size:
            answer_s += (time.monotonic() - conn.connected - answer_s) * ANSWER_WEIGHT
            counts["served"] += 1
            latencies.append(time.monotonic() - conn.started)
            if released:
                close(conn)
            else:
                conn.state = HELD

    def patience() -> float:
        return min(MAX_PATIENCE_S, max(args.pace, PATIENCE_FACTOR * answer_s))

    def still_opening(conn: Conn, now: float) -> bool:
        if conn.state == CONNECTING:
            return True
        return conn.state == WAITING and now - conn.connected < patience()

    def pump(until: Any, done: Any) -> None:
        nonlocal connects_done_at, answer_s
        while not done():
            now = time.monotonic()
            kept = []
            for conn in opening:
                if still_opening(conn, now):
                    kept.append(conn)
                elif conn.state == WAITING:  # gave up on it: answers may have stopped
                    answer_s *= GIVE_UP_DECAY
            opening[:] = kept
            while len(conns) < args.conns and len(opening) < args.in_flight:
                if now >= connect_deadline:
                    break
                open_one(len(conns))
                if conns[-1].state == CONNECTING:
                    opening.append(conns[-1])
            if connects_done_at is None and (
                now >= connect_deadline
                or (len(conns) == args.conns and all(c.state != CONNECTING for c in opening))
            ):
                connects_done_at = now
            if now >= until():
                return
            wait = min(0.05, max(0.0, until() - now))
            if opening:
                wait = min(wait, patience())
            for key, events in selector.select(wait):
                on_event(key.data, events)

    def in_progress() -> int:
        return sum(1 for conn in conns if conn.state in (CONNECTING, WAITING))

    # Hold: until everything was answered, or --hold after every connection was opened
    # and connected (or the connect timeout passed).
    def hold_over() -> bool:
        return counts["served"] == args.conns

    def hold_until() -> float:
        return (connects_done_at or connect_deadline) + args.hold

    pump(hold_until, hold_over)
    hold_s = time.monotonic() - started
    snapshot = {
        "conns": args.conns,
        "opened": len(conns),
        "connected": counts["connected"],
        "served": counts["served"],
        "waiting": in_progress(),
        "errors": counts["errors"],
        "seconds": hold_s,
    }
    print("MARK hold " + json.dumps(snapshot), flush=True)
    sys.stdin.readline()

    # Drain: close what was answered; everything else closes on its echo.
    released = True
    release_at = time.monotonic()
    served_at_release = counts["served"]
    for conn in conns:
        if conn.state == HELD:
            close(conn)
    last_served = release_at

    def drain_over() -> bool:
        nonlocal last_served
        if counts["served"] > served_at_release:
            last_served = time.monotonic()
        all_opened = len(conns) >= args.conns or time.monotonic() >= connect_deadline
        return all_opened and in_progress() == 0

    drain_deadline = release_at + args.drain_timeout
    pump(lambda: drain_deadline, drain_over)
    drained = drain_over()
    unserved = in_progress()
    for conn in conns:
        close(conn)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "hold": snapshot,
        "served": counts["served"],
        "connected": counts["connected"],
        "errors": counts["errors"],
        "dropped": counts["dropped"],
        "unserved": unserved + (args.conns - len(conns)),
        "drained": drained,
        "drain_s": last_served - release_at,
        "seconds": last_served - started,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "latency_s": percentiles(latencies),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = run(args)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # the sockets are closed; skip the interpreter's teardown


if __name__ == "__main__":
    main(sys.argv[1:])
