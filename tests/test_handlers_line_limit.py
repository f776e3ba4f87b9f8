"""``StreamRequestHandler.max_line_length``: off by default, bounded and explicit when set."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import sockserve
from sockserve.errors import LineTooLongError
from sockserve.handlers import LineLimitedReader

CLIENT_TIMEOUT = 10.0
LIMIT = 1024


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()


def _limited_handler(recorder: _Recorder) -> type[sockserve.StreamRequestHandler]:
    class Handler(sockserve.StreamRequestHandler):
        max_line_length = LIMIT

        def handle(self) -> None:
            try:
                for line in self.rfile:
                    recorder.lines.append(line)
                    self.wfile.write(line)
            except LineTooLongError as exc:
                recorder.errors.append(exc)
                raise
            finally:
                recorder.done.set()

    return Handler


class _QuietServer(sockserve.ThreadingTCPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the handler's error is the expected outcome here


def test_default_is_the_stdlib_rfile() -> None:
    assert sockserve.StreamRequestHandler.max_line_length is None


def test_a_line_over_the_limit_raises_and_closes_the_connection() -> None:
    recorder = _Recorder()
    server = _QuietServer(("127.0.0.1", 0), _limited_handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            client.sendall(b"x" * LIMIT + b"\n")  # at the limit: accepted
            assert client.recv(LIMIT + 10).startswith(b"x")
            client.sendall(b"y" * (LIMIT + 1) + b"\n")
            assert recorder.done.wait(CLIENT_TIMEOUT)
            while client.recv(65536):  # until the server closes: end of stream
                pass
    finally:
        server.shutdown()
        thread.join(CLIENT_TIMEOUT)
        server.server_close()
    assert len(recorder.errors) == 1
    assert isinstance(recorder.errors[0], ValueError)
    assert len(recorder.lines) == 1


def test_a_10_mb_line_is_refused_without_buffering_it() -> None:
    recorder = _Recorder()
    server = _QuietServer(("127.0.0.1", 0), _limited_handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sent = 0
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            block = b"z" * 65536
            try:
                while sent < 10 * 1024 * 1024:
                    client.sendall(block)
                    sent += len(block)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed the connection before the line ended
            assert recorder.done.wait(CLIENT_TIMEOUT)
    finally:
        server.shutdown()
        thread.join(CLIENT_TIMEOUT)
        server.server_close()
    (error,) = recorder.errors
    assert isinstance(error, LineTooLongError)
    # what the server held when it gave up: the limit and one read, not 10 MB
    assert error.consumed <= LIMIT + 8192


def test_readline_with_a_size_keeps_the_stdlib_meaning() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(CLIENT_TIMEOUT)
        reader = LineLimitedReader(left, 4, 8192)
        right.sendall(b"abcdefghij\nkl\nmn")
        right.shutdown(socket.SHUT_WR)
        assert reader.readline(3) == b"abc"
        assert reader.readline(100) == b"defghij\n"  # longer than 4: no error with a size
        assert reader.readline() == b"kl\n"
        assert reader.read(1) == b"m"
        assert reader.read() == b"n"
        assert reader.readline() == b""
        reader.close()
        assert left.fileno() != -1  # the socket stays open, as with makefile()
        with pytest.raises(ValueError, match="closed"):
            reader.readline()


def test_reading_without_lines() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(CLIENT_TIMEOUT)
        reader = LineLimitedReader(left, 4, 8192)
        right.sendall(b"0123456789")
        assert reader.read(6) == b"012345"
        buffer = bytearray(3)
        assert reader.readinto(buffer) == 3
        assert bytes(buffer) == b"678"
        assert reader.read1(10) == b"9"
        right.sendall(b"too long\n")
        with pytest.raises(LineTooLongError):
            reader.readline()


HTTP_414 = """
import socket, sys, threading
import sockserve
sys.modules["socketserver"] = sockserve
import http.server

class Handler(http.server.BaseHTTPRequestHandler):
    max_line_length = {limit}
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
assert isinstance(server, sockserve.TCPServer)
thread = threading.Thread(target=server.serve_forever, daemon=True)
thread.start()
with socket.create_connection(server.server_address, timeout=10) as client:
    client.sendall(b"GET /" + b"a" * 65537 + b" HTTP/1.1\\r\\n\\r\\n")
    reply = client.recv(4096)
server.shutdown()
thread.join(10)
server.server_close()
print(reply.split(b"\\r\\n")[0].decode())
"""


@pytest.mark.parametrize("limit", [None, 1024])
def test_http_server_still_answers_414_to_a_65537_byte_request_line(limit: int | None) -> None:
    result = subprocess.run(
        [sys.executable, "-c", HTTP_414.format(limit=limit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert " 414 " in result.stdout, result.stdout + result.stderr


def test_the_synchronous_limit_does_not_import_asyncio() -> None:
    code = (
        "import socket, sys\n"
        "from sockserve.handlers import LineLimitedReader\n"
        "from sockserve.errors import LineTooLongError\n"
        "a, b = socket.socketpair()\n"
        "b.sendall(b'x' * 100)\n"
        "try:\n"
        "    LineLimitedReader(a, 10, 8192).readline()\n"
        "except LineTooLongError:\n"
        "    pass\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
