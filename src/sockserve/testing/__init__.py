"""Helpers for testing code that runs a sockserve (or socketserver) server.

``serve_in_thread(server)`` runs ``serve_forever`` on a background thread for the length
of a ``with`` block::

    with serve_in_thread(TCPServer(("127.0.0.1", 0), EchoHandler)) as server:
        client = socket.create_connection(server.server_address, timeout=5)

On entry the server is bound and listening; on exit it is shut down, its thread joined
and ``server_close()`` called, all within ``stop_timeout`` seconds, or
``ServerDidNotStop`` says which step hung.

The pytest fixture ``sockserve_serve`` (registered as a pytest plugin when sockserve is
installed) wraps the same helper: ``server = sockserve_serve(TCPServer(...))`` returns
the running server and stops it when the test ends.

Where things live: ``serving`` runs servers.
"""

from __future__ import annotations

from .serving import DEFAULT_STOP_TIMEOUT, ServerDidNotStop, serve_in_thread, stop_server

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "ServerDidNotStop",
    "serve_in_thread",
    "stop_server",
]
