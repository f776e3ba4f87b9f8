"""Serving until a signal, then stopping within a deadline.

Design: each server's ``serve_forever`` runs on a daemon thread of its own, and the main
thread waits on one ``Mailbox``. Signal handlers only post the signal number there;
serving threads post a note when their loop ends. The first SIGINT or SIGTERM starts a
stopper thread that drains every server at once against one deadline
(``--drain-timeout``), then closes them; the main thread keeps listening, so a second
signal, or the deadline plus ``STOP_GRACE_SECONDS`` passing, stops at once. Nothing
here waits without a bound: request threads are daemon threads (see ``build.py``), and
``server_close()`` — which may wait for them or for forked children, as the stdlib's
does — runs on the stopper thread, which the main thread abandons when time is up.

A pre-fork server is the exception: its master owns TERM and INT while it supervises, so
it serves on the main thread and stops with its own ``graceful_timeout``.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..metrics import DrainReport

log = logging.getLogger("sockserve.cli")

#: Seconds the command may take beyond ``--drain-timeout`` to be gone: a drain gives
#: aborted requests 2 s to unwind (``serve_loop.ABORT_GRACE_SECONDS``), then the servers
#: close; a pre-fork master kills workers 3 s after their graceful timeout.
STOP_GRACE_SECONDS = 5.0
#: The signals that stop the command (a second one of either stops it at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The signal that reopens the access log (after logrotate moved it).
REOPEN_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class StopSummary:
    """How serving ended: the drain reports (one per server), or an immediate stop."""

    reports: tuple[DrainReport, ...]
    seconds: float | None
    at_once: bool = False
    reason: str = ""

    def describe(self) -> str:
        """The line printed on stop, e.g. ``stopped (finished 2, aborted 1, in 2.0 s)``."""
        if self.seconds is None:  # a pre-fork master: each worker logged its own drain
            return "stopped"
        if self.at_once:
            return f"stopped at once ({self.reason}, after {self.seconds:.1f} s)"
        finished = sum(report.finished for report in self.reports)
        aborted = sum(report.aborted for report in self.reports)
        return f"stopped (finished {finished}, aborted {aborted}, in {self.seconds:.1f} s)"


@dataclass(frozen=True)
class _LoopEnded:
    server: Any
    error: BaseException | None


@dataclass(frozen=True)
class _Stopped:
    reports: tuple[DrainReport, ...]


_Event = int | _LoopEnded | _Stopped


class Mailbox:
    """Events for the main thread, from signal handlers and other threads.

    Why not just a queue: the kernel may deliver a signal to any thread, and a main
    thread blocked on a lock is then never interrupted, so its Python handler never runs
    (seen here: the pool mode ignored one SIGTERM in about four). The main thread waits
    in ``select`` on a socket pair instead, which ``signal.set_wakeup_fd`` writes to from
    whichever thread the signal hits; that returns it to Python, where the handler runs
    and posts. ``post`` writes to the pair too, so a post is never missed. Both halves
    are reentrant (``SimpleQueue.put``, a non-blocking ``send``): safe in a handler.
    """

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)

    def post(self, event: _Event) -> None:
        self._events.put(event)
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (nobody waits any more)

    def wake_fd(self) -> int:
        return self._writer.fileno()

    def wait(self, timeout: float | None = None) -> _Event | None:
        """The next event, or None once ``timeout`` seconds passed without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._events.get_nowait()
            except queue.Empty:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            select.select([self._reader], [], [], remaining)
            try:
                while self._reader.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        self._writer.close()  # a late post() from an abandoned thread fails quietly


class LoopFailedError(Exception):
    """A serve loop ended by itself, with an exception (the command exits non-zero)."""


def serve_until_stopped(
    servers: Sequence[Any], ready_line: str, *, drain_timeout: float
) -> StopSummary:
    """Serve every server until SIGINT/SIGTERM; drain them together; return how it went."""
    events = Mailbox()
    with (
        events,
        _signals_recorded(events.post, wake_fd=events.wake_fd()),
        _reopen_on_signal(servers),
    ):
        for server in servers:
            threading.Thread(
                target=_serve, args=(server, events), name="sockserve-serve", daemon=True
            ).start()
        print(ready_line, flush=True)
        while True:
            event = events.wait()
            if isinstance(event, int):
                break
            if isinstance(event, _LoopEnded):
                _close_all_quickly(servers)
                raise LoopFailedError(f"the serve loop failed: {event.error!r}")
        return _stop(servers, events, drain_timeout)


def serve_prefork(server: Any, ready_line: str) -> StopSummary:
    """Serve a pre-fork server on this (main) thread; its master handles the signals.

    Until the master installs its handlers, ours call ``server.shutdown()``, which for a
    pre-fork master only sets a flag and queues a request (documented signal-safe): a
    signal that arrives the moment the ready line is out still stops it cleanly. The
    master reaps every worker before ``serve_forever`` returns, so closing is quick.
    """
    with _signals_recorded(lambda signum: server.shutdown()), _reopen_on_signal([server]):
        print(ready_line, flush=True)
        server.serve_forever()
    server.server_close()
    return StopSummary(reports=(), seconds=None)


def _serve(server: Any, events: Mailbox) -> None:
    try:
        server.serve_forever()
    except BaseException as exc:
        log.exception("the serve loop on %s failed", server.server_address)
        events.post(_LoopEnded(server, exc))
    else:
        events.post(_LoopEnded(server, None))


def _stop(servers: Sequence[Any], events: Mailbox, drain_timeout: float) -> StopSummary:
    started = time.monotonic()
    print(
        f"sockserve: stopping: draining for up to {drain_timeout:g} s "
        "(a second signal stops at once)",
        flush=True,
    )
    stopper = threading.Thread(
        target=_drain_and_close,
        args=(servers, drain_timeout, events),
        name="sockserve-stopper",
        daemon=True,
    )
    stopper.start()
    deadline = started + drain_timeout + STOP_GRACE_SECONDS
    while True:
        event = events.wait(deadline - time.monotonic())
        if event is None:
            log.warning("the drain overran its deadline; stopping at once")
            reason = "the drain overran its deadline"
            break
        if isinstance(event, _Stopped):
            return StopSummary(event.reports, time.monotonic() - started)
        if isinstance(event, int):
            reason = f"second {signal.Signals(event).name}"
            break
    _close_all_quickly(servers)
    return StopSummary((), time.monotonic() - started, at_once=True, reason=reason)


def _drain_and_close(servers: Sequence[Any], timeout: float, events: Mailbox) -> None:
    """On the stopper thread: drain every server in parallel, then close each."""
    reports: list[DrainReport] = []

    def drain(server: Any) -> None:
        reports.append(server.drain(timeout))

    drainers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in servers]
    for drainer in drainers:
        drainer.start()
    for drainer in drainers:
        drainer.join()
    for server in servers:
        server.server_close()
    events.post(_Stopped(tuple(reports)))


def _close_all_quickly(servers: Sequence[Any]) -> None:
    """Stop at once: kill forked request children; the rest ends with the process."""
    for server in servers:
        for pid in list(getattr(server, "active_children", None) or ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # already gone


class _reopen_on_signal:  # noqa: N801 (a context manager used like a function)
    """SIGUSR1 asks every server to reopen its access log; the old handler comes back after.

    ``reopen_logs`` only raises a flag (the next line reopens), so calling it from the
    handler is safe. A pre-fork master replaces this with its own handler while it
    supervises, which passes the signal on to the workers.
    """

    def __init__(self, servers: Sequence[Any]) -> None:
        self._servers = servers
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for server in self._servers:
            reopen = getattr(server, "reopen_logs", None)
            if reopen is not None:
                reopen()

    def __enter__(self) -> None:
        self._previous = signal.signal(REOPEN_SIGNAL, self._handle)

    def __exit__(self, *exc: object) -> None:
        signal.signal(REOPEN_SIGNAL, signal.SIG_DFL if self._previous is None else self._previous)


class _signals_recorded:  # noqa: N801 (a context manager used like a function)
    """Route SIGINT and SIGTERM to ``record(signum)``; restore the old handlers after.

    With ``wake_fd``, also make it the signal wake-up descriptor (see ``Mailbox``).
    """

    def __init__(self, record: Callable[[int], None], *, wake_fd: int | None = None) -> None:
        self._record = record
        self._wake_fd = wake_fd
        self._previous_wake_fd: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)

    def __enter__(self) -> None:
        if self._wake_fd is not None:
            self._previous_wake_fd = signal.set_wakeup_fd(self._wake_fd, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        if self._previous_wake_fd is not None:
            signal.set_wakeup_fd(self._previous_wake_fd)
