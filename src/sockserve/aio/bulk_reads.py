"""The reader's bulk side: received chunks handed out in pieces, ``readinto``, and the
reads that need a length or a separator (``readexactly``, ``readuntil``).

How a chunk is held: uvloop hands the protocol up to 256,000 bytes per read; a handler
reading ``read(65536)`` wants a quarter of that. Appending the chunk to the line
buffer's bytearray and slicing pieces off it copied every byte three times and grew
and shrank a 256 KiB bytearray per read (glibc served it with brk, and the kernel with
fresh zeroed pages: 16,858 brk calls in 3 s of bulk echo, three quarters of the
server's CPU). Instead, a chunk that arrives to an empty buffer, while no line is
wanted, is *held*: ``read(n)`` hands out slices of it (the chunk itself when it fits,
no copy at all) and ``readinto`` copies from it. Every other read first *spills* the
rest of it into the line buffer, as does the next chunk arriving while one is held,
so lines, separators and limits keep their one implementation (``LineBuffer``).

These are functions of the reader (``StreamReader`` binds them as methods) so that
``streams.py`` keeps the per-message path and this module the bulk one; they use the
reader's state directly, as its methods would.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from .parking import INTO as _INTO
from .parking import WAKE as _WAKE

if TYPE_CHECKING:
    from .streams import StreamReader

__all__ = [
    "advance_held",
    "buffered",
    "hold_pieces",
    "into_now",
    "put_back",
    "readexactly",
    "readinto",
    "readuntil",
    "spill",
    "take_held",
]


async def readuntil(reader: StreamReader, separator: bytes = b"\n") -> bytes:
    """Data up to and including ``separator``.

    At EOF first: ``asyncio.IncompleteReadError`` with the partial data. Separator
    beyond ``limit``: ``LineTooLongError``, the data left in the buffer.
    """
    lines = reader._lines
    while True:
        if reader._held is not None:
            spill(reader)
        chunk = lines.read_until(separator)
        if chunk is not None:
            reader.flow.resume_reading_if_below(len(lines))
            return chunk
        if lines.eof:
            reader._raise_lost()
            raise asyncio.IncompleteReadError(reader._take(len(lines)), None)
        await reader._wait(_WAKE, 0)


async def readexactly(reader: StreamReader, n: int) -> bytes:
    """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if EOF comes first."""
    if n < 0:
        raise ValueError("readexactly size can not be less than zero")
    lines = reader._lines
    while True:
        held = reader._held
        if held is not None:
            if len(held) - reader._held_start >= n:
                data = take_held(reader, n)
                break
            spill(reader)
        if (data := lines.read_exactly(n)) is not None:  # type: ignore[assignment]
            break
        if lines.eof:
            reader._raise_lost()
            raise asyncio.IncompleteReadError(reader._take(len(lines)), n)
        await reader._wait(_WAKE, 0)
    reader.flow.resume_reading_if_below(buffered(reader))
    return data


async def readinto(reader: StreamReader, buffer: Any) -> int:
    """Read up to ``len(buffer)`` bytes into ``buffer``, as soon as any are there.

    Returns how many; 0 at the end of the stream (or for an empty buffer). The same
    errors as ``read``. No bytes object is made: buffered data is copied into
    ``buffer``, and on the standard library's loop a read that has to wait lets the
    kernel write into ``buffer`` itself. ``buffer``: anything writable that
    exposes the buffer protocol with one-byte items (bytearray, memoryview, mmap).
    """
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("readinto() needs a writable buffer")
    if view.itemsize != 1 or not view.c_contiguous:
        raise TypeError("readinto() needs a contiguous buffer of bytes")
    view = view.cast("B")
    if not len(view):
        return 0
    reader._into = view
    try:
        count = into_now(reader)
        if count is not None:
            return count
        read = reader._wait(_INTO, len(view))
        try:
            return await read  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            reader._keep_if_handed_over(read)
            raise
    finally:
        reader._into = None
        reader._filling = None


def into_now(reader: StreamReader) -> int | None:
    """Copy what is buffered into ``_into``: how many bytes (0 at EOF); None: wait."""
    into = cast(memoryview, reader._into)
    held = reader._held
    if held is not None:
        start = reader._held_start
        count = min(len(into), len(held) - start)
        with memoryview(held) as view:
            into[:count] = view[start : start + count]
        advance_held(reader, start + count)
    elif reader._buffer:
        count = reader._lines.read_into(into)
    elif reader._lines.eof:
        reader._raise_lost()
        return 0
    else:
        return None
    if reader.flow.is_reading_paused:
        reader.flow.resume_reading_if_below(buffered(reader))
    return count


def take_held(reader: StreamReader, n: int) -> bytes:
    """The next ``n`` bytes of the held chunk (the chunk itself if that is all of it)."""
    held = cast(bytes, reader._held)
    start = reader._held_start
    end = start + n
    result = held if start == 0 and end >= len(held) else held[start:end]
    advance_held(reader, end)
    return result


def advance_held(reader: StreamReader, end: int) -> None:
    if end < len(cast(bytes, reader._held)):
        reader._held_start = end
    elif reader._held_next:
        reader._held = reader._buffer = reader._held_next.pop(0)
        reader._held_start = 0
    else:
        reader._held = None
        reader._buffer = reader._lines.data


def hold_pieces(reader: StreamReader, nbytes: int, size: int) -> None:
    """The standard library's loop read ``nbytes`` into the shared receive buffer while a
    ``read(size)`` waits, ``size < nbytes``: copy them out in pieces of ``size``, each one
    what a ``read(size)`` returns as it is, hold them, and serve the read."""
    view = reader._receive_view[:nbytes]
    pieces = [view[start : start + size].tobytes() for start in range(0, nbytes, size)]
    reader._held = reader._buffer = pieces[0]
    reader._held_start = 0
    reader._held_next = pieces[1:]
    reader._serve_waiter()
    if buffered(reader) > reader.flow.read_high_water:
        reader.flow.pause_reading()


def spill(reader: StreamReader) -> None:
    """Copy the held chunk's unread rest into ``_lines`` (whose bytearray is empty):
    for every read but the sized ones, and before more data is appended."""
    held, start = cast(bytes, reader._held), reader._held_start
    reader._held = None
    data = reader._buffer = reader._lines.data
    if start:
        with memoryview(held) as view:
            data += view[start:]
    else:
        data += held
    for piece in reader._held_next:
        data += piece
    reader._held_next = []


def buffered(reader: StreamReader) -> int:
    """How many bytes are buffered unread."""
    held = reader._held
    size = len(reader._lines.data)
    if held is None:
        return size
    return size + len(held) - reader._held_start + sum(map(len, reader._held_next))


def put_back(reader: StreamReader, result: Any) -> None:
    """A read gave up after ``result`` was handed over: unread it, lose nothing.
    An int is what a ``readinto`` copied into its buffer (still ``_into``)."""
    if type(result) is int:
        result = bytes(reader._into[:result]) if result and reader._into is not None else b""
    if result:
        if reader._held is not None:
            spill(reader)
        reader._lines.unread(result)
