"""Helpers for testing code that runs a sockserve (or socketserver) server.

Running a server: ``serve_in_thread(server)`` runs ``serve_forever`` on a background
thread for the length of a ``with`` block::

    with serve_in_thread(TCPServer(("127.0.0.1", 0), EchoHandler)) as server:
        client = socket.create_connection(server.server_address, timeout=5)

On entry the server is bound and listening; on exit it is shut down, its thread joined
and ``server_close()`` called, all within ``stop_timeout`` seconds, or
``ServerDidNotStop`` says which step hung. The pytest fixture ``sockserve_serve``
(registered as a pytest plugin when sockserve is installed) wraps the same helper:
``server = sockserve_serve(TCPServer(...))`` returns the running server and stops it when
the test ends.

Faulty clients: plain functions that misbehave against any server address and report
what the server did, each within its own deadline (``docs/testing.md``)::

    outcome = half_close(server.server_address, b"hello\\n")
    assert outcome.received == b"hello\\n" and outcome.ended == "eof"

Stream clients (``StreamOutcome``): ``send_in_pieces``, ``trickle``,
``reset_mid_request``, ``reset_mid_reply``, ``half_close``, ``never_read``; datagram
clients (``DatagramOutcome``): ``flood_datagrams``, ``oversized_datagram``;
``run_concurrently`` runs many clients at once; ``ClientConnection`` is the step-by-step
connection they are written with, for writing your own.

Where things live: ``serving`` runs servers; ``client_connection`` holds one stream
client's steps and outcome; ``faulty_clients`` and ``faulty_datagrams`` the clients;
``concurrently`` runs them together.
"""

from __future__ import annotations

from ..errors import ClientsDidNotFinish, ServerDidNotStop
from .client_connection import DEFAULT_CLIENT_TIMEOUT, ClientConnection, Ending, StreamOutcome
from .concurrently import run_concurrently
from .faulty_clients import (
    half_close,
    never_read,
    reset_mid_reply,
    reset_mid_request,
    send_in_pieces,
    trickle,
)
from .faulty_datagrams import DatagramOutcome, flood_datagrams, oversized_datagram
from .serving import DEFAULT_STOP_TIMEOUT, serve_in_thread, stop_server

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "ClientConnection",
    "ClientsDidNotFinish",
    "DatagramOutcome",
    "Ending",
    "ServerDidNotStop",
    "StreamOutcome",
    "flood_datagrams",
    "half_close",
    "never_read",
    "oversized_datagram",
    "reset_mid_reply",
    "reset_mid_request",
    "run_concurrently",
    "send_in_pieces",
    "serve_in_thread",
    "stop_server",
    "trickle",
]
