"""Connections in their preludes, driven from the synchronous loop's selector.

After the peer checks, a connection with preludes to go through (a PROXY header, a TLS
handshake) is registered in the serve loop's selector instead of being handed to a
worker. Each readiness event advances it one step (``admission/preludes.py``); when the
last prelude is done, the connection goes on to the client checks and the dispatcher.
A client that stalls costs a registered socket and a deadline here, never a thread or a
process, and the loop never blocks on it.

One loop thread owns a ``PendingPreludes`` and everything in it (the selector is that
thread's). In the single-threaded modes this means preludes make progress between
handlers: while an inline handler runs, nothing else does, as with any inline server.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..admission.checks import Refused
from ..admission.preludes import (
    WANT_READ,
    Prelude,
    PreludeDone,
    PreludeRun,
    connection_of,
    timed_out,
)


class _Pending:
    """One connection between its first and its last prelude."""

    __slots__ = (
        "request",
        "client_address",
        "details",
        "index",
        "run",
        "deadline",
        "events",
        "fd",
    )

    def __init__(self, request: Any, client_address: Any) -> None:
        self.request = request
        #: Kept, not asked for: a run may swap the socket object (TLS wraps it, which
        #: detaches the original), never the descriptor.
        self.fd: int = request.fileno()
        self.client_address = client_address
        self.details: dict[str, Any] = {}
        self.index = 0
        self.run: PreludeRun | None = None
        self.deadline = 0.0
        self.events = 0


class PendingPreludes:
    """The connections one loop thread is taking through their preludes."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        preludes: Sequence[Prelude],
        *,
        on_done: Callable[[Any, Any, dict[str, Any]], None],
        on_refused: Callable[[Any, Any, Refused], None],
    ) -> None:
        self._selector = selector
        self._preludes = preludes
        self._on_done = on_done
        self._on_refused = on_refused
        self._pending: dict[int, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, request: Any, client_address: Any) -> None:
        """Take a freshly admitted connection through the preludes."""
        request.setblocking(False)
        self._advance(_Pending(request, client_address))

    def on_ready(self, key: selectors.SelectorKey) -> None:
        pending = self._pending.get(key.fd)
        if pending is not None:
            self._advance(pending)

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def expire(self, now: float) -> None:
        """Refuse the connections whose current prelude has run out of time."""
        for fd, pending in list(self._pending.items()):
            if pending.deadline <= now:
                prelude = self._preludes[pending.index]
                self._forget(fd)
                self._on_refused(
                    connection_of(pending.run, pending.request),
                    pending.client_address,
                    timed_out(prelude),
                )

    def finish_all(self) -> None:
        """The loop is stopping for a drain: take every pending connection through the
        rest of its preludes (each within its prelude's own timeout), accepting no more.

        A connection the loop accepted is the server's to serve: dropping it now would
        reset a client that a load balancer cannot retry, since to the balancer the
        connect had succeeded. Only these sockets are watched (a private selector: the
        loop's also holds the listener, which would report the backlog over and over).
        """
        if not self._pending:
            return
        loop_selector = self._selector
        with type(loop_selector)() as selector:
            self._selector = selector
            try:
                for fd, pending in self._pending.items():
                    loop_selector.unregister(fd)
                    selector.register(fd, pending.events, self)
                while self._pending:
                    deadline = self.next_deadline()
                    assert deadline is not None
                    for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                        self.on_ready(key)
                    self.expire(time.monotonic())
            finally:
                self._selector = loop_selector

    def abandon_all(self) -> list[tuple[Any, Any]]:
        """The loop is stopping: unregister every pending connection and return them."""
        left = [(connection_of(p.run, p.request), p.client_address) for p in self._pending.values()]
        for fd in list(self._pending):
            self._forget(fd)
        return left

    def _advance(self, pending: _Pending) -> None:
        fd = pending.fd
        try:
            while True:
                if pending.run is None:
                    prelude = self._preludes[pending.index]
                    pending.run = prelude.start(pending.request, pending.client_address)
                    pending.deadline = time.monotonic() + prelude.timeout
                step = pending.run.advance()
                if not isinstance(step, PreludeDone):
                    break
                pending.request, pending.client_address = step.request, step.client_address
                pending.details.update(step.details)
                pending.run = None
                pending.index += 1
                self._forget(fd)  # the next prelude may hand on another socket object
                if pending.index == len(self._preludes):
                    # An SSLSocket too: blocking for the handler, its buffered bytes
                    # (pending()) left for the handler to read; nothing here waits on it.
                    pending.request.setblocking(True)
                    self._on_done(pending.request, pending.client_address, pending.details)
                    return
                fd = pending.fd = pending.request.fileno()
        except Refused as why:
            self._forget(fd)
            self._on_refused(
                connection_of(pending.run, pending.request), pending.client_address, why
            )
            return
        events = selectors.EVENT_READ if step == WANT_READ else selectors.EVENT_WRITE
        if fd not in self._pending:
            self._pending[fd] = pending
            self._selector.register(fd, events, self)
        elif pending.events != events:
            self._selector.modify(fd, events, self)
        pending.events = events

    def _forget(self, fd: int) -> None:
        if self._pending.pop(fd, None) is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass  # closed already
