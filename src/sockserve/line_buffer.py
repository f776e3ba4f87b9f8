"""A sans-IO line buffer: bytes in; a line, "need more" or ``LineTooLongError`` out.

Design: no socket, no event loop, no clock. A reader feeds the buffer whatever it
received (``feed``, then ``feed_eof`` at the end of the stream) and asks it for what it
wants: ``next_line()``, ``read(n)``, ``read_exactly(n)``, ``read_until(separator)``. Each
answers with the bytes, or None when they are not buffered yet. The async reader
(``aio/streams.py``) and the synchronous handler's line limit (``handlers.py``) use it, so
the two agree on what a line is and when it is too long, and property tests exercise it
without a network (``tests/test_line_buffer.py``).

Memory: with ``max_line_length`` set, ``next_line()`` gives up on a line as soon as more
than that many bytes are buffered without a newline: it drops them and raises
``LineTooLongError``. A reader that asks for the next line after each chunk it feeds
therefore never holds more than ``max_line_length`` plus one chunk. Scanning is
incremental (the bytes already searched are not searched again), so feeding a long line
a few bytes at a time costs time linear in its length.
"""

from __future__ import annotations

from .errors import LineTooLongError

__all__ = ["LineBuffer"]

_NEWLINE = b"\n"

#: From this size on, ``take`` copies through a memoryview (once) rather than slicing
#: the bytearray and converting the slice (twice); below it the view costs more than
#: the second copy (timeit here: about even between 2 and 4 KiB).
_COPY_THROUGH_VIEW_BYTES = 4096


class LineBuffer:
    """Buffered bytes of one stream, handed out as lines or sized pieces.

    ``max_line_length``: the longest line ``next_line`` and ``read_until`` accept, newline
    (separator) excluded; None: no limit, as a file object's ``readline()``.
    ``error``: the class raised past it, ``LineTooLongError`` or a subclass (the async
    reader's is also asyncio's ``LimitOverrunError``).

    Methods for the producer: ``feed(data)``, ``feed_eof()``. Methods for the consumer:
    ``next_line``, ``read``, ``read_exactly``, ``read_until``, ``take``, ``read_into``,
    ``unread``.
    A result of None means "not buffered yet"; once ``eof`` is set it never will be, and
    the consumer decides what the rest means (``take(len(buffer))``). ``next_line`` and
    ``read`` answer that themselves at EOF: the partial last line, then b"".

    ``data`` is the buffer itself, a bytearray that is never replaced, only changed in
    place, so a consumer may keep a reference to test it for emptiness cheaply. Change
    it only by appending (what ``feed`` does), or the incremental scan goes wrong.
    """

    __slots__ = ("data", "max_line_length", "eof", "_error", "_separator", "_scanned")

    def __init__(
        self,
        max_line_length: int | None = None,
        *,
        error: type[LineTooLongError] = LineTooLongError,
    ) -> None:
        self.data = bytearray()
        self.max_line_length = max_line_length
        self._error = error
        #: Set by ``feed_eof``: nothing more will be fed.
        self.eof = False
        #: ``data[:_scanned]`` holds no ``_separator`` (the last one searched for).
        self._separator = _NEWLINE
        self._scanned = 0

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (
            f"<LineBuffer {len(self.data)} bytes, max_line_length={self.max_line_length}"
            f"{', eof' if self.eof else ''}>"
        )

    # -- the producer ---------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        if self.eof:
            raise RuntimeError("feed() after feed_eof()")
        self.data += data

    def feed_eof(self) -> None:
        """The stream has ended: what is buffered is all there will be."""
        self.eof = True

    # -- the consumer ---------------------------------------------------------------------

    def next_line(self) -> bytes | None:
        """The next line, ``\\n`` included; at EOF the partial last line, then b"".

        None: no whole line is buffered yet. ``LineTooLongError`` when the line is longer
        than ``max_line_length``; the bytes of that line seen so far are dropped (up to
        and including its newline, if it is buffered), so the buffer stays bounded.
        """
        data = self.data
        start = self._scanned if self._separator is _NEWLINE else 0
        end = data.find(_NEWLINE, start)
        limit = self.max_line_length
        if end >= 0:
            if limit is not None and end > limit:
                self.take(end + 1)
                raise self._too_long(end)
            return self.take(end + 1)
        size = len(data)
        if limit is not None and size > limit:
            self.take(size)
            raise self._too_long(size)
        if self.eof:
            return self.take(size)
        self._separator, self._scanned = _NEWLINE, size
        return None

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` (> 0) buffered bytes; b"" at EOF; None: nothing buffered yet."""
        if self.data:
            return self.take(n)
        return b"" if self.eof else None

    def read_exactly(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes; None: fewer are buffered (at EOF: they never will be)."""
        return self.take(n) if len(self.data) >= n else None

    def read_until(self, separator: bytes) -> bytes | None:
        """The bytes up to and including ``separator``; None: it is not buffered yet.

        ``LineTooLongError`` when the separator starts beyond ``max_line_length``, or is
        not buffered and more than that many bytes are. Unlike ``next_line``, the bytes
        stay buffered (asyncio's ``readuntil`` does the same): the consumer decides.
        """
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        data = self.data
        start = self._scanned if separator == self._separator else 0
        end = data.find(separator, start)
        limit = self.max_line_length
        if end >= 0:
            if limit is not None and end > limit:
                raise self._too_long(end)
            return self.take(end + len(separator))
        if limit is not None and len(data) > limit:
            raise self._too_long(len(data))
        # a separator may start in the last len(separator) - 1 bytes and end in the next feed
        self._separator, self._scanned = separator, max(0, len(data) + 1 - len(separator))
        return None

    def take(self, size: int) -> bytes:
        """Remove and return the first ``size`` bytes (fewer if fewer are buffered)."""
        data = self.data
        if size >= len(data):
            result = bytes(data)
            data.clear()
            self._scanned = 0
            return result
        if size < _COPY_THROUGH_VIEW_BYTES:
            result = bytes(data[:size])
        else:  # one copy instead of two (the slice, then bytes())
            with memoryview(data) as view:
                result = view[:size].tobytes()
        self._discard(size)
        return result

    def read_into(self, buffer: memoryview) -> int:
        """Move up to ``len(buffer)`` buffered bytes into ``buffer``; return how many."""
        data = self.data
        count = min(len(buffer), len(data))
        with memoryview(data) as view:
            buffer[:count] = view[:count]
        self._discard(count)
        return count

    def _discard(self, size: int) -> None:
        # Deleting from the front of a bytearray moves its start, not its bytes.
        del self.data[:size]
        self._scanned = max(0, self._scanned - size)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the buffer (a read that gave up after taking it)."""
        self.data[:0] = data
        self._scanned = 0

    def _too_long(self, size: int) -> LineTooLongError:
        return self._error(
            f"line of more than {self.max_line_length} bytes (max_line_length); {size} bytes seen",
            size,
        )
