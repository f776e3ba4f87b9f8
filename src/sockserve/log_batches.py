"""Lines appended to a file in batches: written by size or by a timer, not one write() each.

How it works: ``add(record)`` puts a record (a tuple; nothing is formatted yet) on a list
under a lock. The first record on an empty list wakes the flusher thread, which waits
``FLUSH_SECONDS`` and then writes whatever is pending; a list that reaches
``FLUSH_RECORDS`` is written at once by the thread that filled it. Writing formats the
whole batch with the owner's ``render(records) -> str`` (one loop, where formatting at
``add`` was a chain of calls per line) and hands it to ``os.write`` on a descriptor
opened with ``O_APPEND``, in writes of whole lines that never interleave with another
process's (pre-fork workers share the file): to a regular file, the whole batch in one
write (Linux takes an append whole, under the inode's lock, on local filesystems); to a
pipe or a terminal, chunks of at most ``PIPE_BUF`` bytes (POSIX keeps those atomic).

Why: per connection, ``write()`` and the formatting were the access log's largest costs
(docs/observability.md, "Cost"); a batch pays one system call per ``FLUSH_RECORDS``
lines. nginx's ``access_log ... buffer= flush=`` makes the same trade.

What it trades, durability: a line reaches the file up to ``FLUSH_SECONDS`` after its
connection ended, and a process that dies without running Python's exit (SIGKILL, a crash
in C, a pre-fork worker's SIGQUIT fast stop) loses the lines of its last ``FLUSH_SECONDS``
(at most ``FLUSH_RECORDS`` of them). An orderly end loses nothing: pending lines are
written by ``flush()``, which runs at ``close()``, at a server's ``server_close()`` (so at
the command's stop and a pre-fork worker's exit), at interpreter exit (``atexit``) and
before a reopen.

Rotation: ``reopen_soon()`` only raises a flag (safe in a signal handler). The next
``add`` writes what is pending to the old file, then opens the path again and swaps the
new file in under the same descriptor number (``dup2``): lines of connections that ended
before the signal stay in the old file, later ones go to the new one, and no write ever
meets a closed descriptor.

Forks: a child starts with nothing pending and no flusher (``os.register_at_fork``), so
lines pending in the parent are written once, by the parent; a child that adds lines (a
pre-fork worker) starts its own flusher with its first one.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("sockserve.access_log")

#: Longest a line waits for its write: ``tail -f`` shows it within a fifth of a second,
#: and a crash loses at most this much. The flusher costs one wake-up per interval in
#: which lines came, none while the server is idle.
FLUSH_SECONDS = 0.2
#: Lines per write() under load: 128 text lines are about 8 KiB (JSON: 22 KiB), so the
#: system call costs a few hundredths of a µs per line; memory held stays small.
FLUSH_RECORDS = 128
#: The largest write that POSIX keeps atomic on a pipe (4096 on Linux).
PIPE_CHUNK_BYTES = getattr(select, "PIPE_BUF", 512)

Render = Callable[[Sequence[tuple[Any, ...]]], str]

#: Every appender alive in this process, for the fork and exit hooks.
_LIVE: weakref.WeakSet[BatchedAppender] = weakref.WeakSet()


class BatchedAppender:
    """Records appended to ``path`` (``None``: the descriptor ``fd``, never reopened).

    ``render`` turns a batch of records into text (whole lines). Thread-safe; call
    ``close()`` when done (it writes what is pending).
    """

    def __init__(self, render: Render, *, path: str | None = None, fd: int = -1) -> None:
        self.path = path
        self._render = render
        self._fd = fd if path is None else open_for_append(path)
        self._chunk_bytes = _chunk_bytes_for(self._fd)
        self._wants_reopen = False
        self._is_closed = False
        self._reset_state()
        _LIVE.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # orders writes and reopens
        self._pending: list[tuple[Any, ...]] = []
        self._has_pending = threading.Event()
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- adding ----------------------------------------------------------------------------

    def add(self, record: tuple[Any, ...]) -> None:
        """Queue one record; it is written within ``FLUSH_SECONDS``."""
        if self._wants_reopen:
            self._reopen()
        with self._lock:
            pending = self._pending
            pending.append(record)
            count = len(pending)
            if count >= FLUSH_RECORDS:
                self._pending = []
        if count == 1:
            self._wake_flusher()
        elif count >= FLUSH_RECORDS:
            self._write(pending)

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            with self._lock:  # two threads may both have added a first line
                if self._is_closed:
                    self._pending.clear()  # nowhere to write: drop, do not grow
                    return
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_periodically, name="sockserve-access-log", daemon=True
                    )
                    self._flusher.start()
        self._has_pending.set()

    def _flush_periodically(self) -> None:
        while True:
            self._has_pending.wait()
            if self._stopping.wait(FLUSH_SECONDS):
                return  # close() writes what is left
            self.flush()

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every pending record now."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._has_pending.clear()
        if pending:
            self._write(pending)

    def _write(self, records: Sequence[tuple[Any, ...]]) -> None:
        with self._write_lock:  # one batch at a time: render may keep caches
            try:
                data = self._render(records).encode("utf-8", "backslashreplace")
            except Exception:  # a bug of ours: no reason to fail a connection or the flusher
                log.exception("formatting %d access log lines failed; they are lost", len(records))
                return
            try:
                for chunk in chunks_of_lines(data, self._chunk_bytes):
                    os.write(self._fd, chunk)
            except OSError:
                pass  # a full disk or a closed stdout must not fail the server's connections

    # -- rotation and closing --------------------------------------------------------------

    def reopen_soon(self) -> None:
        """Open ``path`` again before the next record (after logrotate moved the file).

        Only sets a flag: safe in a signal handler, from any thread.
        """
        if self.path is not None:
            self._wants_reopen = True

    def _reopen(self) -> None:
        self.flush()  # what ended before the rotation belongs in the old file
        with self._write_lock:
            if not self._wants_reopen or self.path is None:
                return  # another thread reopened it while this one waited
            self._wants_reopen = False
            try:
                fresh = open_for_append(self.path)
            except OSError:
                return  # keep writing to the old file rather than lose lines
            try:
                os.dup2(fresh, self._fd)
                self._chunk_bytes = _chunk_bytes_for(self._fd)
            finally:
                os.close(fresh)

    def close(self) -> None:
        """Stop the flusher, write what is pending, close the file (not stdout)."""
        self._is_closed = True
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            self._stopping.set()
            self._has_pending.set()
            flusher.join()
        self._flusher = None
        self.flush()
        _LIVE.discard(self)
        with self._write_lock:
            if self._fd > 2 and self.path is not None:
                fd, self._fd = self._fd, -1
                os.close(fd)


def open_for_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _chunk_bytes_for(fd: int) -> int:
    """The largest write that stays whole on ``fd``: any size to a regular file."""
    try:
        is_regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        is_regular = False
    return sys.maxsize if is_regular else PIPE_CHUNK_BYTES


def chunks_of_lines(data: bytes, limit: int) -> list[bytes]:
    """``data`` cut after newlines into pieces of at most ``limit`` bytes where it can be
    (a single longer line is one piece of its own)."""
    if len(data) <= limit:
        return [data]
    pieces = []
    start = 0
    while len(data) - start > limit:
        end = data.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # one line longer than the limit: alone, whole
            end = data.find(b"\n", start) + 1 or len(data)
        pieces.append(data[start:end])
        start = end
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def flush_all() -> None:
    """Write what every appender of this process has pending (a process about to exit)."""
    for appender in list(_LIVE):
        appender.flush()


def _after_fork_in_child() -> None:
    for appender in list(_LIVE):
        appender._reset_state()


atexit.register(flush_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
