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

SIGHUP re-reads the TLS files (``--tls-cert``): new connections get the new certificate,
live ones keep theirs. A pre-fork server is the exception: its master owns TERM, INT and
HUP while it supervises (HUP re-reads the files, then restarts the workers with them),
so it serves on the main thread and stops with its own ``graceful_timeout``.
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

from ..admission.tls_prelude import tls_holder
from ..errors import TLSConfigurationError
from ..metrics import DrainReport
from .service_manager import ServiceManagerLink

log = logging.getLogger("sockserve.cli")

#: Seconds the command may take beyond ``--drain-timeout`` to be gone: a drain gives
#: aborted requests 2 s to unwind (``serve_loop.ABORT_GRACE_SECONDS``), then the servers
#: close; a pre-fork master kills workers 3 s after their graceful timeout.
STOP_GRACE_SECONDS = 5.0
#: The signals that stop the command (a second one of either stops it at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The signal that re-reads the TLS files (an ACME client's deploy hook sends it).
RELOAD_SIGNAL = getattr(signal, "SIGHUP", None)
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
class LoopEnded:
    server: Any
    error: BaseException | None


@dataclass(frozen=True)
class Stopped:
    reports: tuple[DrainReport, ...]


Event = int | LoopEnded | Stopped


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
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)

    def post(self, event: Event) -> None:
        self._events.put(event)
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (nobody waits any more)

    def wake_fd(self) -> int:
        return self._writer.fileno()

    def wait(self, timeout: float | None = None) -> Event | None:
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
    servers: Sequence[Any],
    ready_line: str,
    *,
    drain_timeout: float,
    manager: ServiceManagerLink | None = None,
) -> StopSummary:
    """Serve every server until SIGINT/SIGTERM; drain them together; return how it went.

    ``manager``: tell the service manager (``service_manager.py``) from this thread.
    """
    events = Mailbox()
    handled = STOP_SIGNALS if RELOAD_SIGNAL is None else (*STOP_SIGNALS, RELOAD_SIGNAL)
    with (
        events,
        signals_recorded(events.post, wake_fd=events.wake_fd(), signals=handled),
        _reopen_on_signal(servers),
    ):
        for server in servers:
            threading.Thread(
                target=_serve, args=(server, events), name="sockserve-serve", daemon=True
            ).start()
        print(ready_line, flush=True)
        tick_interval = None if manager is None else manager.tick_interval
        while True:
            if manager is not None:
                manager.tick(is_ready=True, is_stopping=False)
            event = events.wait(tick_interval)
            if event == RELOAD_SIGNAL:
                reload_tls_files(servers)
            elif isinstance(event, int):
                break
            if isinstance(event, LoopEnded):
                close_all_quickly(servers)
                raise LoopFailedError(f"the serve loop failed: {event.error!r}")
        return _stop(servers, events, drain_timeout, manager)


def serve_prefork(
    server: Any, ready_line: str, *, manager: ServiceManagerLink | None = None
) -> StopSummary:
    """Serve a pre-fork server on this (main) thread; its master handles the signals.

    Until the master installs its handlers, ours call ``server.shutdown()``, which for a
    pre-fork master only sets a flag and queues a request (documented signal-safe): a
    signal that arrives the moment the ready line is out still stops it cleanly. The
    master reaps every worker before ``serve_forever`` returns, so closing is quick.
    ``manager`` is told from the master's own loop: ready once a worker is, stopping
    once the master is, and its watchdog pings say that loop still turns.
    """
    if manager is not None:
        server.add_master_task(
            lambda: manager.tick(is_ready=server.workers_ready() > 0, is_stopping=server.draining),
            interval=manager.tick_interval,
        )
    with signals_recorded(lambda signum: server.shutdown()), _reopen_on_signal([server]):
        print(ready_line, flush=True)
        server.serve_forever()
    server.server_close()
    return StopSummary(reports=(), seconds=None)


def reload_tls_files(servers: Sequence[Any]) -> None:
    """SIGHUP: re-read the TLS files of every server whose context came from files.

    Bad files are logged and the current certificate stays: a botched renewal must not
    take a serving process down. Servers sharing a context reload it once.
    """
    done: set[int] = set()
    for server in servers:
        holder = tls_holder(server)
        if holder is None or holder.settings is None or id(holder) in done:
            continue
        done.add(id(holder))
        try:
            server.reload_tls()
        except TLSConfigurationError as exc:
            log.error("SIGHUP: %s; still serving the previous certificate", exc)
        else:
            log.info("SIGHUP: reloaded the TLS certificate from %s", holder.settings.certfile)


def _serve(server: Any, events: Mailbox) -> None:
    try:
        server.serve_forever()
    except BaseException as exc:
        log.exception("the serve loop on %s failed", server.server_address)
        events.post(LoopEnded(server, exc))
    else:
        events.post(LoopEnded(server, None))


def _stop(
    servers: Sequence[Any],
    events: Mailbox,
    drain_timeout: float,
    manager: ServiceManagerLink | None,
) -> StopSummary:
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
        if manager is not None:  # the watchdog still expects pings while we drain
            manager.tick(is_ready=True, is_stopping=True)
        remaining = deadline - time.monotonic()
        wait = remaining if manager is None else min(remaining, manager.tick_interval)
        event = events.wait(wait)
        if event is None and time.monotonic() >= deadline:
            log.warning("the drain overran its deadline; stopping at once")
            reason = "the drain overran its deadline"
            break
        if isinstance(event, Stopped):
            return StopSummary(event.reports, time.monotonic() - started)
        if event == RELOAD_SIGNAL:
            continue  # stopping: no new connection will use a new certificate
        if isinstance(event, int):
            reason = f"second {signal.Signals(event).name}"
            break
    close_all_quickly(servers)
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
    events.post(Stopped(tuple(reports)))


def close_all_quickly(servers: Sequence[Any]) -> None:
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


class signals_recorded:  # noqa: N801 (a context manager used like a function)
    """Route ``signals`` (SIGINT and SIGTERM) to ``record(signum)``; restore the old
    handlers after. With ``wake_fd``, also make it the signal wake-up descriptor (see
    ``Mailbox``). Enter it on the main thread (``signal.signal`` insists).
    """

    def __init__(
        self,
        record: Callable[[int], None],
        *,
        wake_fd: int | None = None,
        signals: Sequence[int] = STOP_SIGNALS,
    ) -> None:
        self._record = record
        self._wake_fd = wake_fd
        self._signals = tuple(signals)
        self._previous_wake_fd: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._record(signum)

    def __enter__(self) -> None:
        if self._wake_fd is not None:
            self._previous_wake_fd = signal.set_wakeup_fd(self._wake_fd, warn_on_full_buffer=False)
        for signum in self._signals:
            previous = signal.signal(signum, self._handle)
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        if self._previous_wake_fd is not None:
            signal.set_wakeup_fd(self._previous_wake_fd)
