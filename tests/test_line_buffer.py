"""The sans-IO line buffer: any chunking gives the same lines, the limit is exact, memory is
bounded. No sockets: bytes in, lines out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockserve.errors import LineTooLongError
from sockserve.line_buffer import LineBuffer

#: Streams of a few short lines, newlines frequent, the last line maybe unterminated.
streams = st.lists(st.binary(max_size=12), max_size=8).map(b"\n".join)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def expected_lines(stream: bytes) -> list[bytes]:
    lines = [line + b"\n" for line in stream.split(b"\n")]
    lines[-1] = lines[-1][:-1]  # the part after the last newline has none
    return [line for line in lines if line]


def lines_of(chunks: list[bytes], buffer: LineBuffer) -> list[bytes]:
    """Feed ``chunks`` one at a time, taking every whole line after each."""
    lines = []
    for chunk in [*chunks, None]:
        if chunk is None:
            buffer.feed_eof()
        else:
            buffer.feed(chunk)
        while (line := buffer.next_line()) is not None and line:
            lines.append(line)
        if chunk is None:
            assert line == b""  # at EOF: the partial line, then b""
    return lines


@given(st.data(), streams)
def test_any_chunking_yields_the_same_lines(data: st.DataObject, stream: bytes) -> None:
    chunks = data.draw(chunked(stream))
    assert lines_of(chunks, LineBuffer()) == expected_lines(stream)


@given(st.data(), streams, st.integers(1, 7))
def test_any_chunking_yields_the_same_bytes_to_read(
    data: st.DataObject, stream: bytes, size: int
) -> None:
    buffer = LineBuffer()
    received = b""
    for chunk in data.draw(chunked(stream)):
        buffer.feed(chunk)
        while piece := buffer.read(size):
            assert len(piece) <= size
            received += piece
        assert buffer.read(size) is None
    buffer.feed_eof()
    while piece := buffer.read(size):
        received += piece
    assert received == stream
    assert buffer.read(size) == b""


@given(st.data(), streams, st.sampled_from([b"\n", b"ab", b"\n\n", b"xyz"]))
def test_read_until_splits_at_every_separator(
    data: st.DataObject, stream: bytes, separator: bytes
) -> None:
    stream = stream.replace(b"\n", separator[:1]) + separator
    buffer = LineBuffer()
    pieces = []
    for chunk in data.draw(chunked(stream)):
        buffer.feed(chunk)
        while (piece := buffer.read_until(separator)) is not None:
            pieces.append(piece)
    expected = [part + separator for part in stream.split(separator)[:-1]]
    assert pieces == expected
    assert bytes(buffer.data) == stream.split(separator)[-1]


@given(st.data(), st.lists(st.integers(0, 20), min_size=1, max_size=6), st.integers(0, 12))
def test_the_limit_error_fires_exactly_at_the_first_longer_line(
    data: st.DataObject, lengths: list[int], limit: int
) -> None:
    stream = b"".join(b"x" * n + b"\n" for n in lengths)
    buffer = LineBuffer(max_line_length=limit)
    taken: list[bytes] = []
    raised = False
    try:
        for chunk in data.draw(chunked(stream)):
            buffer.feed(chunk)
            while (line := buffer.next_line()) is not None:
                taken.append(line)
    except LineTooLongError:
        raised = True
    first_long = next((i for i, n in enumerate(lengths) if n > limit), None)
    if first_long is None:
        assert not raised
        assert taken == [b"x" * n + b"\n" for n in lengths]
    else:
        assert raised
        assert taken == [b"x" * n + b"\n" for n in lengths[:first_long]]


@given(st.data(), st.integers(0, 50), st.integers(1, 64))
def test_memory_stays_within_the_limit_and_one_chunk(
    data: st.DataObject, limit: int, chunk_size: int
) -> None:
    buffer = LineBuffer(max_line_length=limit)
    errors = 0
    for _ in range(data.draw(st.integers(1, 30))):
        chunk = data.draw(st.binary(min_size=chunk_size, max_size=chunk_size))
        chunk = chunk.replace(b"\n", b"x")  # a line that never ends
        buffer.feed(chunk)
        assert len(buffer) <= limit + chunk_size
        try:
            assert buffer.next_line() is None
        except LineTooLongError:
            errors += 1
        assert len(buffer) <= limit
    assert errors == 0 or len(buffer) <= limit


def test_a_partial_last_line_is_returned_at_eof() -> None:
    buffer = LineBuffer(max_line_length=5)
    buffer.feed(b"one\ntwo")
    assert buffer.next_line() == b"one\n"
    assert buffer.next_line() is None
    buffer.feed_eof()
    assert buffer.next_line() == b"two"
    assert buffer.next_line() == b""
    with pytest.raises(RuntimeError):
        buffer.feed(b"more")


def test_a_partial_last_line_over_the_limit_raises_at_eof() -> None:
    buffer = LineBuffer(max_line_length=3)
    buffer.feed(b"four")
    buffer.feed_eof()
    with pytest.raises(LineTooLongError) as caught:
        buffer.next_line()
    assert caught.value.consumed == 4
    assert isinstance(caught.value, ValueError)
    assert buffer.next_line() == b""


def test_a_line_at_the_limit_is_accepted_and_one_more_byte_is_not() -> None:
    buffer = LineBuffer(max_line_length=4)
    buffer.feed(b"four")
    assert buffer.next_line() is None  # the newline may still come
    buffer.feed(b"\nfive5\nok\n")
    assert buffer.next_line() == b"four\n"
    with pytest.raises(LineTooLongError):
        buffer.next_line()
    assert buffer.next_line() == b"ok\n"  # the long line was dropped through its newline


def test_read_until_leaves_the_data_when_over_the_limit() -> None:
    buffer = LineBuffer(max_line_length=3)
    buffer.feed(b"abcdef")
    with pytest.raises(LineTooLongError):
        buffer.read_until(b";")
    assert len(buffer) == 6
    with pytest.raises(ValueError, match="separator"):
        buffer.read_until(b"")


def test_read_exactly_take_and_unread() -> None:
    buffer = LineBuffer()
    buffer.feed(b"abc")
    assert buffer.read_exactly(4) is None
    assert buffer.read_exactly(2) == b"ab"
    buffer.unread(b"xy\n")
    assert buffer.next_line() == b"xy\n"
    assert buffer.take(10) == b"c"
    assert "0 bytes" in repr(buffer)


def test_feeding_a_long_line_in_small_pieces_scans_each_byte_once() -> None:
    # Incremental scanning: 200 KiB fed 10 bytes at a time, asking for a line after each
    # piece, would take seconds if every ask rescanned the whole buffer.
    buffer = LineBuffer()
    piece = b"y" * 10
    for _ in range(20_000):
        buffer.feed(piece)
        assert buffer.next_line() is None
    buffer.feed(b"\n")
    assert buffer.next_line() == piece * 20_000 + b"\n"
