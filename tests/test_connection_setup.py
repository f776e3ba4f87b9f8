"""Connection setup written by users: an admission check and a prelude, in every mode.

The serving core runs the same setup for every server class (``serving/core.py``): a
user's own check refuses or admits connections (and datagrams) whatever the mode, and a
user's own prelude reads from the client before the handler without pinning a worker:
a client that stalls in it costs a socket, and is refused at the prelude's deadline
while everyone else is served. Async kinds run on both event loops.
"""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path
from typing import Any

import pytest

from sockserve.admission import WANT_READ, PreludeDone, Refused
from sockserve.handlers import connection_detail
from sockserve.testing import serve_in_thread
from test_contract import ALL_KINDS, CLIENT_TIMEOUT, STOP_TIMEOUT, Harness, Kind

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def with_loops(kinds: list[Kind]) -> list[Any]:
    """Each kind once; async kinds once per event loop."""
    params = []
    for kind in kinds:
        loops = ("asyncio", "uvloop") if kind.is_async else (None,)
        for loop in loops:
            name = kind.name + (f"-{loop}" if loop else "")
            params.append(pytest.param(kind, loop, id=name))
    return params


def loop_kwargs(loop: str | None) -> dict[str, Any]:
    return {} if loop is None else {"event_loop": loop}


# -- a user's admission check -----------------------------------------------------------


class RefuseWhileFlagged:
    """Refuses every client while a file exists, and says so on a pipe: a check whose
    state crosses processes (pre-fork workers run it in their own memory)."""

    judges = "client"

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self.refused_r, self.refused_w = os.pipe()

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        if self.flag.exists():
            os.write(self.refused_w, b"!")
            raise Refused("flagged", "the test's flag is up")
        return request, client_address

    def wait_for_a_refusal(self) -> None:
        readable, _, _ = select.select([self.refused_r], [], [], CLIENT_TIMEOUT)
        assert readable, "the check refused nothing"
        os.read(self.refused_r, 1)

    def close(self) -> None:
        os.close(self.refused_r)
        os.close(self.refused_w)


@pytest.mark.parametrize(("kind", "loop"), with_loops(ALL_KINDS))
def test_a_users_admission_check_refuses_and_admits(
    harness: Harness, kind: Kind, loop: str | None, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    served: list[bytes] = []

    def respond(handler: Any, line: bytes) -> bytes:
        served.append(line)
        return line

    server = harness.server(harness.handler(respond), **loop_kwargs(loop))
    check = RefuseWhileFlagged(flag)
    server.add_admission_check(check)
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        with harness.connect(server) as refused:
            if not kind.is_stream:  # a stream client is judged at accept, before it sends
                refused.send(b"refused\n")
            check.wait_for_a_refusal()
            if kind.is_stream:
                assert_closed_without_a_reply(refused)
        flag.unlink()
        with harness.connect(server) as admitted:
            assert admitted.exchange(b"admitted\n") == b"admitted\n"
        if kind.is_prefork:  # its workers report their counters every 0.1 s at most
            # The refusal and the service may be two workers' reports: wait for both.
            assert server._supervisor.wait_for_stats(
                lambda s: s.finished >= 1 and bool(s.rejected), CLIENT_TIMEOUT
            )
        # Counted where the check ran; a pre-fork master sums its workers'.
        assert server.stats().rejected == {"flagged": 1}
    check.close()
    if kind.runs_threads_only or kind.mode in ("sync", "async"):
        assert served == [b"admitted\n"]  # the handler never saw the refused one


# -- a user's prelude -------------------------------------------------------------------

#: The prelude's deadline: short, so the stalled client is refused quickly.
GREETING_SECONDS = 0.5


class Greeting:
    """A prelude: the client says ``HELLO <name>`` first; the handler sees ``name``."""

    name = "greeting"
    timeout = GREETING_SECONDS

    def start(self, request: Any, client_address: Any) -> GreetingRun:
        return GreetingRun(request)


class GreetingRun:
    """Reads the greeting a byte at a time: never a byte of what follows it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.line = bytearray()

    def advance(self) -> str | PreludeDone:
        while True:
            try:
                byte = self.sock.recv(1)
            except BlockingIOError:
                return WANT_READ
            if not byte:
                raise Refused("greeting_eof", "closed before the greeting")
            if byte == b"\n":
                break
            self.line += byte
            if len(self.line) > 64:
                raise Refused("greeting_too_long", "a greeting over 64 bytes")
        if not self.line.startswith(b"HELLO "):
            raise Refused("greeting_bad", f"not a greeting: {bytes(self.line)!r}")
        name = self.line[6:].decode()
        return PreludeDone(self.sock, (name, 0), {"greeting": name})


def greeted(handler: Any, line: bytes) -> bytes:
    detail = connection_detail(handler.server, handler.request, "greeting")
    return f"{handler.client_address[0]} {detail} {line.decode()}".encode()


STREAM_KINDS = [kind for kind in ALL_KINDS if kind.is_stream]


@pytest.mark.parametrize(("kind", "loop"), with_loops(STREAM_KINDS))
def test_a_users_prelude_runs_before_the_handler_and_never_pins_a_worker(
    harness: Harness, kind: Kind, loop: str | None
) -> None:
    server = harness.server(harness.handler(greeted), **loop_kwargs(loop))
    server.add_prelude(Greeting())
    with serve_in_thread(server, stop_timeout=STOP_TIMEOUT):
        stalled = [harness.connect(server) for _ in range(3)]  # connect, say nothing
        with harness.connect(server) as client:
            # Served while the stalled clients wait, even in the one-thread modes.
            assert client.exchange(b"HELLO ada\nping\n") == b"ada ada ping\n"
        with harness.connect(server) as rude:
            rude.send(b"GET / HTTP/1.0\n")
            assert_closed_without_a_reply(rude)  # refused: the handler never ran
        for client in stalled:
            assert client.receive() == b""  # refused at the prelude's deadline
            client.close()
        expected = {"greeting_bad": 1, "greeting_timeout": 3}
        if kind.is_prefork:
            assert server._supervisor.wait_for_stats(
                lambda s: s.rejected == expected, CLIENT_TIMEOUT
            )
        assert server.stats().rejected == expected


def assert_closed_without_a_reply(client: Any) -> None:
    """The server closed: end of stream, or a reset where it closed with our request
    unread (a Unix socket always reports that as a reset)."""
    try:
        assert client.receive() == b""
    except ConnectionResetError:
        pass
