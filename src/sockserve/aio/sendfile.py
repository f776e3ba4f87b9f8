"""``writer.sendfile(file, offset, count)``: a file to the client, by the kernel where it can.

Two ways, chosen per call:

* a plain TCP or Unix socket, on either loop: wait until the transport has sent
  everything it buffered (its write buffer limits set to zero for that wait, so its
  ``resume_writing`` says when), then ``os.sendfile`` on its socket; when the socket
  is full, wait for it to be writable on a duplicate of its descriptor (the loops
  refuse a reader or writer on a transport's own descriptor) or for the connection to
  be lost. Not ``loop.sendfile``: uvloop 0.23 has none, and the standard library's
  cannot say how much it sent when it is cancelled (it moves the file position later,
  from a callback, if at all), which the guarantees below need;
* anything else (TLS, where the kernel never sees the plain bytes; a file object
  without a descriptor, such as ``io.BytesIO``; a kernel that refuses): a bounded
  copy, ``FALLBACK_CHUNK_BYTES`` at a time, read with ``os.pread`` in the loop's
  default executor (never the file position, which a cancelled read in a thread
  would otherwise move under us) and written with the transport's flow control.

What every way guarantees (``tests/test_aio_bulk.py``):

* the return value is the number of bytes sent (handed to the kernel, or to the TLS
  transport); fewer than ``count`` only when the file ended first; ``count=None``
  sends to the end of the file;
* afterwards the file's position is ``offset`` plus that number (as ``loop.sendfile``
  leaves it), also after an error or a cancellation;
* a client that stops reading makes it wait, like ``drain()``: bound it with
  ``asyncio.timeout`` if you must; a lost connection raises ``ConnectionError``;
* cancelled mid-transfer, it stops between two sends: what the client receives is an
  exact prefix of the range, nothing twice and no gap, and the connection is then
  closed by the server as for any cancelled request.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
from typing import IO, Any

from .flow import FlowControl

__all__ = ["FALLBACK_CHUNK_BYTES", "send_file", "send_file_by_copy", "uses_tls"]

#: Bytes read and written per step where the kernel cannot send the file: a quarter of
#: the 1 MiB the stdlib's own fallback reads, so that one connection never holds much
#: more than this plus the transport's write high-water mark.
FALLBACK_CHUNK_BYTES = 256 * 1024

#: The most one ``os.sendfile`` call is asked for: the kernel sends what the socket
#: buffer takes anyway; a bound keeps the arithmetic in range on every platform.
_NATIVE_CALL_BYTES = 1 << 30

#: ``os.sendfile`` errors that mean "not for this file or socket": copy instead.
_NOT_SUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP})


def uses_tls(transport: asyncio.BaseTransport) -> bool:
    """True when the transport encrypts: the kernel cannot send the file for it."""
    return (
        transport.get_extra_info("sslcontext") is not None
        or transport.get_extra_info("ssl_object") is not None
    )


def _check_arguments(file: IO[bytes], offset: int, count: int | None) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("sendfile() needs a file opened in binary mode")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
    if count is not None and (not isinstance(count, int) or count <= 0):
        raise ValueError(f"count must be a positive integer or None, not {count!r}")


def _descriptor(file: IO[bytes]) -> int | None:
    try:
        return file.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


async def send_file(
    transport: asyncio.WriteTransport,
    flow: FlowControl,
    file: IO[bytes],
    offset: int = 0,
    count: int | None = None,
) -> int:
    """Send ``count`` bytes of ``file`` from ``offset`` (None: to its end); return how many."""
    _check_arguments(file, offset, count)
    _raise_if_lost(transport, flow)
    if uses_tls(transport) or _descriptor(file) is None:
        return await send_file_by_copy(transport, flow, file, offset, count)
    return await _send_file_natively(transport, flow, file, offset, count)


async def _send_file_natively(
    transport: asyncio.WriteTransport,
    flow: FlowControl,
    file: IO[bytes],
    offset: int,
    count: int | None,
) -> int:
    """``os.sendfile`` on the transport's socket, once its write buffer is empty."""
    socket = transport.get_extra_info("socket")
    if socket is None:
        return await send_file_by_copy(transport, flow, file, offset, count)
    out_fd, in_fd = socket.fileno(), file.fileno()
    await wait_flushed(transport, flow)
    loop = asyncio.get_running_loop()
    sent = 0
    writability: _Writability | None = None
    try:
        while count is None or sent < count:
            size = _NATIVE_CALL_BYTES if count is None else min(count - sent, _NATIVE_CALL_BYTES)
            try:
                step = os.sendfile(out_fd, in_fd, offset + sent, size)
            except BlockingIOError:
                if writability is None:
                    writability = _Writability(loop, out_fd, flow)
                await writability.wait()
                continue
            except OSError as exc:
                if sent == 0 and exc.errno in _NOT_SUPPORTED:
                    return await send_file_by_copy(transport, flow, file, offset, count)
                # The transport has not seen the failure (it happened on its socket, not
                # through it): close it now, as it would have closed itself.
                transport.abort()
                raise
            if step == 0:
                break  # the end of the file
            sent += step
    finally:
        if writability is not None:
            writability.close()
        file.seek(offset + sent)
    return sent


async def send_file_by_copy(
    transport: asyncio.WriteTransport,
    flow: FlowControl,
    file: IO[bytes],
    offset: int = 0,
    count: int | None = None,
) -> int:
    """The bounded fallback: read a chunk, write it, wait below the high-water mark."""
    _check_arguments(file, offset, count)
    loop = asyncio.get_running_loop()
    fd = _descriptor(file)
    sent = 0
    try:
        while count is None or sent < count:
            size = FALLBACK_CHUNK_BYTES
            if count is not None:
                size = min(count - sent, size)
            if fd is None:  # an in-memory file: no disk to wait for
                file.seek(offset + sent)
                data = file.read(size)
            else:
                data = await loop.run_in_executor(None, os.pread, fd, size, offset + sent)
            if not data:
                break
            _raise_if_lost(transport, flow)
            transport.write(data)
            sent += len(data)
            if flow.is_writing_paused:
                await flow.writable()
    finally:
        file.seek(offset + sent)
    return sent


async def wait_flushed(transport: asyncio.WriteTransport, flow: FlowControl) -> None:
    """Wait until the transport has handed everything it buffered to the kernel."""
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    # With both marks at zero the transport pauses its protocol now and resumes it
    # (flow.resume_writing) exactly when its buffer is empty.
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while transport.get_write_buffer_size():
            _raise_if_lost(transport, flow)
            await flow.writable()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


class _Writability:
    """Wakes a sender when a duplicate of the socket's descriptor is writable, or when
    the connection is lost. Registered once per ``sendfile`` (at its first full socket),
    not per wait: a 64 MiB file fills the socket hundreds of times."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, flow: FlowControl) -> None:
        self._loop = loop
        self._flow = flow
        self._fd = os.dup(fd)  # the loop refuses a writer on the transport's own descriptor
        self._waiter: asyncio.Future[None] | None = None
        self._lost = flow.closed()
        loop.add_writer(self._fd, self._wake)
        self._lost.add_done_callback(self._wake)

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the socket is writable; raises if the connection is lost meanwhile."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._flow.is_connection_lost:
            raise self._flow.exception or ConnectionResetError("Connection lost")

    def close(self) -> None:
        self._lost.remove_done_callback(self._wake)
        self._loop.remove_writer(self._fd)
        os.close(self._fd)


def _raise_if_lost(transport: Any, flow: FlowControl) -> None:
    if flow.is_connection_lost:
        raise flow.exception or ConnectionResetError("Connection lost")
    if transport.is_closing():
        raise ConnectionResetError("the connection is closing")
