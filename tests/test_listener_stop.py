"""A drain never drops a connection it accepted, nor one the kernel completed for it.

Found by tests/test_scale_out.py (HAProxy in front, one instance drained under load),
each reproduced here without HAProxy:

- Closing a listener resets the connections still in its accept queue; one that
  completed its handshake after the drain's last ``accept()`` was reset (30 times in
  100 drains). ``listener_stop.refuse_new_handshakes`` stops new SYNs before that
  sweep: the queue then holds nothing the close could reset.
- A connection accepted just before the drain, still waiting for its PROXY header, was
  refused ("stopping") when the header came: in the synchronous loop when the loop
  stopped, in the async loop as soon as the drain had begun. It is served now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.listener_stop import refuse_new_handshakes
from sockserve.proxy_protocol import encode_v2
from sockserve.testing import serve_in_thread

TIMEOUT = 10.0
#: How long a connect may take before the client gives up and counts it as "not
#: served, retry elsewhere" (what a balancer's connect timeout does); a loopback
#: handshake takes microseconds, a SYN the filter dropped is retransmitted after 1 s.
CONNECT_TIMEOUT = 0.5
DRAINS = 10
CLIENT = ("192.0.2.1", 56324)
SERVICE = ("198.51.100.7", 443)


def has_socket_filters() -> bool:
    with socket.socket() as probe:
        return refuse_new_handshakes(probe)


pytestmark = pytest.mark.skipif(not has_socket_filters(), reason="needs Linux socket filters")


def test_after_refuse_new_handshakes_the_queue_is_kept_and_nothing_joins_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        address = listener.getsockname()
        with socket.create_connection(address, TIMEOUT) as queued:
            assert refuse_new_handshakes(listener)
            with socket.socket() as late:
                late.setblocking(False)
                late.connect_ex(address)
                # A loopback handshake completes within microseconds; its SYN was dropped.
                assert select.select([], [late], [], CONNECT_TIMEOUT)[1] == []
                accepted, _ = listener.accept()
                with accepted:
                    queued.sendall(b"ping")
                    assert accepted.recv(4) == b"ping"  # the queued one works both ways
                    listener.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        listener.accept()  # the late one never joined the queue


def test_a_drain_leaves_a_listener_it_shares_as_it_was() -> None:
    """A socket the server did not bind (inherited from systemd, a pre-fork master) may
    be another process's listener too: the drain closes its own descriptor, no filter."""
    with socket.create_server(("127.0.0.1", 0)) as other_holder:
        other_holder.settimeout(TIMEOUT)
        server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo, bind_and_activate=False)
        server.socket.close()
        server.socket = other_holder.dup()
        server.server_address = other_holder.getsockname()
        assert not server.owns_listener()
        with serve_in_thread(server):
            server.drain(TIMEOUT)
        with socket.create_connection(other_holder.getsockname(), TIMEOUT):
            accepted, _ = other_holder.accept()  # still listening, SYNs welcome
            accepted.close()
    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo) as own:
        assert own.owns_listener()


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_a_drain_under_connect_load_resets_no_completed_connection() -> None:
    """Clients connect in a loop while the server drains: each connection is served or
    never established (refused, or its connect timed out), never reset after it."""
    outcomes: Counter = Counter()
    for _ in range(DRAINS):
        server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        with serve_in_thread(server), clients_looping(server.server_address, outcomes) as served:
            assert served.get(timeout=TIMEOUT)  # traffic is flowing
            server.drain(TIMEOUT)
    assert outcomes["reset"] == 0, outcomes
    assert outcomes["served"] > 0, outcomes


class Counter:
    """Outcomes counted from several client threads."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def __getitem__(self, outcome: str) -> int:
        with self._lock:
            return self._counts.get(outcome, 0)

    def __repr__(self) -> str:
        return repr(self._counts)


@contextlib.contextmanager
def clients_looping(address: Any, outcomes: Counter) -> Iterator[queue.Queue[bool]]:
    stop = threading.Event()
    served: queue.Queue[bool] = queue.Queue()

    def run() -> None:
        while not stop.is_set():
            try:
                client = socket.create_connection(address, CONNECT_TIMEOUT)
            except OSError:
                outcomes.add("not established")
                continue
            with client:
                client.settimeout(TIMEOUT)
                try:
                    client.sendall(b"x\n")
                    is_served = client.recv(2) == b"x\n"
                except OSError:
                    is_served = False
            outcomes.add("served" if is_served else "reset")
            served.put(is_served)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        yield served
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)


# -- a connection in its preludes when the drain begins ---------------------------------


class Report(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        host, port = self.client_address[:2]
        self.wfile.write(f"{host}:{port} ".encode() + self.rfile.readline())


class AsyncReport(sockserve.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        host, port = self.client_address[:2]
        self.writer.write(f"{host}:{port} ".encode() + await self.reader.readline())
        await self.writer.drain()


class Accepted:
    """A peer check that reports each accepted connection (before its preludes)."""

    judges = "peer"

    def __init__(self) -> None:
        self.seen: queue.Queue[Any] = queue.Queue()

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        self.seen.put(client_address)
        return request, client_address


@contextlib.contextmanager
def log_message_seen(logger: str, text: str) -> Iterator[threading.Event]:
    """An event set when ``logger`` emits a record whose message contains ``text``."""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    target = logging.getLogger(logger)
    watch, level = Watch(), target.level
    target.addHandler(watch)
    target.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        target.removeHandler(watch)
        target.setLevel(level)


@pytest.mark.parametrize(
    ("server_class", "handler", "kwargs", "logger", "message"),
    [
        pytest.param(
            sockserve.ThreadingTCPServer,
            Report,
            {},
            "sockserve.serve_loop",
            "finishing the preludes",
            id="threading",
        ),
        pytest.param(
            sockserve.AsyncTCPServer,
            AsyncReport,
            {"event_loop": "asyncio"},
            "sockserve.aio.serve_loop",
            "draining",
            id="asyncio",
        ),
    ],
)
def test_a_connection_waiting_for_its_proxy_header_when_the_drain_begins_is_served(
    server_class: Any, handler: Any, kwargs: dict[str, Any], logger: str, message: str
) -> None:
    """The header arrives only once the drain is under way (the log line says so: the
    synchronous loop is finishing its pending preludes; the async drain has begun)."""
    accepted = Accepted()
    server = server_class(
        ("127.0.0.1", 0),
        handler,
        proxy_protocol="v2",
        trusted_proxies=["127.0.0.1/32"],
        **kwargs,
    )
    server.add_admission_check(accepted)
    reports: queue.Queue[Any] = queue.Queue()
    with (
        serve_in_thread(server, stop_timeout=TIMEOUT),
        log_message_seen(logger, message) as drain_is_under_way,
        socket.create_connection(server.server_address, TIMEOUT) as client,
    ):
        accepted.seen.get(timeout=TIMEOUT)  # in its preludes now
        drainer = threading.Thread(target=lambda: reports.put(server.drain(TIMEOUT)))
        drainer.start()
        try:
            assert drain_is_under_way.wait(TIMEOUT)
            client.sendall(encode_v2(CLIENT, SERVICE) + b"late\n")
            assert client.makefile("rb").readline() == b"192.0.2.1:56324 late\n"
        finally:
            drainer.join(TIMEOUT)
    report = reports.get(timeout=TIMEOUT)
    assert (report.finished, report.aborted) == (1, 0)
    assert server.stats().rejected == {}


class _Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.mark.parametrize(
    "server_class", [sockserve.ThreadingUnixStreamServer, sockserve.AsyncUnixStreamServer]
)
def test_a_unix_drain_under_connect_load_ends_before_its_deadline(
    server_class: Any, short_dir: Any
) -> None:
    """A Unix socket has no SYN to filter: clients connecting in a loop kept its accept
    queue full, and the drain's last sweep served them until the drain's deadline (the
    battery's drain under load: 3.0 s, all of it). Its file goes before the sweep now."""
    if server_class is sockserve.AsyncUnixStreamServer:

        class Handler(sockserve.AsyncStreamRequestHandler):
            async def handle(self) -> None:
                self.writer.write(await self.reader.readline())
    else:
        Handler = _Echo  # type: ignore[misc,assignment]  # noqa: N806
    path = str(short_dir / "drain.sock")
    deadline = 30.0
    stop = threading.Event()
    server = server_class(path, Handler)

    def keep_connecting() -> None:
        while not stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(TIMEOUT)
                    client.connect(path)
                    client.sendall(b"hi\n")  # and gone: the next connect at once
            except OSError:
                if not stop.is_set() and not os.path.exists(path):
                    return  # the listener is gone: refused from now on

    with serve_in_thread(server):
        clients = [threading.Thread(target=keep_connecting) for _ in range(8)]
        for thread in clients:
            thread.start()
        try:
            report = server.drain(deadline)
        finally:
            stop.set()
            for thread in clients:
                thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in clients)
    assert report.aborted == 0
    # Far below the deadline, which the sweep used to take whole under this load.
    assert report.seconds < deadline / 3, report
