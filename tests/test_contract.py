"""The contract of every server class, run against all twenty-three of them.

TCP, UDP, Unix stream and Unix datagram servers, in every mode sockserve offers
(synchronous, threading, forking, thread pool, pre-fork and async), must behave the way
``socketserver`` users rely on: the same hooks in the same order, the same resource
handling, the same shutdown. One set of cases, each written once and parametrized by
``kind``, like CPython's selector tests share one base class across every implementation;
the handler is chosen per kind (async servers get async twins of the same handlers).

Protocol used throughout: a request is one line (a stream line, or a datagram holding
it) and the reply is that line echoed, unless a case says otherwise. Forked children and
pre-fork workers cannot append to a Python list in the test process, so hook calls are
recorded in a file (``EventLog``) that threads and processes append to alike.

Where a mode cannot run a case as written, the case expresses the same user-visible
contract in the mode's own terms, in one place each:

- ``handle_request()``: a pre-fork master hands requests to its workers only from
  ``serve_forever()``, so cases that serve "the request just sent" with
  ``handle_request()`` let the workers serve it instead (``Harness.requests_served``).
- Hooks an async server documents it does not call (``UNUSED_HOOKS``) are left out of
  the expected hook sequences.
- The graceful stop with a request in flight is ``shutdown()`` + ``server_close()``;
  a pre-fork master's ``shutdown()`` itself waits for its workers, and an async server's
  ``shutdown()`` cancels requests (documented), so its graceful stop is ``drain``.

What cannot be expressed at all is listed in ``EXCLUDED`` with its reason, and
``test_every_case_runs_on_every_kind_or_is_excluded`` checks that list is complete.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sockserve
from line_clients import Client, DatagramClient, StreamClient
from sockserve.testing import serve_in_thread
from unix_paths import MAX_UNIX_PATH

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0
#: How long shutdown(), the serving thread and server_close() may take in a passing test.
STOP_TIMEOUT = 5.0

pytestmark = [
    # Python 3.12+ warns that fork() in a process with threads may deadlock the child.
    # The threads are the test's own (serving thread, faulthandler's watchdog) and the
    # children only run a handler or a worker's serve loop. (CPython drops the warning
    # under "error" filters, so this matters for runs with other -W settings.)
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
_MODE_PREFIXES = {
    "sync": "",
    "threading": "Threading",
    "forking": "Forking",
    "thread_pool": "ThreadPool",
    "prefork": "Prefork",
    "async": "Async",
}
#: Constructor keywords per mode: small pools keep the suite quick.
_MODE_KWARGS: dict[str, dict[str, Any]] = {
    "thread_pool": {"max_workers": 4},
    "prefork": {"workers": 2},
}

#: Transport × mode combinations sockserve does not offer, so no kind exists for them.
ABSENT_CLASSES = {
    "PreforkUnixDatagramServer": "sockserve exports no pre-fork Unix datagram server",
}

#: Hooks a mode does not call for every request (AsyncServerMixIn does not list them among
#: its hooks); cases compare the others. An async stream server still closes a refused
#: connection with shutdown_request, its datagram twin calls nothing: both are left out.
UNUSED_HOOKS: dict[str, dict[str, str]] = {
    "async": {
        "process_request": "every request runs as a task on the event loop (documented)",
        "shutdown_request": "a served request's task closes its own connection",
        "close_request": "a served request's task closes its own connection",
    },
}


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
    def server_kwargs(self) -> dict[str, Any]:
        return _MODE_KWARGS.get(self.mode, {})

    @property
    def is_stream(self) -> bool:
        return self.transport in ("tcp", "unix_stream")

    @property
    def is_unix(self) -> bool:
        return self.transport.startswith("unix")

    @property
    def is_async(self) -> bool:
        return self.mode == "async"

    @property
    def is_prefork(self) -> bool:
        return self.mode == "prefork"

    @property
    def runs_threads_only(self) -> bool:
        """Requests run on threads of the test process (not children, not a loop)."""
        return self.mode in ("threading", "thread_pool")

    @property
    def family(self) -> int:
        return socket.AF_UNIX if self.is_unix else socket.AF_INET

    def without_unused_hooks(self, names: list[str]) -> list[str]:
        unused = UNUSED_HOOKS.get(self.mode, {})
        return [name for name in names if name not in unused]


ALL_KINDS = [
    kind
    for kind in (Kind(t, m) for m in _MODE_PREFIXES for t in _TRANSPORT_CLASSES)
    if kind.name not in ABSENT_CLASSES and hasattr(sockserve, kind.name)
]
UNIX_KINDS = [kind for kind in ALL_KINDS if kind.is_unix]
CONCURRENT_KINDS = [kind for kind in ALL_KINDS if kind.mode != "sync"]

#: ``(case, mode)`` pairs that cannot apply, with the reason; a case is a test function's
#: name without ``test_``. Everything else in a case's domain runs.
EXCLUDED: dict[tuple[str, str], str] = {
    ("handle_request_serves_exactly_one_request", "prefork"): (
        "one request per handle_request() call has no pre-fork form: only serve_forever() "
        "starts workers, and handle_request() in the master serves in the master itself"
    ),
}

#: Each case's domain, filled in by ``@contract``.
_CASES: dict[str, list[Kind]] = {}


def contract(domain: list[Kind] = ALL_KINDS) -> Callable[[Any], Any]:
    """Parametrize a case over the kinds of ``domain`` that ``EXCLUDED`` does not exclude."""

    def decorate(case: Any) -> Any:
        name = case.__name__.removeprefix("test_")
        _CASES[name] = domain
        kinds = [kind for kind in domain if (name, kind.mode) not in EXCLUDED]
        return pytest.mark.parametrize("kind", kinds, ids=lambda kind: kind.name)(case)

    return decorate


def test_every_server_class_is_covered() -> None:
    if not (hasattr(socket, "AF_UNIX") and hasattr(os, "fork")):
        pytest.skip("this platform lacks Unix sockets or fork()")
    public = {name for name in sockserve.__all__ if name.endswith("Server")}
    public.discard("BaseServer")
    assert {kind.name for kind in ALL_KINDS} == public
    for name, reason in ABSENT_CLASSES.items():
        assert reason
        assert not hasattr(sockserve, name), f"{name} exists now: add it to the contract"
    assert len(ALL_KINDS) == 23


def test_every_case_runs_on_every_kind_or_is_excluded() -> None:
    cases = {
        name.removeprefix("test_"): case
        for name, case in globals().items()
        if name.startswith("test_") and "harness" in inspect.signature(case).parameters
    }
    assert set(cases) == set(_CASES), "every case that takes a harness uses @contract"
    for (name, mode), reason in EXCLUDED.items():
        assert name in _CASES, f"exclusion of an unknown case {name!r}"
        assert mode in {kind.mode for kind in _CASES[name]}, (name, mode)
        assert reason.strip(), (name, mode)
    for name, case in cases.items():
        (mark,) = [mark for mark in case.pytestmark if mark.name == "parametrize"]
        runs = {kind.name for kind in mark.args[1]}
        excluded = {kind.name for kind in _CASES[name] if (name, kind.mode) in EXCLUDED}
        assert not runs & excluded
        assert runs | excluded == {kind.name for kind in _CASES[name]}, name
    for mode, hooks in UNUSED_HOOKS.items():
        assert mode in _MODE_PREFIXES
        assert all(reason.strip() for reason in hooks.values())


# -- recording hook calls from threads, forked children and pre-fork workers -------------


class EventLog:
    """Hook calls, one appended line each, from any thread or process.

    Each line is ``<pid> <name> <detail>``; a single small ``O_APPEND`` write is atomic,
    so lines from concurrent writers never interleave. Each write also pokes a pipe, so
    ``wait_for`` waits for an event without polling the file on a timer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._poked, self._poke = os.pipe()
        os.set_blocking(self._poke, False)

    def record(self, name: str, detail: str = "") -> None:
        line = f"{os.getpid()} {name} {detail}".rstrip() + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        try:
            os.write(self._poke, b".")
        except BlockingIOError:
            pass  # the pipe is full of pokes: the reader looks at the file anyway

    def wait_for(self, name: str, count: int = 1) -> None:
        """Until ``name`` has been recorded ``count`` times (at most CLIENT_TIMEOUT s)."""
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while self.names().count(name) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{name!r} was not recorded {count} times: {self.names()}"
            readable, _, _ = select.select([self._poked], [], [], remaining)
            if readable:
                os.read(self._poked, 4096)

    def events(self) -> list[tuple[int, str, str]]:
        events = []
        for line in self.path.read_text().splitlines():
            pid, name, *detail = line.split(" ", 2)
            events.append((int(pid), name, detail[0] if detail else ""))
        return events

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events()]

    def close(self) -> None:
        os.close(self._poked)
        os.close(self._poke)


def recording_server_class(base: Any, log: EventLog, *, accept: bool = True) -> Any:
    """``base`` with every hook recorded; ``accept=False`` makes verify_request refuse.

    ``finish_request`` returns what the base returns: an async server's is the handler,
    which the server awaits.
    """

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

        def finish_request(self, request: Any, client_address: Any) -> Any:
            log.record("finish_request")
            return super().finish_request(request, client_address)

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


# -- handlers and clients for every kind of socket --------------------------------------

#: ``respond(handler, line) -> reply``; None sends nothing back. For an async handler it
#: may return an awaitable of the reply instead.
Respond = Callable[[Any, bytes], "bytes | None | Awaitable[bytes | None]"]


def echo(handler: Any, line: bytes) -> bytes:
    return line


def handler_class(kind: Kind, respond: Respond = echo, log: EventLog | None = None) -> Any:
    """A handler for ``kind`` that reads one line and writes ``respond``'s reply."""
    if kind.is_async:
        return async_handler_class(kind, respond, log)
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
            assert not inspect.isawaitable(reply)
            if reply is not None:
                self.wfile.write(reply)

        def finish(self) -> None:
            if log is not None:
                log.record("finish")
            super().finish()

    return Handler


def async_handler_class(kind: Kind, respond: Respond, log: EventLog | None) -> Any:
    """The async twin of ``handler_class``'s handler: the same steps, as coroutines."""
    base: Any = (
        sockserve.AsyncStreamRequestHandler
        if kind.is_stream
        else sockserve.AsyncDatagramRequestHandler
    )

    class AsyncHandler(base):  # type: ignore[misc]
        async def setup(self) -> None:
            if log is not None:
                log.record("setup")
            await super().setup()

        async def handle(self) -> None:
            if log is not None:
                log.record("handle")
            line = await self.reader.readline() if kind.is_stream else self.rfile.readline()
            reply = respond(self, line)
            if inspect.isawaitable(reply):
                reply = await reply
            if reply is None:
                return
            if kind.is_stream:
                self.writer.write(reply)
                await self.writer.drain()
            else:
                self.wfile.write(reply)

        async def finish(self) -> None:
            if log is not None:
                log.record("finish")
            await super().finish()

    return AsyncHandler


class Harness:
    """Addresses, handlers, servers and clients of one kind."""

    def __init__(self, kind: Kind, short_dir: Path, tmp_path: Path) -> None:
        self.kind = kind
        self._short_dir = short_dir
        self._tmp_path = tmp_path
        self._numbers = itertools.count()
        self._logs: list[EventLog] = []

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
        log = EventLog(self._tmp_path / f"events{next(self._numbers)}.log")
        self._logs.append(log)
        return log

    def handler(self, respond: Respond = echo, log: EventLog | None = None) -> Any:
        return handler_class(self.kind, respond, log)

    def server(
        self, handler: Any = None, *, server_class: Any = None, address: Any = None, **kwargs: Any
    ) -> Any:
        server_class = server_class or self.kind.server_class
        return server_class(
            self.address() if address is None else address,
            handler or self.handler(),
            **self.kind.server_kwargs,
            **kwargs,
        )

    def connect(self, server: Any) -> Client:
        """A client of ``server``, bound so that its address is known to both sides."""
        if self.kind.is_unix:
            bind_to: Any = self._unix_path("c")
        else:
            bind_to = None if self.kind.is_stream else ("127.0.0.1", 0)
        if self.kind.is_stream:
            return StreamClient(self.kind.family, server.server_address, bind_to)
        return DatagramClient(self.kind.family, server.server_address, bind_to)

    @contextmanager
    def requests_served(self, server: Any, log: EventLog | None = None) -> Iterator[Any]:
        """``serve_one()`` serves the request a client has just sent: ``handle_request()``.

        A pre-fork master does not serve requests itself; its workers do, from
        ``serve_forever()``. For it the block runs with the workers serving, and
        ``serve_one()`` waits for the request's ``close_request`` when a ``log`` records
        hooks (a refused datagram leaves no other trace); on leaving the block the
        workers have exited, so the log is complete.
        """
        if not self.kind.is_prefork:
            yield server.handle_request
            return
        closed = itertools.count(1)

        def serve_one() -> None:
            if log is not None:
                log.wait_for("close_request", next(closed))

        with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
            yield serve_one

    def close(self) -> None:
        for log in self._logs:
            log.close()


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


def pids_of(events: list[tuple[int, str, str]]) -> set[int]:
    return {pid for pid, _, _ in events}


# -- the cases --------------------------------------------------------------------------


@contract()
def test_echo_round_trips_via_serve_forever(harness: Harness) -> None:
    with serve_in_thread(harness.server()) as server:
        for i in range(5):
            with harness.connect(server) as client:
                line = f"hello {i}\n".encode()
                assert client.exchange(line) == line


@contract()
def test_handle_request_serves_exactly_one_request(harness: Harness) -> None:
    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log)
    with (
        harness.server(harness.handler(log=log), server_class=server_class) as server,
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


@contract()
def test_hooks_run_in_the_stdlib_order(harness: Harness) -> None:
    kind = harness.kind
    log = harness.event_log()
    server_class = recording_server_class(kind.server_class, log)
    with (
        harness.server(harness.handler(log=log), server_class=server_class) as server,
        harness.connect(server) as client,
        harness.requests_served(server, log) as serve_one,
    ):
        client.send(b"order\n")
        serve_one()
        assert client.receive() == b"order\n"
    # server_close() has waited for the request's thread or child, and a pre-fork
    # server's workers have exited: the log is complete.

    accepted = kind.without_unused_hooks(["get_request", "verify_request", "process_request"])
    served = kind.without_unused_hooks(
        ["finish_request", "setup", "handle", "finish", "shutdown_request", "close_request"]
    )
    events = [event for event in log.events() if kind.without_unused_hooks([event[1]])]
    if kind.mode == "forking":
        in_parent = [name for pid, name, _ in events if pid == os.getpid()]
        in_child = [name for pid, name, _ in events if pid != os.getpid()]
        # The parent closes its copy of the request right after forking.
        assert in_parent == [*accepted, "close_request"]
        assert in_child == served
        assert len(pids_of(events) - {os.getpid()}) == 1
    else:
        assert [name for _, name, _ in events] == accepted + served
        if kind.is_prefork:  # one worker did all of it, the master nothing
            assert len(pids_of(events)) == 1
            assert os.getpid() not in pids_of(events)
        else:
            assert pids_of(events) == {os.getpid()}


@contract()
def test_refused_request_is_closed_without_calling_the_handler(harness: Harness) -> None:
    kind = harness.kind
    log = harness.event_log()
    server_class = recording_server_class(kind.server_class, log, accept=False)
    with (
        harness.server(harness.handler(log=log), server_class=server_class) as server,
        harness.connect(server) as client,
        harness.requests_served(server, log) as serve_one,
    ):
        if not kind.is_stream:
            client.send(b"refused\n")  # a datagram server only sees a request once sent
        serve_one()
        if kind.is_stream:
            assert client.receive() == b""  # closed: end of stream, no reply
    events = [event for event in log.events() if kind.without_unused_hooks([event[1]])]
    assert [name for _, name, _ in events] == kind.without_unused_hooks(
        ["get_request", "verify_request", "shutdown_request", "close_request"]
    )
    if kind.is_prefork:  # a worker refused it
        assert len(pids_of(events)) == 1
        assert os.getpid() not in pids_of(events)
    else:
        assert pids_of(events) == {os.getpid()}  # nothing was forked


@contract()
def test_handler_exception_reaches_handle_error_and_serving_goes_on(harness: Harness) -> None:
    def fail_on_boom(handler: Any, line: bytes) -> bytes:
        if line == b"boom\n":
            raise ValueError("boom")
        return line

    log = harness.event_log()
    server_class = recording_server_class(harness.kind.server_class, log)
    server = harness.server(harness.handler(fail_on_boom), server_class=server_class)
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


@contract()
def test_server_address_is_the_bound_address(harness: Harness) -> None:
    requested = harness.address()
    with harness.server(address=requested) as server:
        if harness.kind.is_unix:
            assert server.server_address == requested
            assert stat.S_ISSOCK(os.stat(requested).st_mode)
        else:
            host, port = server.server_address
            assert host == "127.0.0.1"
            assert port != 0
            assert server.server_address == server.socket.getsockname()
        with harness.connect(server) as client, harness.requests_served(server) as serve_one:
            client.send(b"reachable\n")
            serve_one()
            assert client.receive() == b"reachable\n"


@contract()
def test_context_manager_closes_the_socket(harness: Harness) -> None:
    server = harness.server()
    with server as entered:
        assert entered is server
        assert server.fileno() >= 0
    assert server.fileno() == -1
    assert server.socket.fileno() == -1


@contract()
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
        if harness.kind.is_prefork:
            assert server.worker_pids() == []
    finally:
        stop_serving(server, thread)


@contract()
def test_bind_and_activate_false_then_bind_and_activate(harness: Harness) -> None:
    requested = harness.address()
    server = harness.server(address=requested, bind_and_activate=False)
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


@contract(UNIX_KINDS)
def test_unix_socket_file_is_removed_at_server_close(harness: Harness) -> None:
    server = harness.server()
    path = server.server_address
    thread = start_serving(server)
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with harness.connect(server) as client:
            assert client.exchange(b"x\n") == b"x\n"
        assert os.path.lexists(path)  # still there while serving
        server.shutdown()
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() did not return after shutdown()"
        # Still there once serving stopped: a forked child or a pre-fork worker that
        # closed its copy of the server did not remove the file.
        assert os.path.lexists(path)
    finally:
        stop_serving(server, thread)  # server_close()
    assert not os.path.lexists(path)


class Gate:
    """Holds requests until the test lets them go: across threads, into forked children
    and pre-fork workers, or on an event loop.

    Threads wait on a semaphore: releasing it does not give up the GIL, so whatever the
    releasing thread does next (say, the rest of ``server_close()``) runs before the
    request goes on. Processes wait on a pipe they inherited; an event loop watches it.
    """

    def __init__(self, kind: Kind) -> None:
        self._pipe = None if kind.runs_threads_only else os.pipe()
        self._semaphore = threading.Semaphore(0)

    def wait(self) -> None:
        if self._pipe is None:
            assert self._semaphore.acquire(timeout=CLIENT_TIMEOUT), "the gate never opened"
        else:
            readable, _, _ = select.select([self._pipe[0]], [], [], CLIENT_TIMEOUT)
            assert readable, "the gate never opened"
            os.read(self._pipe[0], 1)

    async def wait_async(self) -> None:
        assert self._pipe is not None
        loop = asyncio.get_running_loop()
        readable = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self._pipe[0], on_readable)
        try:
            await asyncio.wait_for(readable, CLIENT_TIMEOUT)
        except TimeoutError:
            raise AssertionError("the gate never opened") from None
        finally:
            loop.remove_reader(self._pipe[0])
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


def drain_with_a_request_in_flight(server: Any, loop: Any, gate: Gate) -> Any:
    """An async server's graceful stop, with the gated request let go once it has begun.

    ``drain_async`` runs on the server's own loop; one turn after it starts it is
    waiting for the running requests, and only then does the gate open.
    """

    async def drain() -> Any:
        draining = asyncio.ensure_future(server.drain_async(STOP_TIMEOUT))
        await asyncio.sleep(0)  # one loop turn, not a delay: drain_async now waits
        gate.open()
        return await draining

    return asyncio.run_coroutine_threadsafe(drain(), loop).result(STOP_TIMEOUT)


@contract(CONCURRENT_KINDS)
def test_no_request_thread_or_child_outlives_server_close(harness: Harness) -> None:
    """A graceful stop lets in-flight requests finish; nothing is left running or unreaped.

    The graceful stop is shutdown() then server_close(), which waits for request threads
    and children. A pre-fork master's shutdown() waits for its workers, which finish
    their requests first. An async server's shutdown() cancels running requests (its
    documented behaviour); its graceful stop is drain.
    """
    kind = harness.kind
    test_pid = os.getpid()
    started_r, started_w = os.pipe()
    gate = Gate(kind)
    log = harness.event_log()
    threads: list[threading.Thread] = []
    loops: list[asyncio.AbstractEventLoop] = []

    def gated_echo(handler: Any, line: bytes) -> bytes | Awaitable[bytes]:
        threads.append(threading.current_thread())  # only seen here in this process
        log.record("served")
        os.write(started_w, b"s")
        if kind.is_async:
            loops.append(asyncio.get_running_loop())

            async def after_the_gate() -> bytes:
                await gate.wait_async()
                return line

            return after_the_gate()
        gate.wait()
        return line

    def wait_until_started() -> None:
        readable, _, _ = select.select([started_r], [], [], CLIENT_TIMEOUT)
        assert readable, "the handler did not start"
        os.read(started_r, 1)

    class ClosingServer(kind.server_class):  # type: ignore[misc,name-defined]
        def server_close(self) -> None:
            # The in-flight request goes on only now, so it finishes while the server
            # closes, as a slow request would.
            if kind.mode in ("threading", "thread_pool", "forking"):
                gate.open()
            super().server_close()

        def shutdown(self) -> None:
            if kind.is_prefork and os.getpid() != test_pid:
                # A worker told to stop (the master's SIGTERM): only now may its
                # in-flight request go on.
                gate.open()
            super().shutdown()

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.record("handle_error", repr(sys.exc_info()[1]))
            super().handle_error(request, client_address)

    server = harness.server(harness.handler(gated_echo), server_class=ClosingServer)
    thread = start_serving(server)
    clients: list[Client] = []
    drained: list[Any] = []
    try:
        for i in range(3):
            clients.append(harness.connect(server))
            clients[-1].send(f"r{i}\n".encode())
            wait_until_started()
            if i < 2:
                gate.open()
                assert clients[-1].receive() == f"r{i}\n".encode()
        # The third request is in flight while the server stops and closes.

        def stop_gracefully() -> None:
            if kind.is_async:
                drained.append(drain_with_a_request_in_flight(server, loops[-1], gate))
                thread.join(STOP_TIMEOUT)  # drain() ends serve_forever
            else:
                server.shutdown()
            server.server_close()

        closer = threading.Thread(target=stop_gracefully, daemon=True)
        closer.start()
        closer.join(STOP_TIMEOUT)
        assert not closer.is_alive(), "the graceful stop did not return"
        # shutdown() returns once the loop has said it is done; the serving thread
        # still has its last lines to run (as with the stdlib), so join, not peek.
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() did not return"
        # The stop waited for the request, so its outcome is known by now.
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

    served_by = [pid for pid, name, _ in log.events() if name == "served"]
    assert len(served_by) == 3
    if kind.runs_threads_only or kind.is_async:
        assert set(served_by) == {test_pid}
        assert len(threads) == 3
        assert [t for t in threads if t.is_alive()] == []
        if kind.mode == "threading":
            assert len(server._threads) == 0
        if kind.is_async:
            assert set(threads) == {thread}  # the event loop's thread, which has ended
            (report,) = drained
            assert (report.finished, report.aborted) == (1, 0)
            assert server.stats().active == 0
        return
    children = set(served_by)
    assert test_pid not in children
    if kind.is_prefork:
        assert 1 <= len(children) <= kind.server_kwargs["workers"]
        assert server.worker_pids() == []
    else:
        assert len(children) == 3
        assert not server.active_children
    for pid in children:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped already: no longer our child
