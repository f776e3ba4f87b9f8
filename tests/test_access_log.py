"""The access log: one line per connection (or datagram) in every mode, both loops.

Each line is checked against what the test itself did: the client's own address (what
the handler saw), the outcome, and for TCP the bytes it sent and received. The log is
written to a FIFO the test reads, so the test waits for a line as an event (a select on
the pipe), whichever process writes it: the loop, a worker thread, a pre-fork worker or
the parent of a forked child. Appends of a line to a pipe are atomic (under PIPE_BUF).

What a mode cannot know is part of the contract: a forked child closes the connection,
so its parent logs ``-`` for the bytes; Unix sockets have no TCP_INFO; a datagram's
reply is not measured.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.admission import Refused
from test_connection_setup import loop_kwargs, with_loops
from test_contract import ALL_KINDS, CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)

#: The one request of each test connection (and its echo): 17 bytes each way.
PAYLOAD = b"hello access log\n"


class LogPipe:
    """A FIFO the server's access log writes to; ``lines(n)`` waits for n lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        # Open for reading first (non-blocking), so the server's open for writing returns.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._buffer = b""
        self.seen: list[str] = []

    def lines(self, count: int, timeout: float = CLIENT_TIMEOUT) -> list[str]:
        while len(self.seen) < count:
            readable, _, _ = select.select([self._fd], [], [], timeout)
            assert readable, f"only {len(self.seen)} of {count} lines came: {self.seen}"
            chunk = os.read(self._fd, 65536)
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.seen += [line.decode() for line in complete]
        return self.seen[:count]

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def log_pipe(tmp_path: Path) -> Any:
    pipe = LogPipe(tmp_path / "access.log")
    yield pipe
    pipe.close()


def echo_until_eof_handler(kind: Kind) -> Any:
    """Echo every line until the client's end of stream (a datagram: echo it).

    Reading to EOF matters for the byte counts: the client's FIN acknowledges the whole
    reply, so ``bytes_out`` is exact when the server measures before its own close.
    """
    if kind.is_async:
        if kind.is_stream:

            class AsyncEcho(sockserve.AsyncStreamRequestHandler):
                async def handle(self) -> None:
                    async for line in self.reader:
                        if line.startswith(b"boom"):
                            raise ValueError("the test's handler error")
                        self.writer.write(line)
                        await self.writer.drain()

            return AsyncEcho

        class AsyncDatagramEcho(sockserve.AsyncDatagramRequestHandler):
            async def handle(self) -> None:
                self.wfile.write(self.rfile.read())

        return AsyncDatagramEcho
    if kind.is_stream:

        class Echo(sockserve.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if line.startswith(b"boom"):
                        raise ValueError("the test's handler error")
                    self.wfile.write(line)

        return Echo

    class DatagramEcho(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    return DatagramEcho


def client_text(kind: Kind, address: Any) -> str:
    if kind.is_unix:
        return address
    host, port = address[:2]
    return f"{host}:{port}"


def talk(harness: Harness, server: Any, payload: bytes = PAYLOAD) -> str:
    """One connection (or datagram) with its echo; the client's address as logged."""
    with harness.connect(server) as client:
        client.send(payload)
        if harness.kind.is_stream:
            # FIN after the reply is in: the server's handler sees EOF and returns.
            reply = b""
            while len(reply) < len(payload):
                reply += client.sock.recv(65536)
            client.sock.shutdown(socket.SHUT_WR)
            assert client.sock.recv(65536) == b""
        else:
            reply = client.receive()
        assert reply == payload
        return client_text(harness.kind, client.address)


@pytest.mark.parametrize(("kind", "loop"), with_loops(ALL_KINDS))
def test_a_json_line_per_connection_with_client_outcome_and_bytes(
    harness: Harness, kind: Kind, loop: str | None, log_pipe: LogPipe
) -> None:
    access_log = sockserve.AccessLog(str(log_pipe.path), log_format="json")
    server = harness.server(echo_until_eof_handler(kind), **loop_kwargs(loop))
    server.set_access_log(access_log)
    try:
        with sockserve.testing.serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
            clients = [talk(harness, server) for _ in range(2)]
            entries = [json.loads(line) for line in log_pipe.lines(2)]
    finally:
        access_log.close()
    knows_bytes = kind.transport == "tcp" and kind.mode != "forking"
    for entry in entries:
        assert set(entry) == {
            "time", "client", "outcome", "reason", "duration", "bytes_in", "bytes_out"
        }  # fmt: skip
        assert entry["outcome"] == "served", entry
        assert entry["reason"] is None
        assert 0 <= entry["duration"] < CLIENT_TIMEOUT
        if knows_bytes:
            assert (entry["bytes_in"], entry["bytes_out"]) == (len(PAYLOAD), len(PAYLOAD))
        elif kind.is_stream:  # a Unix socket, or the parent of a forked child
            assert (entry["bytes_in"], entry["bytes_out"]) == (None, None)
        else:  # a datagram: its size in; the reply is not measured
            assert (entry["bytes_in"], entry["bytes_out"]) == (len(PAYLOAD), None)
    # Datagrams from one client socket may be served out of order by concurrent modes.
    assert sorted(entry["client"] for entry in entries) == sorted(clients)


class RefuseFlagged:
    """Refuses every client while a file exists (the state crosses processes)."""

    judges = "client"

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        if self.flag.exists():
            raise Refused("flagged", "the test's flag is up")
        return request, client_address


TCP_KINDS = [kind for kind in ALL_KINDS if kind.transport == "tcp"]


@pytest.mark.parametrize(("kind", "loop"), with_loops(TCP_KINDS))
def test_text_lines_for_refused_failed_and_reset_connections(
    harness: Harness, kind: Kind, loop: str | None, log_pipe: LogPipe, tmp_path: Path
) -> None:
    access_log = sockserve.AccessLog(str(log_pipe.path))
    server = harness.server(echo_until_eof_handler(kind), **loop_kwargs(loop))
    server.handle_error = lambda request, client_address: None  # no traceback in the output
    flag = tmp_path / "flag"
    server.add_admission_check(RefuseFlagged(flag))
    server.set_access_log(access_log)
    try:
        with sockserve.testing.serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
            flag.touch()
            with harness.connect(server) as refused:
                assert refused.sock.recv(100) == b""  # closed unserved
                refused_client = client_text(kind, refused.address)
            (refused_line,) = log_pipe.lines(1)
            flag.unlink()
            with harness.connect(server) as failing:
                failing.send(b"boom\n")
                assert failing.sock.recv(100) == b""
                failing_client = client_text(kind, failing.address)
            failing_line = log_pipe.lines(2)[1]
            if kind.mode == "forking":
                # The child inherits a copy of the test's own client socket, so closing
                # it here sends no reset (the child's copy keeps it open).
                check_lines(kind, refused_line, refused_client, failing_line, failing_client)
                return
            with harness.connect(server) as resetting:
                resetting.send(PAYLOAD)
                assert resetting.sock.recv(100) == PAYLOAD
                resetting_client = client_text(kind, resetting.address)
                # Close with unread data pending a reset: SO_LINGER 0 sends RST.
                resetting.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            reset_line = log_pipe.lines(3)[2]
    finally:
        access_log.close()
    check_lines(kind, refused_line, refused_client, failing_line, failing_client)
    fields = reset_line.split(" ")
    assert fields[0] == resetting_client
    # A reset reaches the handler as ConnectionResetError, or as the end of its input
    # when the RST lands after the read returned; either way the line is there.
    assert fields[3] in ("reset", "served"), reset_line
    # Bytes in, as sent; an event loop closes the transport the moment the reset
    # arrives, before the handler ends, so the async mode no longer knows them.
    sent = str(len(PAYLOAD))
    assert fields[5] in (("-", sent) if kind.is_async else (sent,)), reset_line


def check_lines(
    kind: Kind, refused_line: str, refused_client: str, failing_line: str, failing_client: str
) -> None:
    fields = refused_line.split(" ")
    assert fields[0] == refused_client
    assert fields[3:5] == ["refused:flagged", "-"], refused_line
    fields = failing_line.split(" ")
    assert (fields[0], fields[3]) == (failing_client, "handler_error"), failing_line
