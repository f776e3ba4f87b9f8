"""The contract of every server class, run against all twelve of them.

TCP, UDP, Unix stream and Unix datagram servers, each synchronous, threading and forking,
must behave the way ``socketserver`` users rely on: the same hooks in the same order, the
same resource handling, the same shutdown. One set of cases, parametrized by ``kind``,
like CPython's selector tests share one base class across every implementation.

Protocol used throughout: a request is one line (a stream line, or a datagram holding
it) and the reply is that line echoed, unless a case says otherwise. Forked children
cannot append to a Python list in the test process, so hook calls are recorded in a file
(``EventLog``) that threads and children append to alike.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0
#: How long shutdown(), the serving thread and server_close() may take in a passing test.
STOP_TIMEOUT = 5.0
#: AF_UNIX paths are limited to 108 bytes on Linux (104 on the BSDs).
MAX_UNIX_PATH = 100

pytestmark = [
    # Python 3.12+ warns that fork() in a process with threads may deadlock the child.
    # The threads are the test's own (serving thread, faulthandler's watchdog) and the
    # children only run a handler. (CPython drops the warning under "error" filters, so
    # this matters for runs with other -W settings.)
    pytest.mark.filterwarnings(
        r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
    ),
]

_TRANSPORT_CLASSES = {
    "tcp": "TCPServer",
    "udp": "UDPServer",
    "unix_stream": "UnixStreamServer",
    "unix_datagram": "UnixDatagramServer",
}
_MODE_PREFIXES = {"sync": "", "threading": "Threading", "forking": "Forking"}


@dataclass(frozen=True)
class Kind:
    """One server class: its transport and its dispatch mode."""

    transport: str
    mode: str

    @property
    def name(self) -> str:
        return _MODE_PREFIXES[self.mode] + _TRANSPORT_CLASSES[self.transport]

    @property
    def server_class(self) -> Any:
        return getattr(sockserve, self.name)

    @property
    def is_stream(self) -> bool:
        return self.transport in ("tcp", "unix_stream")

    @property
    def is_unix(self) -> bool:
        return self.transport.startswith("unix")

    @property
    def family(self) -> int:
        return socket.AF_UNIX if self.is_unix else socket.AF_INET


ALL_KINDS = [
    kind
    for kind in (Kind(t, m) for t in _TRANSPORT_CLASSES for m in _MODE_PREFIXES)
    if hasattr(sockserve, kind.name)
]
UNIX_KINDS = [kind for kind in ALL_KINDS if kind.is_unix]
CONCURRENT_KINDS = [kind for kind in ALL_KINDS if kind.mode != "sync"]


def test_every_server_class_is_covered() -> None:
    if not (hasattr(socket, "AF_UNIX") and hasattr(os, "fork")):
        pytest.skip("this platform lacks Unix sockets or fork()")
    assert len(ALL_KINDS) == 12


# -- recording hook calls from threads and forked children ------------------------------


class EventLog:
    """Hook calls, one appended line each, from any thread or forked child.

    Each line is ``<pid> <name> <detail>``; a single small ``O_APPEND`` write is atomic,
    so lines from concurrent writers never interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def record(self, name: str, detail: str = "") -> None:
        line = f"{os.getpid()} {name} {detail}".rstrip() + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[tuple[int, str, str]]:
        events = []
        for line in self.path.read_text().splitlines():
            pid, name, *detail = line.split(" ", 2)
            events.append((int(pid), name, detail[0] if detail else ""))
        return events

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events()]


def recording_server_class(base: Any, log: EventLog, *, accept: bool = True) -> Any:
    """``base`` with every hook recorded; ``accept=False`` makes verify_request refuse."""

    class Recording(base):  # type: ignore[misc]
        def get_request(self) -> Any:
            result = super().get_request()
            log.record("get_request")
            return result

        def verify_request(self, request: Any, client_address: Any) -> bool:
            log.record("verify_request")
            return bool(super().verify_request(request, client_address)) and accept

        def process_request(self, request: Any, client_address: Any) -> None:
            log.record("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            log.record("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            log.record("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            log.record("close_request")
            super().close_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            exc_name = type(sys.exc_info()[1]).__name__
            log.record("handle_error", f"{exc_name} {client_address!r}")

    return Recording


# -- handlers and clients for either kind of socket -------------------------------------

#: ``respond(handler, line) -> reply``; None sends nothing back.
Respond = Callable[[Any, bytes], "bytes | None"]


def echo(handler: Any, line: bytes) -> bytes:
    return line


def handler_class(kind: Kind, respond: Respond = echo, log: EventLog | None = None) -> Any:
    """A stream or datagram handler that reads one line and writes ``respond``'s reply."""
    base: Any = (
        sockserve.StreamRequestHandler if kind.is_stream else sockserve.DatagramRequestHandler
    )

    class Handler(base):  # type: ignore[misc]
        def setup(self) -> None:
            if log is not None:
                log.record("setup")
            super().setup()

        def handle(self) -> None:
            if log is not None:
                log.record("handle")
            reply = respond(self, self.rfile.readline())
            if reply is not None:
                self.wfile.write(reply)

        def finish(self) -> None:
            if log is not None:
                log.record("finish")
            super().finish()

    return Handler


class StreamClient:
    """A connected stream client with a timeout; ``receive`` returns one line."""

    def __init__(self, family: int, server_address: Any, bind_to: Any = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            if bind_to is not None:
                self.sock.bind(bind_to)
            self.sock.connect(server_address)
        except BaseException:
            self.sock.close()
            raise
        self._buffer = b""

    @property
    def address(self) -> Any:
        """How the server sees this client."""
        return self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next line; at end of stream whatever came before it (b"" if nothing)."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def exchange(self, data: bytes) -> bytes:
        self.send(data)
        return self.receive()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DatagramClient:
    """A bound datagram client with a timeout; ``receive`` returns one datagram."""

    def __init__(self, family: int, server_address: Any, bind_to: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            self.sock.bind(bind_to)
        except BaseException:
            self.sock.close()
            raise
        self.server_address = server_address

    @property
    def address(self) -> Any:
        return self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server_address)

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(65536)
        return data

    def exchange(self, data: bytes) -> bytes:
        self.send(data)
        return self.receive()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DatagramClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Client = StreamClient | DatagramClient


class Harness:
    """Addresses, servers and clients of one kind."""

    def __init__(self, kind: Kind, short_dir: Path, tmp_path: Path) -> None:
        self.kind = kind
        self._short_dir = short_dir
        self._tmp_path = tmp_path
        self._numbers = itertools.count()

    def _unix_path(self, prefix: str) -> str:
        path = str(self._short_dir / f"{prefix}{next(self._numbers)}")
        assert len(os.fsencode(path)) < MAX_UNIX_PATH, path
        return path

    def address(self) -> Any:
        """A fresh server address: port 0 on loopback, or a new short Unix path."""
        if self.kind.is_unix:
            return self._unix_path("s")
        return ("127.0.0.1", 0)

    def event_log(self) -> EventLog:
        return EventLog(self._tmp_path / f"events{next(self._numbers)}.log")

    def server(self, handler: Any = None, *, server_class: Any = None, **kwargs: Any) -> Any:
        server_class = server_class or self.kind.server_class
        return server_class(self.address(), handler or handler_class(self.kind), **kwargs)

    def connect(self, server: Any) -> Client:
        """A client of ``server``, bound so that its address is known to both sides."""
        if self.kind.is_unix:
            bind_to: Any = self._unix_path("c")
        else:
            bind_to = None if self.kind.is_stream else ("127.0.0.1", 0)
        if self.kind.is_stream:
            return StreamClient(self.kind.family, server.server_address, bind_to)
        return DatagramClient(self.kind.family, server.server_address, bind_to)


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for Unix sockets whose paths stay well under the AF_UNIX limit."""
    directory = tmp_path_factory.mktemp("u")
    if len(os.fsencode(directory)) <= MAX_UNIX_PATH - 20:
        yield directory
        return
    # A long --basetemp: fall back to a short private directory, removed afterwards.
    fallback = Path(tempfile.mkdtemp(prefix="ss-"))
    try:
        yield fallback
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


@pytest.fixture(params=ALL_KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def harness(kind: Kind, short_dir: Path, tmp_path: Path) -> Harness:
    return Harness(kind, short_dir, tmp_path)


def start_serving(server: Any, poll_interval: float = 0.5) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    return thread


def stop_serving(server: Any, thread: threading.Thread) -> None:
    """Best-effort stop for a ``finally``: shutdown, join, close, each bounded."""
    if thread.is_alive():
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT)
        thread.join(STOP_TIMEOUT)
    server.server_close()


# -- the cases --------------------------------------------------------------------------


def test_echo_round_trips_via_serve_forever(harness: Harness) -> None:
    with serve_in_thread(harness.server()) as server:
        for i in range(5):
            with harness.connect(server) as client:
                line = f"hello {i}\n".encode()
                assert client.exchange(line) == line


def test_handle_request_serves_exactly_one_request(harness: Harness) -> None:
    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log)
    handler = handler_class(harness.kind, log=log)
    with (
        harness.server(handler, server_class=server_class) as server,
        harness.connect(server) as first,
        harness.connect(server) as second,
    ):
        first.send(b"first\n")
        second.send(b"second\n")

        server.handle_request()
        assert first.receive() == b"first\n"
        assert log.names().count("get_request") == 1
        assert log.names().count("handle") == 1

        server.handle_request()
        assert second.receive() == b"second\n"
        assert log.names().count("get_request") == 2
        assert log.names().count("handle") == 2


def test_hooks_run_in_the_stdlib_order(harness: Harness) -> None:
    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log)
    handler = handler_class(harness.kind, log=log)
    with (
        harness.server(handler, server_class=server_class) as server,
        harness.connect(server) as client,
    ):
        client.send(b"order\n")
        server.handle_request()
        assert client.receive() == b"order\n"
    # server_close() has waited for the request's thread or child: the log is complete.

    accepted = ["get_request", "verify_request", "process_request"]
    served = ["finish_request", "setup", "handle", "finish", "shutdown_request", "close_request"]
    events = log.events()
    if harness.kind.mode == "forking":
        in_parent = [name for pid, name, _ in events if pid == os.getpid()]
        in_child = [name for pid, name, _ in events if pid != os.getpid()]
        # The parent closes its copy of the request right after forking.
        assert in_parent == [*accepted, "close_request"]
        assert in_child == served
        assert len({pid for pid, _, _ in events if pid != os.getpid()}) == 1
    else:
        assert [name for _, name, _ in events] == accepted + served


def test_refused_request_is_closed_without_calling_the_handler(harness: Harness) -> None:
    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log, accept=False)
    handler = handler_class(harness.kind, log=log)
    with (
        harness.server(handler, server_class=server_class) as server,
        harness.connect(server) as client,
    ):
        if not harness.kind.is_stream:
            client.send(b"refused\n")  # a datagram server only sees a request once sent
        server.handle_request()
        if harness.kind.is_stream:
            assert client.receive() == b""  # closed: end of stream, no reply
    assert log.names() == ["get_request", "verify_request", "shutdown_request", "close_request"]
    assert {pid for pid, _, _ in log.events()} == {os.getpid()}  # nothing was forked


def test_handler_exception_reaches_handle_error_and_serving_goes_on(harness: Harness) -> None:
    def fail_on_boom(handler: Any, line: bytes) -> bytes:
        if line == b"boom\n":
            raise ValueError("boom")
        return line

    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log)
    server = harness.server(handler_class(harness.kind, fail_on_boom), server_class=server_class)
    # The failing client stays open until the server is closed: a datagram handler
    # still sends its (empty) reply in finish() after handle() raised.
    with harness.connect(server) as failing, serve_in_thread(server):
        failing_address = failing.address
        failing.send(b"boom\n")
        if harness.kind.is_stream:
            assert failing.receive() == b""  # the failed request was closed
        for i in range(3):
            with harness.connect(server) as client:
                assert client.exchange(f"after {i}\n".encode()) == f"after {i}\n".encode()
    errors = [detail for _, name, detail in log.events() if name == "handle_error"]
    assert errors == [f"ValueError {failing_address!r}"]


def test_server_address_is_the_bound_address(harness: Harness) -> None:
    requested = harness.address()
    with harness.kind.server_class(requested, handler_class(harness.kind)) as server:
        if harness.kind.is_unix:
            assert server.server_address == requested
            assert stat.S_ISSOCK(os.stat(requested).st_mode)
        else:
            host, port = server.server_address
            assert host == "127.0.0.1"
            assert port != 0
            assert server.server_address == server.socket.getsockname()
        with harness.connect(server) as client:
            client.send(b"reachable\n")
            server.handle_request()
            assert client.receive() == b"reachable\n"


def test_context_manager_closes_the_socket(harness: Harness) -> None:
    server = harness.server()
    with server as entered:
        assert entered is server
        assert server.fileno() >= 0
    assert server.fileno() == -1
    assert server.socket.fileno() == -1


def test_shutdown_returns_promptly_and_the_serving_thread_ends(harness: Harness) -> None:
    server = harness.server()
    # A poll interval longer than the bounds below: only a real wake-up can pass.
    thread = start_serving(server, poll_interval=30)
    try:
        with harness.connect(server) as client:
            assert client.exchange(b"running\n") == b"running\n"
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT)
        assert not stopper.is_alive(), "shutdown() did not return"
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() did not return after shutdown()"
    finally:
        stop_serving(server, thread)


def test_bind_and_activate_false_then_bind_and_activate(harness: Harness) -> None:
    requested = harness.address()
    server = harness.kind.server_class(
        requested, handler_class(harness.kind), bind_and_activate=False
    )
    try:
        if harness.kind.is_unix:
            assert not os.path.lexists(requested)  # not bound yet
        else:
            assert server.socket.getsockname()[1] == 0  # not bound yet
            # What this mode is for: options that must be set before bind().
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    if not harness.kind.is_unix:
        assert server.server_address[1] != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    with serve_in_thread(server):
        for i in range(2):
            with harness.connect(server) as client:
                assert client.exchange(f"late {i}\n".encode()) == f"late {i}\n".encode()
    assert server.fileno() == -1


@pytest.mark.parametrize("kind", UNIX_KINDS, ids=lambda kind: kind.name)
def test_unix_socket_file_is_removed_at_server_close(harness: Harness) -> None:
    server = harness.server()
    path = server.server_address
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with serve_in_thread(server):
            with harness.connect(server) as client:
                assert client.exchange(b"x\n") == b"x\n"
            assert os.path.lexists(path)  # still there while serving
    finally:
        server.server_close()
    assert not os.path.lexists(path)


class Gate:
    """Holds requests until the test lets them go: across threads, or into forked children.

    Threads wait on a semaphore: releasing it does not give up the GIL, so whatever the
    releasing thread does next (say, the rest of ``server_close()``) runs before the
    request goes on. Forked children wait on a pipe they inherited.
    """

    def __init__(self, forking: bool) -> None:
        self._pipe = os.pipe() if forking else None
        self._semaphore = threading.Semaphore(0)

    def wait(self) -> None:
        if self._pipe is None:
            assert self._semaphore.acquire(timeout=CLIENT_TIMEOUT), "the gate never opened"
        else:
            readable, _, _ = select.select([self._pipe[0]], [], [], CLIENT_TIMEOUT)
            assert readable, "the gate never opened"
            os.read(self._pipe[0], 1)

    def open(self, count: int = 1) -> None:
        if self._pipe is None:
            self._semaphore.release(count)
        else:
            os.write(self._pipe[1], b"g" * count)

    def close(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)


@pytest.mark.parametrize("kind", CONCURRENT_KINDS, ids=lambda kind: kind.name)
def test_no_request_thread_or_child_outlives_server_close(harness: Harness) -> None:
    """server_close() lets in-flight requests finish; nothing is left running or unreaped."""
    started_r, started_w = os.pipe()
    gate = Gate(forking=harness.kind.mode == "forking")
    log = harness.event_log()
    threads: list[threading.Thread] = []

    def gated_echo(handler: Any, line: bytes) -> bytes:
        threads.append(threading.current_thread())  # only seen here when not forking
        log.record("served")
        os.write(started_w, b"s")
        gate.wait()
        return line

    def wait_until_started() -> None:
        readable, _, _ = select.select([started_r], [], [], CLIENT_TIMEOUT)
        assert readable, "the handler did not start"
        os.read(started_r, 1)

    class ClosingServer(harness.kind.server_class):  # type: ignore[misc,name-defined]
        def server_close(self) -> None:
            # The in-flight request goes on only now, so it finishes while the server
            # closes, as a slow request would.
            gate.open()
            super().server_close()

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.record("handle_error", repr(sys.exc_info()[1]))
            super().handle_error(request, client_address)

    server = harness.server(handler_class(harness.kind, gated_echo), server_class=ClosingServer)
    thread = start_serving(server)
    clients: list[Client] = []
    try:
        for i in range(3):
            clients.append(harness.connect(server))
            clients[-1].send(f"r{i}\n".encode())
            wait_until_started()
            if i < 2:
                gate.open()
                assert clients[-1].receive() == f"r{i}\n".encode()
        # The third request is in flight while the server shuts down and closes.

        def shutdown_and_close() -> None:
            server.shutdown()
            server.server_close()

        closer = threading.Thread(target=shutdown_and_close, daemon=True)
        closer.start()
        closer.join(STOP_TIMEOUT)
        assert not closer.is_alive(), "shutdown() or server_close() did not return"
        # server_close() waited for the request, so its outcome is known by now.
        assert [detail for _, name, detail in log.events() if name == "handle_error"] == []
        assert clients[-1].receive() == b"r2\n"  # the in-flight request was completed
    finally:
        gate.open(16)  # on failure, release anything still waiting
        for client in clients:
            client.close()
        stop_serving(server, thread)
        gate.close()
        os.close(started_r)
        os.close(started_w)

    assert len([1 for _, name, _ in log.events() if name == "served"]) == 3
    if harness.kind.mode == "threading":
        assert len(threads) == 3
        assert [t for t in threads if t.is_alive()] == []
        assert len(server._threads) == 0
    else:
        children = {pid for pid, name, _ in log.events() if name == "served"}
        assert len(children) == 3
        assert os.getpid() not in children
        assert not server.active_children
        for pid in children:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped already: no longer our child
