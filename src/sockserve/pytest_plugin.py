"""pytest plugin: the ``sockserve_serve`` fixture (see ``sockserve.testing``).

Registered through the ``pytest11`` entry point, so installing sockserve makes the
fixture available to every test suite without a conftest import.
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
