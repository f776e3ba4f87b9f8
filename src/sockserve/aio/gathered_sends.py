"""How a connection's collected writes reach its transport: one call, one send, no join.

``FlowControl.flush_writes`` hands the pieces a handler wrote in one step (or, on the
standard library's loop, in one read callback: ``receive_switch.py``) to the function
chosen here once per connection:

* uvloop: ``transport.writelines``, which sends them with one ``writev`` and applies
  flow control like ``write``.
* The standard library's socket transport on Python 3.12 and 3.13: its own
  ``writelines`` sends them with one ``sendmsg``, but never checks the high-water mark:
  the transport buffers without bound, ``pause_writing`` never comes, ``drain()`` never
  waits and a client that stops reading is never cut by ``write_timeout`` (read in the
  3.12.1 and 3.13.0 sources; found by tests/test_slow_clients.py). So it is followed by
  the check ``write`` makes after buffering, ``_maybe_pause_protocol``.
* The same transport on Python 3.11: ``writelines`` is the base class's, which joins the
  pieces into one bytes object (a copy of every byte: 6% of the server's CPU in a bulk
  echo, ``perf``) and calls ``write``. Instead, while the transport's buffer is empty
  (it always is when the client keeps up), the pieces go out with one ``sendmsg`` of
  our own, and what the kernel did not take goes to ``write``, which buffers it and
  applies flow control: the transport's own ``write`` path, with ``sendmsg`` for its
  first ``send``. Anything unusual (buffered bytes, a lost connection, more pieces
  than one ``sendmsg`` takes) goes the joined way.

Private names of the standard library's transport are read (``_buffer``, ``_sock``,
``_conn_lost``, ``_eof``, ``_empty_waiter``, ``_fatal_error``,
``_maybe_pause_protocol``; the same in 3.11-3.13); where one is missing,
``writelines`` is used as it is.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from .loop import STDLIB_SOCKET_TRANSPORT, is_stdlib_socket_transport

__all__ = ["pieces_sender"]

#: The most pieces one ``sendmsg`` is given: well under the kernel's ``IOV_MAX`` (1024);
#: more than this in one step means small writes, which joining costs little.
MAX_PIECES = 64

#: The transport's own ``writelines`` (3.12+), or None (3.11: the base class's, which joins).
_OWN_WRITELINES = (
    vars(STDLIB_SOCKET_TRANSPORT).get("writelines") if STDLIB_SOCKET_TRANSPORT else None
)
_NEEDED_FOR_SENDMSG = ("_buffer", "_sock", "_conn_lost", "_eof", "_empty_waiter", "_fatal_error")
_NEEDED_FOR_PAUSE = ("_maybe_pause_protocol",)
#: ``sendmsg`` is missing on some platforms (Windows).
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


def pieces_sender(transport: Any) -> Callable[[list[bytes]], None]:
    """The function that sends a list of collected writes on ``transport``."""
    if is_stdlib_socket_transport(transport, ()):
        if _OWN_WRITELINES is not None:
            if is_stdlib_socket_transport(transport, _NEEDED_FOR_PAUSE):
                return partial(_writelines_then_pause, transport)
            return partial(_write_joined, transport)  # (write() makes the check)
        if _HAS_SENDMSG and is_stdlib_socket_transport(transport, _NEEDED_FOR_SENDMSG):
            return partial(_sendmsg_then_write, transport)
    return cast("Callable[[list[bytes]], None]", transport.writelines)


def _writelines_then_pause(transport: Any, pieces: list[bytes]) -> None:
    transport.writelines(pieces)
    transport._maybe_pause_protocol()


def _write_joined(transport: Any, pieces: list[bytes]) -> None:
    transport.write(b"".join(pieces))


def _sendmsg_then_write(transport: Any, pieces: list[bytes]) -> None:
    if (
        transport._buffer
        or transport._conn_lost
        or transport._eof
        or transport._empty_waiter is not None  # a sendfile runs: write() refuses
        or len(pieces) > MAX_PIECES
    ):
        transport.write(b"".join(pieces))  # the transport's own path decides
        return
    try:
        sent = transport._sock.sendmsg(pieces)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        transport._fatal_error(exc, "Fatal write error on socket")
        return
    rest: list[Any] = []
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
        else:
            rest.append(memoryview(piece)[sent:] if sent else piece)
            sent = 0
    if rest:
        # Buffered by write() (its own send first finds the socket full, as a rule),
        # which registers the writer and pauses the protocol above the high-water mark.
        transport.write(b"".join(rest))
