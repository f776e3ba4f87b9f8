"""pytest plugin: the ``sockserve_serve`` fixture (see ``sockserve.testing``).

Registered through the ``pytest11`` entry point, so installing sockserve makes the
fixture available to every test suite without a conftest import.

There is deliberately no fixture for the faulty clients of ``sockserve.testing``: each is a
plain function that opens its own socket, stops at its own deadline and closes the socket
before it returns, so there is nothing for a fixture to set up or tear down. Call them with
the address of a server this fixture started::

    def test_survives_a_reset(sockserve_serve):
        server = sockserve_serve(ThreadingTCPServer(("127.0.0.1", 0), EchoHandler))
        reset_mid_request(server.server_address, b"HEL")
        assert half_close(server.server_address, b"hello\n").received == b"hello\n"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import pytest

from .testing import serve_in_thread

ServerT = TypeVar("ServerT")


@pytest.fixture
def sockserve_serve() -> Iterator[Callable[..., Any]]:
    """Start servers for one test: ``server = sockserve_serve(TCPServer(...))``.

    Each server runs ``serve_forever`` on a thread until the test ends, then is shut
    down, joined and closed (in reverse order of starting), within a deadline.
    """
    with ExitStack() as stack:

        def start(server: ServerT, **options: Any) -> ServerT:
            return stack.enter_context(serve_in_thread(server, **options))

        yield start
