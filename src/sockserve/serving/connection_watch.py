"""Watch a server's connections for slow and greedy clients, and cut the ones that are.

How it works: while a handler serves a connection, the connection is in its server's
``ConnectionWatch``. A sweeper (a thread per server in the synchronous modes,
``SweepThread``; a timer on the event loop in the async mode) calls ``sweep()`` every
``limits.sweep_seconds``: for each connection it reads the kernel's TCP counters and
asks the connection's ``ConnectionVerdict`` (``slow_clients.py``) whether a limit is
broken. If so the connection is *cut*: the breach is recorded, and the ``cut`` callable
given with it ends the connection under the handler's feet. A synchronous handler
blocked in ``recv`` sees the end of the stream, one blocked in ``sendall`` a broken
pipe (``shutdown_both``: ``shutdown(SHUT_RDWR)``, which wakes a blocked thread where
``close`` would not). When the handler ends, whoever runs it (``RequestJob.serve``,
``aio/connections.serve_stream``) takes the connection out with ``remove()``, which
returns the breach: that, not the handler's end of stream or broken pipe, is what is
counted in ``stats().peer_faults`` and given to ``handle_error``.

Why a sweeper rather than per-connection timers or a wrapped ``recv``: nothing is paid
per message, nothing per connection but a dictionary entry and one ``getsockopt`` per
sweep (about 1 µs), and both modes judge the same way from the same numbers.

Threads: ``add``/``remove`` run on handler threads, ``sweep`` on the sweeper; one lock
covers the table and the cut, so a connection is never shut down after ``remove``
returned (its descriptor may then be closed and reused by another connection). After a
fork (a forked child serving its one request, a pre-fork worker) the table and the
sweeper start afresh in the new process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import SlowPeerError
from ..slow_clients import ConnectionVerdict, SlowClientLimits, read_tcp_counters

log = logging.getLogger("sockserve.serving")

#: Ends a connection that broke a limit; given the breach (the async cut hands it to the
#: handler's pending read).
Cut = Callable[[SlowPeerError], None]


class WatchedConnection:
    """One connection in a ``ConnectionWatch``: its socket, its cut and its verdict."""

    __slots__ = ("sock", "cut", "started", "verdict", "breach")

    def __init__(self, sock: Any, cut: Cut, started: float) -> None:
        self.sock = sock
        self.cut = cut
        self.started = started
        #: Made at the connection's first sweep: most connections end before one comes,
        #: and this is the per-connection cost of the limits (``sweep``).
        self.verdict: ConnectionVerdict | None = None
        self.breach: SlowPeerError | None = None


class ConnectionWatch:
    """The connections of one server being served, and the sweep that judges them.

    ``start_sweeper(watch)`` is called when the first connection arrives (again after
    the table emptied and the sweeper stopped): it arranges for ``sweep()`` to be called
    every ``limits.sweep_seconds`` for as long as ``sweep()`` returns True.
    """

    def __init__(
        self,
        limits: SlowClientLimits,
        start_sweeper: Callable[[ConnectionWatch], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._start_sweeper = start_sweeper
        self._clock = clock
        self._lock = threading.Lock()
        self._watched: dict[int, WatchedConnection] = {}
        self._is_sweeping = False
        self._is_closed = False
        self._needs_counters = limits.needs_counters
        _LIVE.add(self)

    def add(self, sock: Any, cut: Cut) -> WatchedConnection:
        """Watch ``sock`` from now on; ``cut`` ends it if it breaks a limit."""
        watched = WatchedConnection(sock, cut, self._clock())
        with self._lock:
            self._watched[id(watched)] = watched
            if self._is_sweeping or self._is_closed:
                return watched
            self._is_sweeping = True
        self._start_sweeper(self)
        return watched

    def remove(self, watched: WatchedConnection) -> SlowPeerError | None:
        """Stop watching; the limit the connection broke (it was cut), or None."""
        with self._lock:
            self._watched.pop(id(watched), None)
        return watched.breach

    def sweep(self) -> bool:
        """Judge every connection and cut those over a limit; False: stop sweeping."""
        with self._lock:
            if not self._watched or self._is_closed:
                self._is_sweeping = False
                return False
            now = self._clock()
            for watched in list(self._watched.values()):
                if watched.breach is not None:
                    continue  # cut already; its handler has yet to notice
                verdict = watched.verdict
                if verdict is None:
                    verdict = watched.verdict = ConnectionVerdict(self.limits, watched.started)
                counters = read_tcp_counters(watched.sock) if self._needs_counters else None
                breach = verdict.judge(now, counters)
                if breach is not None:
                    watched.breach = breach
                    try:
                        watched.cut(breach)
                    except Exception:
                        log.exception("cutting a connection over its limits failed")
        return True

    def close(self) -> None:
        """Stop sweeping (the server closes); connections still served stay as they are."""
        with self._lock:
            self._is_closed = True

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    def __len__(self) -> int:
        return len(self._watched)

    def _start_afresh(self) -> None:
        # A forked process: the parent's connections are not ours to judge, its sweeper
        # thread does not exist here, and its lock may have been held at the fork.
        self._lock = threading.Lock()
        self._watched = {}
        self._is_sweeping = False


#: Every watch alive in this process, for the fork hook below.
_LIVE: weakref.WeakSet[ConnectionWatch] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watch in list(_LIVE):
        watch._start_afresh()


# A forked child starts every watch afresh (``_start_afresh``); a hook rather than a
# getpid() in ``add``, which is a system call on every connection.
os.register_at_fork(after_in_child=_after_fork_in_child)


def shutdown_both(sock: Any, breach: SlowPeerError | None = None) -> None:
    """The synchronous modes' cut: end both directions, waking a blocked handler.

    ``socket.socket.shutdown`` itself, even for an ``SSLSocket``, whose own ``shutdown``
    also drops its TLS state under the handler's feet (from another thread).
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # the peer is gone already (ENOTCONN), or the handler closed it


class SweepThread:
    """The synchronous modes' sweeper: a daemon thread per server, while it has work."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, watch: ConnectionWatch) -> None:
        self._wake.clear()
        self._thread = threading.Thread(
            target=self._run, args=(watch,), name="sockserve-connection-watch", daemon=True
        )
        self._thread.start()

    def _run(self, watch: ConnectionWatch) -> None:
        interval = watch.limits.sweep_seconds
        while not self._wake.wait(interval) and watch.sweep():
            pass

    def stop(self, watch: ConnectionWatch, timeout: float = 1.0) -> None:
        """Close ``watch`` and wait (up to ``timeout``) for the thread to end."""
        watch.close()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def threaded_watch(limits: SlowClientLimits) -> tuple[ConnectionWatch, SweepThread]:
    """A ``ConnectionWatch`` swept by its own thread, and that thread (to stop it)."""
    sweeper = SweepThread()
    return ConnectionWatch(limits, sweeper), sweeper
