"""One faulty client's stream connection: the steps the clients in ``faulty_clients`` take.

Design: the overall deadline is fixed when the connection is opened and bounds every step
(connect, send, wait, read). The first sign that the server ended the connection (end of
stream, a reset, a refused connect) is recorded with its time; every later step then
returns at once, so a client is a short script of steps with no error handling of its own.
``outcome()`` turns what was recorded into a ``StreamOutcome``.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

from ..addresses import family_for

#: How the server ended the connection, as far as the client saw before it stopped:
#: ``"eof"`` a clean end of stream (TCP FIN), ``"reset"`` an abort (ECONNRESET or EPIPE:
#: a TCP RST, or a Unix stream peer that closed with data unread), ``"open"`` not ended
#: when the client stopped (the deadline passed, or the client had what it came for),
#: ``"refused"`` nothing accepted the connection.
Ending = Literal["eof", "reset", "open", "refused"]

#: A faulty client's overall deadline in seconds unless told otherwise: a normal exchange
#: on a loaded 2-core CI machine takes milliseconds, and a test against a server that
#: never answers should fail in seconds, not at pytest's per-test timeout.
DEFAULT_CLIENT_TIMEOUT = 5.0

#: The errors that mean the server aborted the connection. ``ConnectionAbortedError`` is
#: how Windows reports some of them.
RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

#: How much one ``recv`` asks for.
RECEIVE_SIZE = 65536

#: Linux's "the peer sent FIN" poll event; 0 where the platform has none.
_POLLRDHUP: int = getattr(select, "POLLRDHUP", 0)

#: ``SO_LINGER`` on with a zero timeout: ``close()`` discards unsent data and sends RST.
ABORT_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class StreamOutcome:
    """What a faulty stream client did and saw.

    ``sent``: bytes the kernel accepted from the client. ``received``: the bytes the
    server sent that the client read (the reply, or part of it). ``ended``: how the
    server ended the connection (see ``Ending``). ``elapsed``: seconds from the start of
    the connect to the moment ``ended`` was seen, or to when the client stopped if the
    connection was still ``"open"``.
    """

    sent: int
    received: bytes
    ended: Ending
    elapsed: float


def stream_target(address: Any) -> tuple[int, Any]:
    """The family and connect address for ``(host, port)``, an IPv6 tuple or a Unix path."""
    if isinstance(address, str | bytes | os.PathLike):
        return socket.AF_UNIX, os.fspath(address)
    return family_for(address, socket.AF_INET), address


class ClientConnection:
    """A connected client socket that records how the server ended the connection.

    Methods for the caller: ``send``, ``watch``, ``read``, ``wait_unread``,
    ``shut_write``, then ``outcome()``; ``abort()`` or ``close()`` (or the ``with``
    block) release the socket. ``sock`` is the socket itself, for options the steps do
    not cover; ``ended`` is ``None`` until the server ends the connection.

    Resource handling: the socket is created and connected in the constructor (closed
    again there if the connect fails for a reason other than a refusal); leaving the
    ``with`` block closes it whatever happened.

    Error handling: a refusal, end of stream, reset or the deadline is an outcome, not an
    exception. Any other ``OSError`` (an unknown host, a connect that times out because
    the server's backlog is full) propagates.
    """

    def __init__(
        self,
        address: Any,
        *,
        timeout: float,
        nodelay: bool = False,
        receive_buffer: int | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.sent = 0
        self.ended: Ending | None = None
        self._ended_at: float | None = None
        self._received = bytearray()
        family, target = stream_target(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if nodelay and family != socket.AF_UNIX:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if receive_buffer is not None:  # before connect: it sets the window offered
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self._arm()
            self.sock.connect(target)
        except ConnectionRefusedError:
            self._end("refused")
        except ConnectionResetError:
            # Reset during the handshake: the listener closed with this connection still
            # in its queue (a server that stopped listening). Never accepted: refused.
            self._end("refused")
        except FileNotFoundError:  # no socket file at the Unix path: nothing listens
            self._end("refused")
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps ---------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the server ended the connection or time ran out first."""
        view = memoryview(data)
        while view:
            if not self._arm():
                return False
            try:
                count = self.sock.send(view)
            except TimeoutError:
                return False
            except RESET_ERRORS:
                self._end("reset")
                return False
            self.sent += count
            view = view[count:]
        return True

    def watch(self, seconds: float) -> None:
        """Spend ``seconds`` (at most until the deadline) reading what the server sends,
        returning early if it ends the connection. A trickling client's pause."""
        until = min(self.deadline, time.monotonic() + seconds)
        while self.ended is None:
            left = until - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            if not self._receive_once(RECEIVE_SIZE):
                return

    def read(self, reply_bytes: int | None = None) -> None:
        """Read until the server ends the connection, ``reply_bytes`` in all have been
        read (no more: the rest stays unread), or the deadline."""
        while reply_bytes is None or len(self._received) < reply_bytes:
            wanted = RECEIVE_SIZE if reply_bytes is None else reply_bytes - len(self._received)
            if not self._arm() or not self._receive_once(min(wanted, RECEIVE_SIZE)):
                return

    def wait_unread(self) -> None:
        """Until the deadline, wait for the server to end the connection without reading
        anything it sent.

        A reset is seen at once. A FIN is seen only where ``poll`` reports ``POLLRDHUP``
        (Linux), and only once it has arrived: behind a reply that fills the client's
        receive window it cannot, and the connection stays ``"open"``.
        """
        if self.ended is not None:
            return
        if not hasattr(select, "poll"):  # Windows: no poll for sockets; see what remains
            left = max(self.deadline - time.monotonic(), 0.0)
            select.select([], [], [self.sock], left)
            self._note_socket_error()
            return
        poller = select.poll()
        poller.register(self.sock, select.POLLERR | select.POLLHUP | _POLLRDHUP)
        while self.ended is None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            for _, events in poller.poll(math.ceil(left * 1000)):
                if self._note_socket_error():
                    return
                if events & select.POLLERR:  # an error already collected: still an abort
                    self._end("reset")
                elif events & (select.POLLHUP | _POLLRDHUP):
                    self._end("eof")

    def shut_write(self) -> None:
        """Send our FIN (``shutdown(SHUT_WR)``): the server sees the end of the request."""
        if self.ended is not None:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except RESET_ERRORS:
            self._end("reset")
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # the server already ended it; read says how
                raise

    # -- ending --------------------------------------------------------------------------

    def outcome(self) -> StreamOutcome:
        """What happened so far (``"open"`` if the server has not ended the connection)."""
        ended_at = time.monotonic() if self._ended_at is None else self._ended_at
        return StreamOutcome(
            sent=self.sent,
            received=bytes(self._received),
            ended=self.ended or "open",
            elapsed=ended_at - self.started,
        )

    def abort(self) -> None:
        """Close with RST (``SO_LINGER`` on, timeout 0) instead of FIN.

        On a Unix stream socket there is no RST: the server sees the end of stream, or
        ECONNRESET if the client leaves bytes of the reply unread.
        """
        if self.sock.fileno() != -1:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
            except OSError:  # the connection is already gone; closing is all that is left
                pass
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- the bookkeeping -----------------------------------------------------------------

    def _end(self, how: Ending) -> None:
        if self.ended is None:
            self.ended, self._ended_at = how, time.monotonic()

    def _arm(self) -> bool:
        """Set the socket's timeout to the time left; False if nothing more may be done."""
        left = self.deadline - time.monotonic()
        if self.ended is not None or left <= 0:
            return False
        self.sock.settimeout(left)
        return True

    def _receive_once(self, size: int) -> bool:
        """One ``recv``; False if it timed out or the server ended the connection."""
        try:
            chunk = self.sock.recv(size)
        except TimeoutError:
            return False
        except RESET_ERRORS:
            self._end("reset")
            return False
        if not chunk:
            self._end("eof")
            return False
        self._received += chunk
        return True

    def _note_socket_error(self) -> bool:
        """Record a pending socket error (a reset) without reading; True if there was one."""
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._end("reset")
            return True
        return False
