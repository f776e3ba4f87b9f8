"""How a connection's collected writes reach its transport: one call, one send, no join.

``FlowControl.flush_writes`` hands the pieces a handler wrote in one step (or, on the
standard library's loop, in one read callback: ``receive_switch.py``) to the function
chosen here once per connection:

* uvloop: ``transport.writelines``, which sends them with one ``writev`` and applies
  flow control like ``write``.
* The standard library's socket transport: while its buffer is empty (it always is
  when the client keeps up), the pieces go out with one ``sendmsg`` of our own, and
  what the kernel did not take goes to ``write``, which buffers it and applies flow
  control: the transport's own ``write`` path, with ``sendmsg`` for its first ``send``.
  Anything unusual (buffered bytes, a lost connection, a ``sendfile`` in progress,
  more pieces than one ``sendmsg`` takes) goes the joined way. Why not its
  ``writelines``: on 3.11 it is the base class's, which joins the pieces into one bytes
  object (a copy of every byte: 6% of the server's CPU in a bulk echo, ``perf``) and
  calls ``write``; on 3.12 and 3.13 it sends with ``sendmsg`` but through a deque of
  memoryviews and the selector's writer bookkeeping on every call (a bulk echo cost 900 µs of server
  CPU per MB on 3.12 and 1,015 on 3.13 that way, 574 with ours; the asyncio
  ``Protocol`` 490: ``python bench/bulk_quick.py``), and it never checks the
  high-water mark (the transport buffers without bound, ``pause_writing`` never
  comes; read in the 3.12.1 and 3.13.0 sources, found by tests/test_slow_clients.py).
  Where ``sendmsg`` or a private name is missing, the pieces are joined for ``write``.

Private names of the standard library's transport are read (``_buffer``, ``_sock``,
``_conn_lost``, ``_eof``, ``_empty_waiter``, ``_fatal_error``; the same in 3.11-3.13).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from .loop import is_stdlib_socket_transport

__all__ = ["pieces_sender"]

#: The most pieces one ``sendmsg`` is given: well under the kernel's ``IOV_MAX`` (1024);
#: more than this in one step means small writes, which joining costs little.
MAX_PIECES = 64

_NEEDED_FOR_SENDMSG = ("_buffer", "_sock", "_conn_lost", "_eof", "_empty_waiter", "_fatal_error")
#: ``sendmsg`` is missing on some platforms (Windows).
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


def pieces_sender(transport: Any) -> Callable[[list[bytes]], None]:
    """The function that sends a list of collected writes on ``transport``."""
    if is_stdlib_socket_transport(transport, ()):
        if _HAS_SENDMSG and is_stdlib_socket_transport(transport, _NEEDED_FOR_SENDMSG):
            return partial(_sendmsg_then_write, transport)
        return partial(_write_joined, transport)  # write() buffers and pauses, as it should
    return cast("Callable[[list[bytes]], None]", transport.writelines)


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
