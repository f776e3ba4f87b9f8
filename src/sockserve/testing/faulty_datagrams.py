"""Misbehaving datagram clients (UDP, Unix datagram) to point at a server in tests.

Each sends, then waits for up to ``replies`` answers until its overall ``timeout``, and
returns a ``DatagramOutcome``. A Unix datagram client binds its own socket file (in a
private temporary directory, removed afterwards) so that the server has somewhere to
send replies, as a real client would; a UDP client gets an ephemeral port on first send.
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..addresses import family_for
from .client_connection import DEFAULT_CLIENT_TIMEOUT

#: The largest datagram a client receives: the most a UDP datagram can carry.
MAX_REPLY_SIZE = 65535

#: Room for the kernel's own bookkeeping when ``oversized_datagram`` raises ``SO_SNDBUF``
#: to fit one datagram (Linux charges each datagram's buffer overhead to the sender).
SEND_BUFFER_SLACK = 4096


@dataclass(frozen=True)
class DatagramOutcome:
    """What a faulty datagram client did and saw.

    ``sent``: datagrams the kernel accepted; ``sent_bytes``: their total size.
    ``replies``: the datagrams that came back before the deadline, at most the number
    asked for. ``error``: why sending stopped early, as an errno name (``"EMSGSIZE"``:
    too big for the transport; ``"ECONNREFUSED"``: no server at a Unix path) or
    ``"deadline"``; ``None`` if everything was sent. ``elapsed``: seconds, all told.
    """

    sent: int
    sent_bytes: int
    replies: tuple[bytes, ...]
    error: str | None
    elapsed: float


def flood_datagrams(
    address: Any,
    payload: bytes,
    *,
    count: int,
    replies: int = 0,
    family: int | None = None,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> DatagramOutcome:
    """Send ``payload`` ``count`` times as fast as the kernel takes it, then collect up
    to ``replies`` answers (replies beyond the client's receive buffer are lost, as they
    would be for any client that reads late).

    ``family`` defaults to the one ``address`` implies (a path: ``AF_UNIX``).
    """
    return _send_then_collect(address, payload, count, replies, family, timeout, None)


def oversized_datagram(
    address: Any,
    size: int,
    *,
    replies: int = 0,
    family: int | None = None,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
) -> DatagramOutcome:
    """Send one datagram of ``size`` bytes, bigger than the server expects, then collect
    up to ``replies`` answers.

    The client raises its own ``SO_SNDBUF`` to fit the datagram. UDP over IPv4 carries at
    most 65,507 bytes (``error="EMSGSIZE"`` beyond); a Unix datagram socket can carry more
    than sockserve's ``max_packet_size`` of 65,535, up to the kernel's buffer limits.
    """
    payload = b"\xa5" * size
    send_buffer = size + SEND_BUFFER_SLACK
    return _send_then_collect(address, payload, 1, replies, family, timeout, send_buffer)


def _send_then_collect(
    address: Any,
    payload: bytes,
    count: int,
    replies: int,
    family: int | None,
    timeout: float,
    send_buffer: int | None,
) -> DatagramOutcome:
    started = time.monotonic()
    deadline = started + timeout
    family, target = _datagram_target(address, family)
    with _client_socket(family) as sock, selectors.DefaultSelector() as selector:
        if send_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        answers: list[bytes] = []
        sent, error = 0, None
        while sent < count and error is None:
            if replies:
                _drain(sock, answers, replies)
            try:
                sock.sendto(payload, target)
                sent += 1
            except BlockingIOError:  # a full queue (Unix datagram): wait, reading meanwhile
                left = deadline - time.monotonic()
                if left <= 0:
                    error = "deadline"
                else:
                    selector.select(left)
            except OSError as exc:
                error = errno.errorcode.get(exc.errno or 0, str(exc))
        selector.modify(sock, selectors.EVENT_READ)
        while len(answers) < replies and (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                _drain(sock, answers, replies)
    return DatagramOutcome(
        sent=sent,
        sent_bytes=sent * len(payload),
        replies=tuple(answers),
        error=error,
        elapsed=time.monotonic() - started,
    )


def _drain(sock: socket.socket, answers: list[bytes], wanted: int) -> None:
    """Read every datagram waiting (non-blocking), keeping the first ``wanted``.

    Reading on while the client floods matters on a Unix datagram socket: a server that
    answers blocks in ``sendto`` while the client's queue is full, and stops reading.
    """
    while True:
        try:
            reply = sock.recv(MAX_REPLY_SIZE)
        except (BlockingIOError, ConnectionRefusedError):  # nothing more; an ICMP error
            return
        if len(answers) < wanted:
            answers.append(reply)


def _datagram_target(address: Any, family: int | None) -> tuple[int, Any]:
    if isinstance(address, str | bytes | os.PathLike):
        return family or socket.AF_UNIX, os.fspath(address)
    return family or family_for(address, socket.AF_INET), address


@contextmanager
def _client_socket(family: int) -> Iterator[socket.socket]:
    """A datagram socket; for ``AF_UNIX`` bound to a file in a private directory."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    directory = None
    try:
        if family == socket.AF_UNIX:
            directory = tempfile.mkdtemp(prefix="sockserve-client-")
            sock.bind(os.path.join(directory, "c"))
        yield sock
    finally:
        sock.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
