"""How the standard library's loop receives a connection's bytes: into the server's
shared buffer, or as a bytes object the size of the waiting bulk ``read(n)``.

Why two ways. The shared buffer (``recv_into``, ``streams.receive_buffer``) is right
for messages: no allocation per read, and the bytes of a line are copied out once. For
bulk it costs a user-space copy of every byte: a ``read(65536)`` is cut out of the 256 KiB
received, and on Python 3.11 the pieces written back are joined once more by
``writelines``. asyncio's own ``Protocol`` makes no copy at all: ``recv(n)`` writes into
the bytes object ``data_received`` hands over, and ``write`` sends that object as it
is. Measured (``bench/bulk_quick.py``, 64 KiB reads, median server CPU per MB over 5
rounds): the shared buffer 961 µs, the asyncio ``Protocol`` 462 µs.

So while a ``read(n)`` of at least ``BULK_READ_BYTES`` waits, the transport is switched
to ``recv(n)``, and the chunk it returns fits the read exactly: the compiled
``data_received`` hands it over as the result (no copy), and the handler's ``write``
sends it as it is. One more thing the ``Protocol`` has: 256 KiB per read callback, so
a quarter of the loop turns and, above all, of the sends (each ``send`` on loopback
runs the receiver's side of TCP and wakes it: 31% of the server's CPU in ``perf``).
While switched, the transport's read callback is ``_receive_burst``: up to
``RECV_MAX_BYTES`` in ``recv(n)`` steps while the handler's next bulk read waits, the
handler resumed after each, its writes held (``FlowControl.holding``) and sent
together when the callback ends (one ``writelines``). After: 510 µs per MB (the same
run as above), 16 reads, 4 sends and 4 loop turns per MB (``strace -c``). When a read
of another kind waits (a line, ``readinto``, a smaller ``read``), the transport goes
back to the shared buffer. Only the switch is decided here; what a read returns
never depends on it.

How: asyncio's ``_SelectorSocketTransport`` picks its read callback once, in
``set_protocol`` (``_read_ready__get_buffer`` for a ``BufferedProtocol``, which the
reader is), and ``_read_ready`` looks it up on each call, so replacing
``_read_ready_cb`` takes effect at the next read. While switched it is
``_receive_burst``, which does what the transport's ``_read_ready__data_received``
does (the same code in 3.11, 3.12 and 3.13, read in their sources), with the size
given here and several times. Private names: the switch is made only where all of
them are present (``_NEEDED``), so another version or another transport (uvloop's,
TLS) simply keeps the shared buffer. Which chunks switch: a bulk read is one whose
chunks fill it; a ``read(65536)`` answered by 64-byte messages (the bench's ping-pong
handler) stays on the shared buffer, since ``recv(65536)`` per message would cost a
64 KiB allocation and, in a burst, a ``recv`` that finds nothing.

The reader keeps ``_recv_size``: 0 while the shared buffer is used, else the size
``recv`` is given. The compiled ``data_received`` takes a chunk itself only for a
``read`` of at least that size; anything else reaches ``follow_read`` (through the
Python ``data_received``), which switches back.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from .loop import is_stdlib_socket_transport
from .parking import SOME

if TYPE_CHECKING:
    from .streams import StreamReader

__all__ = [
    "BULK_READ_BYTES",
    "RECV_MAX_BYTES",
    "follow_read",
    "switchable",
    "to_buffer",
    "to_bytes",
]

#: The smallest waiting ``read(n)`` served by ``recv(n)``. Measured both ways
#: (``bench/bulk_quick.py --read-bytes``, medians of 5 rounds): 32 KiB reads 546 µs per
#: MB switched against 971 not; 16 KiB reads 919 against 961, no clear gain for twice the
#: system calls, so the switch starts at 32 KiB.
BULK_READ_BYTES = 32 * 1024

#: The largest ``recv``: asyncio's own ``max_size``. A larger ``read(n)`` gets at most
#: this much per step (it asked for "up to n").
RECV_MAX_BYTES = 256 * 1024

#: What the switch uses of that transport (3.11-3.13: the same code in all three).
_NEEDED = (
    "_read_ready_cb",
    "_read_ready__get_buffer",
    "_read_ready__on_eof",
    "_sock",
    "_conn_lost",
    "_fatal_error",
)


def switchable(transport: Any) -> Any:
    """``transport`` if its receiving can be switched (the standard library's plain
    socket transport), else None."""
    return transport if is_stdlib_socket_transport(transport, _NEEDED) else None


def to_bytes(reader: StreamReader, size: int) -> None:
    """Receive as bytes objects of ``size`` (at most ``RECV_MAX_BYTES``)."""
    size = min(size, RECV_MAX_BYTES)
    if reader._recv_size == size:
        return
    transport = reader._switch
    transport._read_ready_cb = partial(_receive_burst, transport, reader)
    reader._recv_size = size


def to_buffer(reader: StreamReader) -> None:
    """Receive into the shared buffer again (the transport's own callback)."""
    transport = reader._switch
    transport._read_ready_cb = transport._read_ready__get_buffer
    reader._recv_size = 0


def follow_read(reader: StreamReader) -> None:
    """Receive the way the read waiting now is best served (no read waiting: as before)."""
    if reader._waiter is None:
        return
    if reader._want == SOME and reader._want_size >= BULK_READ_BYTES:
        to_bytes(reader, reader._want_size)
    elif reader._recv_size:
        to_buffer(reader)


def _receive_burst(transport: Any, reader: StreamReader) -> None:
    """The transport's read callback while switched: ``recv(n)`` steps, up to
    ``RECV_MAX_BYTES`` per readiness while each fills the handler's next bulk read (as
    asyncio's ``Protocol`` reads 256 KiB at a time), the steps' writes sent together at
    the end. What one step does is the transport's ``_read_ready__data_received`` with
    the size given here; a chunk smaller than ``BULK_READ_BYTES`` means the stream is not
    (or no longer) bulk: the shared buffer takes the next reads, and a message-sized
    exchange costs no ``recv`` per message that finds nothing."""
    flow = reader.flow
    holds = flow.holding = flow.collecting
    try:
        for _ in range(RECV_MAX_BYTES // reader._recv_size):
            size = reader._recv_size
            if transport._conn_lost or not size:
                return
            try:
                data = transport._sock.recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal read error on socket transport")
                return
            if not data:
                transport._read_ready__on_eof()
                return
            try:
                reader.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            if len(data) < size:
                if len(data) < BULK_READ_BYTES and reader._recv_size:
                    to_buffer(reader)
                return
            if (
                reader._waiter is None
                or reader._buffer
                or reader._want != SOME
                or reader._want_size < reader._recv_size
                or not transport.is_reading()
            ):
                return
    finally:
        if holds:
            flow.holding = False
            if flow.pending_writes:
                flow.flush_writes()
