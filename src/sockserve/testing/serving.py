"""Run a server on a background thread for the length of a ``with`` block.

``serve_in_thread(server)`` returns the server bound and listening (bind to port 0 and
read ``server.server_address``: clients that connect before the loop turns are queued by
the kernel, so there is nothing to poll for). On exit it is shut down, its thread joined
and ``server_close()`` called, all within ``stop_timeout`` seconds, or
``ServerDidNotStop`` says which step hung.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import ServerDidNotStop

ServerT = TypeVar("ServerT")

#: How long stopping a test server may take before it counts as hung.
DEFAULT_STOP_TIMEOUT = 10.0


@contextmanager
def serve_in_thread(
    server: ServerT,
    *,
    poll_interval: float = 0.5,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> Iterator[ServerT]:
    """Serve ``server`` on a daemon thread inside the block; stop and close it after."""
    running: Any = server
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            running.serve_forever(poll_interval=poll_interval)
        except BaseException as exc:  # reported to the caller on exit
            failure.append(exc)

    thread = threading.Thread(
        target=serve, name=f"serve_in_thread({type(server).__name__})", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        stop_server(running, thread, stop_timeout)
    if failure:
        raise failure[0]


def stop_server(server: Any, thread: threading.Thread, stop_timeout: float) -> None:
    """``shutdown()``, join the serving thread, then ``server_close()``, with a deadline."""
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    stopper.join(stop_timeout)
    thread.join(stop_timeout)
    if stopper.is_alive() or thread.is_alive():
        raise ServerDidNotStop(
            f"{type(server).__name__} on {server.server_address!r} did not leave "
            f"serve_forever() within {stop_timeout} s"
        )
    closer = threading.Thread(target=server.server_close, daemon=True)
    closer.start()
    closer.join(stop_timeout)
    if closer.is_alive():
        raise ServerDidNotStop(
            f"{type(server).__name__}.server_close() did not return within {stop_timeout} s"
            " (a request thread or child is still running)"
        )
