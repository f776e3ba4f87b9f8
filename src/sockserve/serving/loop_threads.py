"""The threads running a server's serve loop: who they are, how to wake them, how to stop them.

Several threads may run ``serve_forever`` on one server at once (the classic
"pre-allocated pool" recipe). The listening descriptor is non-blocking, so the threads
that lose an accept race go back to waiting instead of blocking inside accept().
A stop request is seen by every loop; the last one out clears it.

A loop sleeps in a selector. ``wake()`` writes a byte to a socket pair every loop watches,
so a stop or a freed slot is seen at once; descriptors passed to ``watch()`` (a forked
child's pidfd, the prefork master's pipe) wake it too. What a loop does once awake is
``serve_loop.py``'s business; this module only keeps the threads' bookkeeping.

The stdlib's private names ``_BaseServer__shutdown_request`` and
``_BaseServer__is_shut_down`` remain the flag and the event, because real code sets the
first to stop a loop without waiting and waits on the second.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable

#: Set on the server to ask its loops to stop (the stdlib's name, which real code sets).
STOP_FLAG = "_BaseServer__shutdown_request"
#: Set on the server once no loop runs (the stdlib's name, which real code waits on).
STOPPED_EVENT = "_BaseServer__is_shut_down"


class LoopThreads:
    """Which threads run a server's loop, the wake-up pair they share, watched descriptors.

    The base of ``ServeLoop``. Methods take the server as a plain object: they only touch
    its stop flag and event, by the stdlib's names, and its listening socket.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop_threads: set[int] = set()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._watches: dict[int, Callable[[], None]] = {}
        self._watch_generation = 0

    @property
    def is_running(self) -> bool:
        return bool(self._loop_threads)

    def is_loop_thread(self) -> bool:
        """Whether the calling thread runs one of the loops (lock-free: signal-safe)."""
        return threading.get_ident() in self._loop_threads

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on a loop thread whenever ``fd`` is readable (until unwatched).

        Strategies use it for events that only a descriptor announces, such as a forked
        child's exit. Call it from a loop thread; unwatch before closing ``fd``.
        """
        with self._lock:
            self._watches[fd] = callback
            self._watch_generation += 1

    def unwatch(self, fd: int) -> None:
        with self._lock:
            if self._watches.pop(fd, None) is not None:
                self._watch_generation += 1

    def _sync_watches(self, selector: selectors.BaseSelector, watched: set[int]) -> None:
        with self._lock:
            wanted = set(self._watches)
        for fd in watched - wanted:
            selector.unregister(fd)
        for fd in wanted - watched:
            selector.register(fd, selectors.EVENT_READ, fd)
        watched.clear()
        watched.update(wanted)

    def wake(self) -> None:
        """Make every loop look at its state now.

        Lock-free on purpose: it runs in signal handlers, which interrupt the loop's own
        thread at any bytecode, possibly while that thread holds ``self._lock``.
        """
        pair = self._wakeup
        if pair is not None:
            try:
                pair[1].send(b"\0")
            except OSError:
                pass  # the pair is full (wake-ups pending anyway) or was just closed

    def _enter(self, server: object) -> bool:
        """Register the calling thread as a loop; False if a stop is already pending."""
        with self._lock:
            if getattr(server, STOP_FLAG) and not self._loop_threads:
                # shutdown() came before serve_forever(): honour it, as the stdlib does.
                setattr(server, STOP_FLAG, False)
                getattr(server, STOPPED_EVENT).set()
                return False
            if not self._loop_threads:
                pair = socket.socketpair()
                for end in pair:
                    end.setblocking(False)
                self._wakeup = pair
                getattr(server, STOPPED_EVENT).clear()
            self._loop_threads.add(threading.get_ident())
        make_listener_nonblocking(server)
        return True

    def _leave(self, server: object) -> None:
        with self._lock:
            self._loop_threads.discard(threading.get_ident())
            if self._loop_threads:
                return
            if self._wakeup is not None:
                for end in self._wakeup:
                    end.close()
                self._wakeup = None
            setattr(server, STOP_FLAG, False)
            getattr(server, STOPPED_EVENT).set()

    def shutdown(self, server: object) -> None:
        """Ask every loop to stop; wait for them unless called from inside one.

        Called from a handler running on the loop's thread, or from a signal handler
        that interrupted it, waiting would deadlock: then it only asks and returns.
        Called while no loop runs, it leaves the request pending for the next loop.
        """
        # No lock here (see wake()): a signal handler may call this on the loop's thread.
        setattr(server, STOP_FLAG, True)
        loop_threads = self._loop_threads.copy()
        must_wait = bool(loop_threads) and threading.get_ident() not in loop_threads
        self.wake()
        if must_wait:
            getattr(server, STOPPED_EVENT).wait()


def make_listener_nonblocking(server: object) -> None:
    """Put the listening descriptor in non-blocking mode, leaving the Python-level timeout.

    ``os.set_blocking`` changes the descriptor's O_NONBLOCK flag only, so
    ``server.socket.gettimeout()`` (which ``handle_request`` reads) keeps the user's
    value, accepted sockets stay blocking (Linux does not inherit the flag through
    accept), and an accept that lost a race raises BlockingIOError instead of hanging.
    Datagram servers are left alone: their socket also sends replies.
    """
    sock = getattr(server, "socket", None)
    if isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM:
        try:
            os.set_blocking(sock.fileno(), False)
        except OSError:
            pass  # closed already: the selector will report it


def discard_wakeups(sock: socket.socket) -> None:
    """Read away every pending wake-up byte: one look at the state answers them all."""
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, OSError):
        pass
