"""The async mode: one contract for the four async servers, on both event loops.

The contract cases run against ``AsyncTCPServer``, ``AsyncUnixStreamServer``,
``AsyncUDPServer`` and ``AsyncUnixDatagramServer``, each on the asyncio loop and on uvloop
(skipped only when uvloop is not importable). The protocol is the synchronous contract's:
a request is one line (or a datagram holding it), the reply is that line echoed.
Stream-only behaviour (shutdown mid-request, drain, limits, back-pressure, timeouts, many
idle connections) follows, then the event-loop option and the slow-callback watchdog.

Synchronisation is by events and round trips, never by sleeping; every client socket has a
timeout; every server is stopped by the test that started it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from line_clients import Client, DatagramClient, StreamClient
from sockserve.addresses import format_address
from sockserve.aio import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
    AsyncLineTooLongError,
    AsyncStreamRequestHandler,
    AsyncTCPServer,
    AsyncUDPServer,
    AsyncUnixDatagramServer,
    AsyncUnixStreamServer,
    LineTooLongError,
    ReadTimeoutError,
    StreamReader,
)
from sockserve.aio.fastpath import IMPLEMENTATION
from sockserve.aio.loop import loop_name
from sockserve.aio.streams import WRITE_HIGH_WATER_BYTES, receive_buffer
from sockserve.errors import AddressInUseError, ConfigurationError, UnixSocketPathExistsError
from sockserve.testing import serve_in_thread
from unix_paths import MAX_UNIX_PATH, short_directory

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0
#: How long stopping a server may take in a passing test.
STOP_TIMEOUT = 5.0

#: Unix socket names are unique across the module (its short directory is shared).
_UNIX_NAMES = itertools.count()

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
    ),
]

_SERVER_CLASSES = {
    "tcp": AsyncTCPServer,
    "udp": AsyncUDPServer,
    "unix_stream": AsyncUnixStreamServer,
    "unix_datagram": AsyncUnixDatagramServer,
}


@dataclass(frozen=True)
class Kind:
    """One async server class on one event loop."""

    transport: str
    event_loop: str

    @property
    def server_class(self) -> Any:
        return _SERVER_CLASSES[self.transport]

    @property
    def is_stream(self) -> bool:
        return self.transport in ("tcp", "unix_stream")

    @property
    def is_unix(self) -> bool:
        return self.transport.startswith("unix")

    @property
    def family(self) -> int:
        return socket.AF_UNIX if self.is_unix else socket.AF_INET


def _kind_params(transports: list[str]) -> list[Any]:
    params = []
    for transport in transports:
        for loop in LOOPS:
            if isinstance(loop, str):
                params.append(pytest.param(Kind(transport, loop), id=f"{transport}-{loop}"))
            else:
                params.append(
                    pytest.param(
                        Kind(transport, loop.values[0]),
                        marks=loop.marks,
                        id=f"{transport}-{loop.values[0]}",
                    )
                )
    return params


ALL_KINDS = _kind_params(list(_SERVER_CLASSES))
STREAM_KINDS = _kind_params(["tcp", "unix_stream"])
TCP_KINDS = _kind_params(["tcp"])


# -- clients ------------------------------------------------------------------------------


def send_expecting_close(client: StreamClient, data: bytes) -> None:
    """Send ``data`` to a server about to close the connection unread, and see it close."""
    try:
        client.send(data)
    except BrokenPipeError:  # a Unix socket: the server closed before we sent
        assert client.sock.family == socket.AF_UNIX
    assert_closed_by_server(client)


def assert_closed_by_server(client: StreamClient) -> None:
    """The server closed with bytes of ours unread: TCP shows its FIN first (b""), but a
    Unix stream socket reports the unread bytes as a reset."""
    try:
        assert client.receive() == b""
    except ConnectionResetError:
        assert client.sock.family == socket.AF_UNIX


# -- handlers -------------------------------------------------------------------------------


class LineEcho(AsyncStreamRequestHandler):
    """Echo every line until the client closes."""

    async def handle(self) -> None:
        async for line in self.reader:
            self.writer.write(line)
            await self.writer.drain()


class DatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(self.packet)


class Harness:
    """Addresses, servers and clients of one kind."""

    def __init__(self, kind: Kind, short_dir: Path) -> None:
        self.kind = kind
        self._short_dir = short_dir

    def _unix_path(self, prefix: str) -> str:
        path = str(self._short_dir / f"{prefix}{next(_UNIX_NAMES)}")
        assert len(os.fsencode(path)) < MAX_UNIX_PATH, path
        return path

    def address(self) -> Any:
        return self._unix_path("s") if self.kind.is_unix else ("127.0.0.1", 0)

    def echo_handler(self) -> Any:
        return LineEcho if self.kind.is_stream else DatagramEcho

    def server(self, handler: Any = None, *, server_class: Any = None, **kwargs: Any) -> Any:
        server_class = server_class or self.kind.server_class
        return server_class(
            self.address(),
            handler or self.echo_handler(),
            event_loop=self.kind.event_loop,
            **kwargs,
        )

    def connect(self, server: Any) -> Client:
        if self.kind.is_unix:
            bind_to: Any = self._unix_path("c")
        else:
            bind_to = None if self.kind.is_stream else ("127.0.0.1", 0)
        if self.kind.is_stream:
            return StreamClient(self.kind.family, server.server_address, bind_to)
        return DatagramClient(self.kind.family, server.server_address, bind_to)


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for Unix sockets whose paths stay well under the AF_UNIX limit."""
    with short_directory(tmp_path_factory.mktemp("u")) as directory:
        yield directory


@pytest.fixture
def harness(request: pytest.FixtureRequest, short_dir: Path) -> Harness:
    kind: Kind = request.param
    return Harness(kind, short_dir)


def _start(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(STOP_TIMEOUT)
    assert not thread.is_alive(), "serve_forever did not return"
    server.server_close()


# -- the contract: all four servers, both loops -------------------------------------------


@pytest.mark.parametrize("harness", ALL_KINDS, indirect=True)
def test_echo_round_trips(harness: Harness) -> None:
    server = harness.server()
    with serve_in_thread(server), harness.connect(server) as first, harness.connect(server) as b:
        for n in range(3):
            assert first.exchange(b"one %d\n" % n) == b"one %d\n" % n
            assert b.exchange(b"two %d\n" % n) == b"two %d\n" % n
    assert server.socket.fileno() == -1


def _stage_params() -> list[Any]:
    """(kind, stage) pairs; a stream handler's setup sees no request, so stream servers
    get their setup case in ``test_stream_setup_exception``."""
    params = []
    for kind_param in ALL_KINDS:
        kind = kind_param.values[0]
        for stage in ("setup", "handle", "finish"):
            if not (stage == "setup" and kind.is_stream):
                params.append(
                    pytest.param(kind, stage, marks=kind_param.marks, id=f"{kind_param.id}-{stage}")
                )
    return params


@pytest.mark.parametrize(("harness", "stage"), _stage_params(), indirect=["harness"])
def test_handler_exception_reaches_handle_error(
    harness: Harness, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The request "boom" makes ``stage`` raise; any other request is echoed."""
    steps: list[str] = []
    errors: list[Any] = []
    is_stream = harness.kind.is_stream
    base = AsyncStreamRequestHandler if is_stream else AsyncDatagramRequestHandler

    class Failing(base):  # type: ignore[misc,valid-type]
        line = b""

        async def setup(self) -> None:
            steps.append("setup")
            await super().setup()
            if stage == "setup" and self.packet == b"boom\n":
                raise RuntimeError("setup failed")

        async def handle(self) -> None:
            steps.append("handle")
            self.line = await self.reader.readline() if is_stream else self.packet
            if stage == "handle" and self.line == b"boom\n":
                raise RuntimeError("handle failed")
            if is_stream:
                self.writer.write(self.line)
            else:
                self.wfile.write(self.line)

        async def finish(self) -> None:
            steps.append("finish")
            await super().finish()
            if stage == "finish" and self.line == b"boom\n":
                raise RuntimeError("finish failed")

    class Recording(harness.kind.server_class):  # type: ignore[misc,name-defined]
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append((sys.exc_info()[1], client_address))
            super().handle_error(request, client_address)

    caplog.set_level(logging.ERROR, logger="sockserve")
    with serve_in_thread(harness.server(Failing, server_class=Recording)) as server:
        with harness.connect(server) as client:
            client.send(b"boom\n")
            if stage == "finish":  # the reply went out before finish raised
                assert client.receive() == b"boom\n"
            elif stage == "handle" and not is_stream:
                assert client.receive() == b""  # finish still sends wfile, as the stdlib does
            if is_stream:
                assert client.receive() == b""  # the connection is closed
            address = client.address
        with harness.connect(server) as client:
            assert client.exchange(b"fine\n") == b"fine\n"  # the server keeps serving
        assert server.stats().handler_errors == 1
    (exc, client_address), *others = errors
    assert not others
    assert str(exc) == f"{stage} failed"
    if not (is_stream and harness.kind.is_unix):  # a Unix stream peer has no name
        assert client_address == address
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is exc]
    assert logged, "handle_error did not log the exception"
    assert format_address(client_address) in logged[0].getMessage()
    expected = ["setup"] if stage == "setup" else ["setup", "handle", "finish"]
    assert steps[: len(expected)] == expected


@pytest.mark.parametrize("harness", STREAM_KINDS, indirect=True)
def test_stream_setup_exception(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """setup raised: handle and finish do not run, handle_error does, the server goes on."""
    steps: list[str] = []
    failures = iter([True])

    class FailsOnce(LineEcho):
        async def setup(self) -> None:
            steps.append("setup")
            await super().setup()
            if next(failures, False):
                raise RuntimeError("setup failed")

        async def handle(self) -> None:
            steps.append("handle")
            await super().handle()

        async def finish(self) -> None:
            steps.append("finish")

    caplog.set_level(logging.ERROR, logger="sockserve")
    with serve_in_thread(harness.server(FailsOnce)) as server:
        with harness.connect(server) as client:
            assert isinstance(client, StreamClient)
            send_expecting_close(client, b"first\n")
            address = client.address
        with harness.connect(server) as client:
            assert client.exchange(b"second\n") == b"second\n"
    assert steps[:2] == ["setup", "setup"]
    assert server.stats().handler_errors == 1
    messages = [r.getMessage() for r in caplog.records if r.exc_info]
    if not harness.kind.is_unix:
        assert any(format_address(address) in m for m in messages), messages


@pytest.mark.parametrize("harness", ALL_KINDS, indirect=True)
def test_shutdown_before_serve_forever_returns_at_once(harness: Harness) -> None:
    server = harness.server()
    try:
        server.shutdown()
        server.serve_forever()  # returns at once: the shutdown was pending
    finally:
        server.server_close()


@pytest.mark.parametrize("harness", ALL_KINDS, indirect=True)
def test_stats_and_handle_request(harness: Harness) -> None:
    server = harness.server()
    try:
        with harness.connect(server) as client:
            client.send(b"one\n")
            if isinstance(client, StreamClient):
                client.sock.shutdown(socket.SHUT_WR)  # the echo handler ends at EOF
            server.handle_request()
            assert client.receive() == b"one\n"
        stats = server.stats()
        assert (stats.accepted, stats.active, stats.peak_active) == (1, 0, 1)
    finally:
        server.server_close()


@pytest.mark.parametrize("harness", ALL_KINDS, indirect=True)
def test_verify_request_may_refuse_and_may_be_a_coroutine(harness: Harness) -> None:
    class Picky(harness.kind.server_class):  # type: ignore[misc,name-defined]
        calls = 0

        async def verify_request(self, request: Any, client_address: Any) -> bool:
            await asyncio.sleep(0)
            Picky.calls += 1
            return Picky.calls > 1  # refuse the first request only

    with serve_in_thread(harness.server(server_class=Picky)) as server:
        with harness.connect(server) as client:
            if isinstance(client, StreamClient):
                send_expecting_close(client, b"refused\n")
            else:
                client.send(b"refused\n")
        with harness.connect(server) as client:
            assert client.exchange(b"accepted\n") == b"accepted\n"


@pytest.mark.parametrize("harness", _kind_params(["udp", "unix_datagram"]), indirect=True)
def test_shutdown_request_follows_every_datagram_as_in_the_sync_servers(
    harness: Harness,
) -> None:
    finished: list[bytes] = []

    class Counting(harness.kind.server_class):  # type: ignore[misc,name-defined]
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return not request[0].startswith(b"refused")

        def shutdown_request(self, request: Any) -> None:
            finished.append(request[0])
            super().shutdown_request(request)

    with (
        serve_in_thread(harness.server(server_class=Counting)) as server,
        harness.connect(server) as client,
    ):
        client.send(b"refused\n")
        assert client.exchange(b"served\n") == b"served\n"
        assert client.exchange(b"again\n") == b"again\n"
    # the refused datagram needs no await, and the client waits for each reply: in order
    assert finished == [b"refused\n", b"served\n", b"again\n"]


@pytest.mark.parametrize("harness", ALL_KINDS, indirect=True)
def test_bind_errors_and_unix_cleanup_match_the_core(harness: Harness) -> None:
    first = harness.server()
    try:
        expected = UnixSocketPathExistsError if harness.kind.is_unix else AddressInUseError
        with pytest.raises(expected):
            harness.kind.server_class(
                first.server_address, harness.echo_handler(), event_loop=harness.kind.event_loop
            )
    finally:
        first.server_close()
    if harness.kind.is_unix:
        assert not os.path.exists(first.server_address)


# -- stream servers ---------------------------------------------------------------------------


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_shutdown_with_100_clients_mid_request(harness: Harness) -> None:
    clients_waiting = threading.Semaphore(0)

    class Slow(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            if line.startswith(b"quick"):
                self.writer.write(line)
                await self.writer.drain()
            clients_waiting.release()
            await asyncio.Event().wait()  # mid-request until shutdown

    server = harness.server(Slow)
    thread = _start(server)
    clients = [harness.connect(server) for _ in range(100)]
    try:
        for n, client in enumerate(clients):
            client.send(b"quick\n" if n % 2 else b"slow\n")
        for _ in clients:
            assert clients_waiting.acquire(timeout=CLIENT_TIMEOUT)
        _stop(server, thread)  # asserts serve_forever returned promptly
        for n, client in enumerate(clients):
            reply = client.receive()
            assert reply == (b"quick\n" if n % 2 else b""), n
            if reply:
                assert client.receive() == b""  # then a clean close
    finally:
        for client in clients:
            client.close()
        if thread.is_alive():
            _stop(server, thread)


@pytest.mark.parametrize("harness", STREAM_KINDS, indirect=True)
def test_drain_cancels_a_handler_that_waits_forever(harness: Harness) -> None:
    started = threading.Event()
    finished: list[str] = []

    class Forever(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.readline()
            started.set()
            await asyncio.Event().wait()

        async def finish(self) -> None:
            finished.append("finish")

    server = harness.server(Forever)
    thread = _start(server)
    try:
        with harness.connect(server) as client:
            client.send(b"hello\n")
            assert started.wait(CLIENT_TIMEOUT)
            report = server.drain(0.2)
            assert (report.finished, report.aborted) == (0, 1)
            assert report.seconds > 0
            assert client.receive() == b""  # closed
            thread.join(STOP_TIMEOUT)
            assert not thread.is_alive(), "serve_forever did not return after drain"
        assert finished == ["finish"]
    finally:
        _stop(server, thread)


@pytest.mark.parametrize("harness", STREAM_KINDS, indirect=True)
def test_drain_lets_quick_requests_finish(harness: Harness) -> None:
    release = threading.Event()
    started = threading.Event()

    class WaitsForRelease(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            started.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, CLIENT_TIMEOUT)
            self.writer.write(line)

    server = harness.server(WaitsForRelease)
    thread = _start(server)
    try:
        with harness.connect(server) as client:
            client.send(b"hello\n")
            assert started.wait(CLIENT_TIMEOUT)
            release.set()
            report = server.drain(CLIENT_TIMEOUT)
            assert (report.finished, report.aborted) == (1, 0)
            assert client.receive() == b"hello\n"
    finally:
        _stop(server, thread)


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_client_that_vanishes_mid_write(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    writing = threading.Event()
    ended = threading.Event()

    class Firehose(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            if await self.reader.readline() != b"go\n":
                self.writer.write(b"still here\n")
                return
            chunk = b"x" * 65536
            while True:
                self.writer.write(chunk)
                writing.set()
                await self.writer.drain()

        async def finish(self) -> None:
            ended.set()

    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(harness.server(Firehose)) as server:
        client = harness.connect(server)
        assert isinstance(client, StreamClient)
        client.send(b"go\n")
        assert writing.wait(CLIENT_TIMEOUT)
        client.sock.recv(1000)
        # Unread data on close makes the kernel send RST: the peer vanished mid-write.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()
        assert ended.wait(CLIENT_TIMEOUT)
        # The server keeps serving; this client reads all it is sent, so its close is clean.
        with harness.connect(server) as other:
            assert isinstance(other, StreamClient)
            other.send(b"hello\n")
            assert other.receive() == b"still here\n"
        stats = server.stats()
    # The peer's doing: counted apart from handler errors, one line, no traceback.
    assert stats.handler_errors == 0
    assert stats.peer_faults == {"reset": 1}
    lines = [r for r in caplog.records if "ended by the client: reset" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("harness", STREAM_KINDS, indirect=True)
def test_line_longer_than_max_line_length(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    class Short(LineEcho):
        max_line_length = 100

        async def handle(self) -> None:
            try:
                await super().handle()
            finally:
                seen.append(len(self.reader._buffer))

    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(harness.server(Short)) as server:
        with harness.connect(server) as client:
            assert client.exchange(b"short\n") == b"short\n"
            client.send(b"y" * 100_000)  # no newline: the server gives up, memory bounded
            assert_closed_by_server(client)
        with harness.connect(server) as client:
            assert client.exchange(b"x" * 100 + b"\n") == b"x" * 100 + b"\n"  # at the limit
        stats = server.stats()
    # The peer broke the protocol: a peer fault, not a handler error.
    assert stats.handler_errors == 0
    assert stats.peer_faults == {"line_too_long": 1}
    assert seen[0] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "line_too_long" in r.getMessage()]
    assert len(lines) == 1
    assert "max_line_length" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one clear line, not a traceback


def test_line_too_long_error_matches_asyncio_exceptions() -> None:
    # What the async reader raises (AsyncLineTooLongError) is caught as either
    error = AsyncLineTooLongError("too long", 10)
    assert isinstance(error, LineTooLongError)
    assert isinstance(error, ValueError)
    assert isinstance(error, asyncio.LimitOverrunError)
    assert error.consumed == 10
    assert str(error) == "too long"


@pytest.mark.parametrize("harness", STREAM_KINDS, indirect=True)
def test_idle_timeout_closes_the_connection(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    class Impatient(LineEcho):
        timeout = 0.2

    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(harness.server(Impatient)) as server:
        with harness.connect(server) as client:
            assert client.exchange(b"hello\n") == b"hello\n"
            assert client.receive() == b""  # closed by the server after 0.2 s idle
        stats = server.stats()
    assert stats.handler_errors == 0
    assert stats.peer_faults == {"timeout": 1}
    assert any("ended by the client: timeout" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_back_pressure_bounds_the_write_buffer(harness: Harness) -> None:
    chunk = b"z" * 65536
    chunks = 64
    paused = threading.Event()
    buffer_sizes: list[int] = []

    class Bulk(AsyncStreamRequestHandler):
        async def setup(self) -> None:
            await super().setup()
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        async def handle(self) -> None:
            await self.reader.readline()
            for _ in range(chunks):
                self.writer.write(chunk)
                size = self.writer.transport.get_write_buffer_size()
                buffer_sizes.append(size)
                if size > WRITE_HIGH_WATER_BYTES:
                    paused.set()  # the client is not reading: drain() must wait now
                await self.writer.drain()

    with serve_in_thread(harness.server(Bulk)) as server, socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(CLIENT_TIMEOUT)
        client.connect(server.server_address)
        client.sendall(b"go\n")
        assert paused.wait(CLIENT_TIMEOUT)
        written_when_paused = len(buffer_sizes)
        assert written_when_paused < chunks  # the handler waited for the client
        received = 0
        while received < chunk.__len__() * chunks:
            data = client.recv(1 << 20)
            assert data
            received += len(data)
    assert max(buffer_sizes) <= WRITE_HIGH_WATER_BYTES + len(chunk)


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_max_connections_wait_stops_accepting(harness: Harness) -> None:
    with serve_in_thread(harness.server(max_connections=1)) as server:
        with harness.connect(server) as first:
            assert first.exchange(b"a\n") == b"a\n"
            second = harness.connect(server)  # queued in the kernel's backlog
            try:
                second.send(b"b\n")
                # A round trip through the loop after the second connect: had the
                # listener been watched, the second connection would be accepted by now.
                assert first.exchange(b"again\n") == b"again\n"
                assert server.stats().accepted == 1
                first.close()
                assert second.receive() == b"b\n"  # served once a slot freed
            finally:
                second.close()
        assert server.stats().peak_active == 1


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_max_connections_reject_calls_handle_overload(harness: Harness) -> None:
    class Busy(AsyncTCPServer):
        def handle_overload(self, request: Any, client_address: Any) -> None:
            request.sendall(b"busy\n")

    server = harness.server(server_class=Busy, max_connections=1, overload_policy="reject")
    with serve_in_thread(server):
        with harness.connect(server) as first:
            assert first.exchange(b"a\n") == b"a\n"
            with harness.connect(server) as second:
                assert second.receive() == b"busy\n"
                assert second.receive() == b""
            assert first.exchange(b"b\n") == b"b\n"
        assert server.stats().rejected == {"max_connections": 1}


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_serve_inside_an_existing_event_loop(harness: Harness) -> None:
    server = harness.server()

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.server_address)
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        report = await server.drain_async(1.0)  # the open connection is cancelled
        assert report.aborted == 1
        await serving
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    try:
        asyncio.run(main())
    finally:
        server.server_close()


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_shutdown_from_a_handler_does_not_deadlock(harness: Harness) -> None:
    class Stopper(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            self.server.shutdown()
            self.writer.write(b"stopping\n")

    server = harness.server(Stopper)
    thread = _start(server)
    try:
        with harness.connect(server) as client:
            client.send(b"stop\n")
            thread.join(STOP_TIMEOUT)
            assert not thread.is_alive()
    finally:
        _stop(server, thread)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)
@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_serve_forever_in_a_forked_child(harness: Harness) -> None:
    class QuitOnRequest(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            self.writer.write(b"%d " % os.getpid() + line)
            if line == b"quit\n":
                self.server.shutdown()

    server = harness.server(QuitOnRequest)
    pid = os.fork()
    if pid == 0:  # the child serves; it never returns into pytest
        code = 1
        try:
            server.serve_forever()
            code = 0
        finally:
            os._exit(code)
    try:
        with harness.connect(server) as client:
            reply = client.exchange(b"quit\n")
            assert reply == b"%d quit\n" % pid
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        server.server_close()


@pytest.mark.parametrize("harness", TCP_KINDS, indirect=True)
def test_10000_idle_connections_while_others_ping_pong(harness: Harness) -> None:
    idle = 10_000
    needed = 2 * idle + 200  # server and holder each need one descriptor per connection
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < idle + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} cannot hold {idle} connections")
    new_soft = min(hard, max(soft, needed)) if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    try:
        with serve_in_thread(harness.server()) as server:
            # The idle clients live in a child process so that each side has its own
            # descriptor table (the hard limit here may not fit both in one process).
            host, port = server.server_address
            with subprocess.Popen(
                [sys.executable, "-c", _HOLDER, host, str(port), str(idle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            ) as holder:
                assert holder.stdout is not None
                assert holder.stdin is not None
                assert holder.stdout.readline().strip() == "connected"
                with harness.connect(server) as a, harness.connect(server) as b:
                    for n in range(20):
                        assert a.exchange(b"a%d\n" % n) == b"a%d\n" % n
                        assert b.exchange(b"b%d\n" % n) == b"b%d\n" % n
                    assert server.stats().active == idle + 2
                holder.stdin.close()
                assert holder.wait(CLIENT_TIMEOUT * 3) == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_HOLDER = """
import resource, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
socks = []
for _ in range(count):
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(b"hi\\n")
    socks.append(sock)
for sock in socks:  # each one answered: all of them are being served at once
    assert sock.recv(3) == b"hi\\n"
print("connected", flush=True)
sys.stdin.read()
for sock in socks:
    sock.close()
"""


# -- the event loop option ---------------------------------------------------------------------


@pytest.mark.parametrize("event_loop", LOOPS)
def test_event_loop_choice_is_the_loop_that_runs(event_loop: str) -> None:
    names: list[str] = []

    class Which(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            names.append(loop_name(asyncio.get_running_loop()))
            self.writer.write(b"ok\n")

    server = AsyncTCPServer(("127.0.0.1", 0), Which, event_loop=event_loop)
    with serve_in_thread(server), StreamClient(socket.AF_INET, server.server_address) as client:
        assert client.receive() == b"ok\n"
    assert names == [event_loop]


def test_uvloop_requested_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        AsyncTCPServer(("127.0.0.1", 0), LineEcho, event_loop="uvloop")
    names: list[str] = []

    class Which(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            names.append(loop_name(asyncio.get_running_loop()))

    server = AsyncTCPServer(("127.0.0.1", 0), Which)  # event_loop="auto"
    with serve_in_thread(server), StreamClient(socket.AF_INET, server.server_address) as client:
        assert client.receive() == b""
    assert names == ["asyncio"]


def test_unknown_event_loop_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="event_loop must be one of"):
        AsyncTCPServer(("127.0.0.1", 0), LineEcho, event_loop="trio")


# -- a handler that blocks the loop -------------------------------------------------------------


class _Signal(logging.Handler):
    """Sets an event when a record containing ``needle`` is logged (from any thread)."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_handler_blocking_the_loop_is_logged_by_name(
    event_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    released = threading.Event()

    class BlockingHandler(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.readline()
            released.wait(CLIENT_TIMEOUT)  # a blocking call by mistake
            self.writer.write(b"done\n")

    signal = _Signal("blocked the event loop")
    watchdog_log = logging.getLogger("sockserve.aio.watchdog")
    watchdog_log.addHandler(signal)
    caplog.set_level(logging.WARNING, logger="sockserve")
    try:
        server = AsyncTCPServer(
            ("127.0.0.1", 0), BlockingHandler, event_loop=event_loop, slow_callback_duration=0.05
        )
        with serve_in_thread(server), StreamClient(socket.AF_INET, server.server_address) as c:
            c.send(b"go\n")
            assert signal.seen.wait(CLIENT_TIMEOUT)
            released.set()
            assert c.receive() == b"done\n"
            address = c.address
    finally:
        released.set()
        watchdog_log.removeHandler(signal)
    warnings = [
        r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()
    ]
    assert "BlockingHandler" in warnings[0]
    assert format_address(address) in warnings[0]


# -- the reader, byte by byte --------------------------------------------------------------------


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False


def _reader_fed(chunks: list[bytes], *, limit: int = 64) -> tuple[StreamReader, Any]:
    loop = asyncio.get_running_loop()
    view = receive_buffer()
    reader = IMPLEMENTATION.reader_class(loop, view, limit=limit)
    transport = _FakeTransport()
    reader.connection_made(transport)

    def feed(rest: list[bytes]) -> None:
        if not rest:
            reader.eof_received()
            return
        chunk = rest[0]
        view[: len(chunk)] = chunk
        reader.buffer_updated(len(chunk))
        loop.call_soon(feed, rest[1:])

    loop.call_soon(feed, chunks)
    return reader, transport


@pytest.mark.parametrize("event_loop", LOOPS)
def test_reader_methods_with_data_one_byte_at_a_time(event_loop: str) -> None:
    data = b"line one\nABCDEFrest--end"

    async def main() -> None:
        reader, _ = _reader_fed([data[i : i + 1] for i in range(len(data))])
        assert await reader.readline() == b"line one\n"
        assert await reader.readexactly(3) == b"ABC"
        assert await reader.read(2) in (b"D", b"DE")
        assert await reader.readuntil(b"rest") in (b"EFrest", b"Frest")
        assert await reader.readuntil(b"--") == b"--"
        with pytest.raises(asyncio.IncompleteReadError) as partial:
            await reader.readexactly(10)
        assert partial.value.partial == b"end"
        assert reader.at_eof()
        assert await reader.readline() == b""

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_reader_pauses_the_transport_when_nobody_reads(event_loop: str) -> None:
    async def main() -> None:
        reader, transport = _reader_fed([b"x" * 100] * 3, limit=64)
        while not transport.paused:
            await asyncio.sleep(0)
        assert len(reader._buffer) <= 2 * 64 + 100
        assert await reader.readexactly(200) == b"x" * 200  # reading resumes the transport
        assert not transport.paused

    _run(main(), event_loop)


def _run(coro: Any, event_loop: str) -> None:
    if event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:
        asyncio.run(coro)


def test_base_handler_is_awaitable_and_orders_its_steps() -> None:
    steps: list[str] = []

    class Steps(AsyncBaseRequestHandler):
        async def setup(self) -> None:
            steps.append("setup")

        async def handle(self) -> None:
            steps.append("handle")
            raise KeyError("x")

        async def finish(self) -> None:
            steps.append("finish")

    async def main() -> None:
        with pytest.raises(KeyError):
            await Steps(None, None, None)

    asyncio.run(main())
    assert steps == ["setup", "handle", "finish"]


# -- the lean read path: futures completed by the protocol, lazy idle timer ---------------


def _reader_on_fake(*, limit: int = 64, timeout: float | None = None) -> StreamReader:
    reader = IMPLEMENTATION.reader_class(asyncio.get_running_loop(), receive_buffer(), limit=limit)
    reader.timeout = timeout
    reader.connection_made(_FakeTransport())
    return reader


async def _waiting(read: Any) -> asyncio.Task[Any]:
    """Start a read as a task and let it run until it waits for data."""
    task = asyncio.create_task(read)
    await asyncio.sleep(0)
    assert not task.done()
    return task


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_waiting_read_gets_the_received_chunk_itself(event_loop: str) -> None:
    async def main() -> None:
        reader = _reader_on_fake()
        chunk = b"exactly one line\n"
        pending = await _waiting(reader.readline())
        reader.data_received(chunk)
        assert await pending is chunk  # no copy on the ping-pong path
        pending = await _waiting(reader.read(100))
        reader.data_received(b"some bytes")
        assert await pending == b"some bytes"
        pending = await _waiting(reader.read(3))  # a larger chunk: the rest stays buffered
        reader.data_received(b"abcdef")
        assert await pending == b"abc"
        assert await reader.read(10) == b"def"
        pending = await _waiting(reader.readline())  # two lines in one chunk: one each
        reader.data_received(b"one\ntwo\n")
        assert await pending == b"one\n"
        assert await reader.readline() == b"two\n"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_line_handed_to_a_read_cancelled_before_it_resumed_is_kept(event_loop: str) -> None:
    """The timeout race: the line arrives, and the task is cancelled in the same turn."""

    async def main() -> None:
        reader = _reader_on_fake()
        for read in (reader.readline(), reader.read(100)):
            pending = await _waiting(read)
            reader.data_received(b"just in time\n")
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            assert await reader.readline() == b"just in time\n"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_cancelled_read_leaves_the_data_buffered(event_loop: str) -> None:
    async def main() -> None:
        reader = _reader_on_fake()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readline(), 0.01)
        reader.data_received(b"late line\n")
        assert await asyncio.wait_for(reader.readline(), 1) == b"late line\n"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(5), 0.01)
        reader.data_received(b"later")
        assert await reader.read(5) == b"later"

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_waiting_read_sees_a_too_long_line_eof_and_a_lost_connection(event_loop: str) -> None:
    async def main() -> None:
        reader = _reader_on_fake(limit=8)
        pending = await _waiting(reader.readline())
        reader.data_received(b"far too long for the limit\n")
        with pytest.raises(LineTooLongError):
            await pending
        pending = await _waiting(reader.readline())
        reader.data_received(b"tail")
        reader.eof_received()
        assert await pending == b"tail"
        assert await reader.readline() == b""
        assert await reader.read(5) == b""
        lost = _reader_on_fake()
        pending = await _waiting(lost.read(5))
        lost.connection_lost(ConnectionResetError("reset by peer"))
        with pytest.raises(ConnectionResetError):
            await pending

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_idle_timeout_counts_from_the_start_of_each_wait(event_loop: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = _reader_on_fake(timeout=0.2)
        for _ in range(5):  # data every 0.1 s for 0.5 s: longer than the timeout in total
            loop.call_later(0.1, reader.data_received, b"tick\n")
            assert await reader.readline() == b"tick\n"
        started = loop.time()
        with pytest.raises(ReadTimeoutError):
            await reader.readline()
        assert 0.15 <= loop.time() - started < 1.0

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_drain_does_not_suspend_unless_paused(event_loop: str) -> None:
    async def main() -> None:
        reader = _reader_on_fake()
        writer = IMPLEMENTATION.writer_class(reader.flow.transport, reader)
        assert writer.drain() is writer.drain()  # one done future, no coroutine per call
        await writer.drain()
        reader.pause_writing()
        waiting = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        reader.resume_writing()
        await waiting

    _run(main(), event_loop)


def test_stream_errors_live_in_sockserve_errors_and_keep_their_bases() -> None:
    import sockserve
    import sockserve.aio
    import sockserve.aio.streams
    import sockserve.errors

    for name in ("LineTooLongError", "ReadTimeoutError"):
        cls = getattr(sockserve.errors, name)
        assert cls.__module__ == "sockserve.errors"
        assert getattr(sockserve.aio, name) is cls
        assert getattr(sockserve.aio.streams, name) is cls
        assert getattr(sockserve, name) is cls
        assert issubclass(cls, sockserve.errors.SockserveError)
    assert issubclass(LineTooLongError, ValueError)
    # the synchronous handlers raise LineTooLongError without asyncio (errors.py says why)
    assert not issubclass(LineTooLongError, asyncio.LimitOverrunError)
    assert issubclass(AsyncLineTooLongError, LineTooLongError)
    assert issubclass(AsyncLineTooLongError, asyncio.LimitOverrunError)
    assert AsyncLineTooLongError.__module__ == "sockserve.errors"
    assert sockserve.aio.AsyncLineTooLongError is AsyncLineTooLongError
    assert issubclass(ReadTimeoutError, TimeoutError)


def test_importing_sockserve_errors_does_not_import_asyncio() -> None:
    code = (
        "import sys, sockserve, sockserve.errors\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "sockserve.errors.ReadTimeoutError\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "sockserve.errors.LineTooLongError\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "sockserve.errors.AsyncLineTooLongError\n"
        "assert 'asyncio' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
