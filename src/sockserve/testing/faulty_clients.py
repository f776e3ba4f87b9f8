"""Misbehaving stream clients to point at a server in tests.

Each client connects to ``address`` (``(host, port)``, an IPv6 tuple, or a Unix socket
path), misbehaves in one way, and returns a ``StreamOutcome``: bytes sent, the bytes of
the reply it read, how the server ended the connection (``"eof"``, ``"reset"``,
``"open"``, ``"refused"``) and the seconds that took. Every client stops at its overall
``timeout`` (``DEFAULT_CLIENT_TIMEOUT`` seconds unless given) and closes its socket
whatever happens; what the server does is reported, never raised.

``reply_bytes=None`` means "read until the server ends the connection (or the
deadline)"; a number stops reading once that many bytes arrived, and the connection is
then reported ``"open"`` unless the server had already ended it.
"""

from __future__ import annotations

from typing import Any

from .client_connection import DEFAULT_CLIENT_TIMEOUT, ClientConnection, StreamOutcome

#: ``never_read``'s receive buffer in bytes: small, so the server's writes stall after a
#: few KiB (Linux doubles the value and keeps a minimum of about 2 KiB).
SMALL_RECEIVE_BUFFER = 4096


def send_in_pieces(
    address: Any,
    data: bytes,
    *,
    piece_size: int = 1,
    interval: float = 0.0,
    nodelay: bool = True,
    reply_bytes: int | None = None,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Send ``data`` in ``piece_size``-byte pieces, then read the reply.

    ``nodelay`` sets TCP_NODELAY so that each piece leaves as its own segment (a server
    reading with one ``recv`` per request sees a fragment); ``interval`` waits that many
    seconds between pieces, reading meanwhile (see ``trickle``).
    """
    if piece_size < 1:
        raise ValueError(f"piece_size must be at least 1, not {piece_size}")
    with ClientConnection(address, timeout=timeout, nodelay=nodelay) as connection:
        for start in range(0, len(data), piece_size):
            if start and interval > 0:
                connection.watch(interval)
            if not connection.send(data[start : start + piece_size]):
                break
        connection.read(reply_bytes)
        return connection.outcome()


def trickle(
    address: Any,
    data: bytes,
    *,
    interval: float = 1.0,
    piece_size: int = 1,
    reply_bytes: int | None = None,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Slowloris: one ``piece_size`` piece of ``data`` every ``interval`` seconds.

    Stops when all is sent (then reads the reply), when the server ends the connection
    (noticed at once: the client reads while it waits) or at the deadline.
    ``outcome.elapsed`` says how long the server kept the connection open; ``"open"``
    means it would have let the client go on past ``timeout``.
    """
    return send_in_pieces(
        address,
        data,
        piece_size=piece_size,
        interval=interval,
        reply_bytes=reply_bytes,
        timeout=timeout,
    )


def reset_mid_request(
    address: Any,
    partial_request: bytes,
    *,
    hold: float = 0.0,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Send ``partial_request``, keep the connection ``hold`` seconds, then abort (RST).

    ``ended`` is ``"open"`` unless the server ended the connection before the abort.
    """
    with ClientConnection(address, timeout=timeout) as connection:
        if connection.send(partial_request):
            connection.watch(hold)
        connection.abort()
        return connection.outcome()


def reset_mid_reply(
    address: Any,
    request: bytes,
    *,
    read_bytes: int = 1,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Send ``request``, read ``read_bytes`` of the reply, then abort (RST).

    The server is likely still writing: its next write fails with ECONNRESET or EPIPE.
    ``ended`` is ``"open"`` unless the server ended the connection first.
    """
    with ClientConnection(address, timeout=timeout) as connection:
        if connection.send(request):
            connection.read(read_bytes)
        connection.abort()
        return connection.outcome()


def half_close(
    address: Any,
    request: bytes,
    *,
    reply_bytes: int | None = None,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Send ``request``, shut down the client's write side (FIN), then read the reply.

    A server should still answer a half-closed client in full, then close: ``"eof"``.
    """
    with ClientConnection(address, timeout=timeout) as connection:
        if connection.send(request):
            connection.shut_write()
        connection.read(reply_bytes)
        return connection.outcome()


def never_read(
    address: Any,
    request: bytes,
    *,
    repeat: int = 1,
    receive_buffer: int = SMALL_RECEIVE_BUFFER,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> StreamOutcome:
    """Send ``request`` ``repeat`` times and never read a reply, until the server ends the
    connection or the deadline.

    The small ``receive_buffer`` (``SO_RCVBUF``, set before connecting) makes a server
    that writes more than a few KiB block in ``send``: this is the client that tells
    whether the server has a write timeout. ``received`` is always empty.

    How the end is seen without reading: a reset at once, on every platform. A FIN only
    on Linux, and only once it arrives, which it cannot while the unread reply fills
    the window: a server that gives up writing with nothing of the client's left unread
    therefore stays ``"open"``. Sending the request enough times that the server has
    unread bytes when it closes (``repeat``) makes its kernel answer with RST.
    """
    with ClientConnection(address, timeout=timeout, receive_buffer=receive_buffer) as connection:
        for _ in range(repeat):
            if not connection.send(request):
                break
        connection.wait_unread()
        return connection.outcome()
