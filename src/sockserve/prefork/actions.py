"""How requests reach the pre-fork master's loop: signals and other threads queue actions.

A signal handler may run between any two bytecodes of the loop and ``shutdown()`` may come
from any thread, so neither acts itself: each appends an action's name to a deque (atomic,
no lock to deadlock on) and writes a byte to a wake-up socket that the loop's selector
watches. The loop then performs the actions in order, on its own thread. This module is
the delivery and the signal vocabulary; what each action does is the supervisor's.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

#: What each signal asks of the master. Handlers only queue the action; the loop acts.
SIGNAL_ACTIONS: dict[int, str] = {
    getattr(signal, name): action
    for name, action in (
        ("SIGTERM", "graceful_stop"),
        ("SIGINT", "interrupt"),  # graceful stop; a second one stops fast
        ("SIGQUIT", "fast_stop"),
        ("SIGHUP", "hangup"),  # reload (TLS files), then a rolling restart
        ("SIGTTIN", "add_worker"),
        ("SIGTTOU", "remove_worker"),
        ("SIGUSR1", "reopen_logs"),  # logrotate's signal: passed on to every worker
    )
    if hasattr(signal, name)
}


class ActionQueue:
    """Actions asked of the master, oldest first, and the wake-up socket that announces them.

    ``request(action)`` may be called from any thread or signal handler, at any time; the
    other methods belong to the master's loop, between ``open()`` and ``close()``.
    """

    def __init__(self) -> None:
        self._pending: deque[str] = deque()
        # Open between open() and close(). The wake-up is a socket pair, not a pipe: once
        # closed, a late request() from another thread fails on the closed socket object
        # instead of writing to a reused descriptor number.
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._previous_handlers: dict[int, Any] = {}

    def request(self, action: str) -> None:
        """Queue ``action`` and wake the loop. Lock-free: safe in a signal handler."""
        self._pending.append(action)
        wake = self._wake
        if wake is None:
            return  # the loop has not started (it looks at the queue first) or has ended
        try:
            wake[1].send(b"\0")
        except OSError:
            pass  # the socket is full (a wake-up is pending anyway) or already closed

    def take(self) -> Iterator[str]:
        """The queued actions, oldest first, until none is left (new ones included)."""
        while self._pending:
            yield self._pending.popleft()

    # -- the wake-up socket ----------------------------------------------------------------

    def open(self) -> socket.socket:
        """Create the wake-up socket pair; return the end for the loop's selector to watch."""
        wake = socket.socketpair()
        for end in wake:
            end.setblocking(False)
        self._wake = wake
        return wake[0]

    def close(self) -> None:
        wake, self._wake = self._wake, None
        for end in wake or ():
            end.close()

    def clear_wakeups(self) -> None:
        """Read the wake-up bytes, so the selector stops reporting them."""
        wake = self._wake
        try:
            while wake is not None and wake[0].recv(4096):
                pass
        except OSError:
            pass  # empty now (BlockingIOError), or closed

    def wake_sockets(self) -> tuple[socket.socket, ...]:
        """Both ends while open: a forked worker must not inherit them."""
        return self._wake or ()

    # -- signal handlers -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Queue ``SIGNAL_ACTIONS`` on their signals; only on the main thread (Python allows
        no other), else a no-op. ``restore_signal_handlers()`` puts the old ones back."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNAL_ACTIONS:
            old = signal.signal(signum, self._on_signal)
            # None: a handler set outside Python, which cannot be put back; the default can.
            self._previous_handlers[signum] = signal.SIG_DFL if old is None else old

    def restore_signal_handlers(self) -> None:
        previous, self._previous_handlers = self._previous_handlers, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.request(SIGNAL_ACTIONS[signum])
