"""The process-wide server policy (``sockserve.policy``) and ``ThreadingMixIn.max_threads``.

In process: each test installs a policy, builds servers the way a program would, and
removes the policy in a ``finally`` (the fixture), so no other test sees it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.errors import ConfigurationError
from sockserve.policy import ServerPolicy, current_policy, install_policy
from sockserve.testing import serve_in_thread

CLIENT_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def no_policy_after() -> Iterator[None]:
    try:
        yield
    finally:
        install_policy(None)


class Held(sockserve.StreamRequestHandler):
    """Reports how many handlers run when it starts; finishes when the client says so."""

    lock = threading.Lock()
    running = 0

    def handle(self) -> None:
        with Held.lock:
            Held.running += 1
            now = Held.running
        try:
            self.wfile.write(f"{now}\n".encode())
            self.rfile.readline()
        finally:
            with Held.lock:
                Held.running -= 1


def test_no_policy_changes_nothing() -> None:
    assert current_policy() is None
    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), Held) as server:
        assert server.max_threads is None
        assert server.max_connections is None


def test_a_policy_reaches_servers_built_while_installed() -> None:
    seen: list[Any] = []
    install_policy(ServerPolicy(max_connections=7, max_threads=3, configure=(seen.append,)))
    with (
        sockserve.ThreadingTCPServer(("127.0.0.1", 0), Held) as threading_server,
        sockserve.TCPServer(("127.0.0.1", 0), Held) as plain,
    ):
        assert seen == [threading_server, plain]
        assert threading_server.max_threads == 3
        assert threading_server.max_connections == 7
        assert plain.max_connections == 7
        assert not hasattr(plain, "max_threads")


def test_max_threads_bounds_a_threading_server() -> None:
    """Five clients, max_threads 2: the third starts only when one of the two finishes."""
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Held)
    server.max_threads = 2
    server.daemon_threads = True
    with serve_in_thread(server):
        clients = [
            socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)
            for _ in range(5)
        ]
        readers = [client.makefile("rb") for client in clients]
        try:
            assert [readers[0].readline(), readers[1].readline()] == [b"1\n", b"2\n"]
            assert server.stats().workers_alive == 2
            for index in range(2, 5):  # release one, the next starts with one other running
                clients[index - 2].sendall(b"go\n")
                assert readers[index].readline() == b"2\n"
            for client in clients[3:]:
                client.sendall(b"go\n")
        finally:
            for reader, client in zip(readers, clients, strict=True):
                reader.close()
                client.close()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_max_threads_must_be_a_positive_int(value: object) -> None:
    class Server(sockserve.ThreadingTCPServer):
        max_threads = value  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match="max_threads"):
        Server(("127.0.0.1", 0), Held)
