"""A pre-fork worker: one ordinary serve loop in a child process, tied to its master.

Design: the master forks; the child resets the master's signal handlers to a worker's
(TERM stops gracefully, QUIT exits at once, the master's other signals are ignored),
boots (its own ``SO_REUSEPORT`` socket if asked, then ``worker_init()``), reports ready on
its status pipe and runs the next serve loop in the server's MRO. While it serves it
writes a heartbeat byte from ``service_actions`` so a wedged loop is noticed and killed.
It stops when told (SIGTERM), when it has served its request budget (it says so first, so
the master can start its replacement at once), or when the master is gone: PR_SET_PDEATHSIG
on Linux, and everywhere EOF on a pipe whose only writer is the master. After the loop it
drains in-flight requests, closes, and leaves with ``os._exit``, never returning into the
master's code. Exit codes are the whole report: ``EXIT_BOOT_FAILED`` stops the master.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, NoReturn

from ..log_batches import flush_all

log = logging.getLogger("sockserve.prefork")

#: The worker served and stopped as asked.
EXIT_OK = 0
#: The serve loop itself raised: the master replaces the worker (with back-off).
EXIT_FAILED = 1
#: The worker failed before it could serve. The master stops instead of restarting it:
#: booting again would fail again, and a crash loop hides the cause (gunicorn's
#: WORKER_BOOT_ERROR is 3 for the same reason).
EXIT_BOOT_FAILED = 3

# The status pipe, worker → master: one byte per event; some kinds carry one line.
READY = b"r"
BEAT = b"."
RECYCLING = b"q"  #: stopping after max_requests: start the replacement now
STOPPING = b"s"  #: stopping for another reason of its own (a SIGTERM, a shutdown() call)
BOOT_FAILED = b"!"  #: + the reason, one line
STATS = b"S"  #: + the worker's cumulative ``stats()`` as one JSON line
DRAINED = b"D"  #: + its ``DrainReport`` as one JSON line, once, as it stops
#: Kinds followed by one line of text (newline-terminated).
LINE_KINDS = frozenset({BOOT_FAILED, STATS, DRAINED})

#: How often at most a worker reports its counters: the master's ``stats()`` is this
#: old at worst (plus a loop turn). Cumulative snapshots, so a dropped one loses nothing.
STATS_INTERVAL_SECONDS = 0.1

#: Heartbeats per ``worker_timeout``: several, so one late loop turn is not fatal.
BEATS_PER_TIMEOUT = 4

#: Longest boot-failure reason sent to the master (one pipe write stays atomic).
MAX_REASON_BYTES = 1000

#: After ``graceful_timeout``, how long a stopping worker gets before it is killed (by the
#: master, or by its own alarm): time for ``drain`` to abort stragglers and unwind.
STOP_GRACE_SECONDS = 3.0

#: Signals the master acts on. A worker ignores them: they concern the whole server (a
#: Ctrl-C reaches every process of the terminal's group, and the master leads the stop).
#: Ignored by a do-nothing handler, not SIG_IGN, which programs a handler runs through
#: ``subprocess`` would inherit.
MASTER_ONLY_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU")
    if hasattr(signal, name)
)


@dataclass(frozen=True)
class WorkerLink:
    """What a worker gets from the master at fork."""

    status_fd: int  #: write end of this worker's status pipe
    master_gone_fd: int  #: read end of a pipe whose write end only the master holds
    master_pid: int
    request_limit: int  #: stop after this many requests; 0 for no limit
    beat_interval: float | None  #: seconds between heartbeats; None: no heartbeat
    stop_timeout: float  #: seconds in-flight requests get once the worker stops
    signal_mask: frozenset[int]  #: the mask to restore once handlers are in place


def run_worker(
    server: Any,
    link: WorkerLink,
    *,
    boot: Callable[[], None],
    serve: Callable[[float | None], None],
    after_loop: Callable[[], None],
    poll_interval: float | None,
) -> NoReturn:
    """Be a worker until stopped, then exit; called in the child right after ``fork()``.

    ``boot`` prepares the listener and runs ``worker_init``; ``serve`` is the ordinary
    serve loop; ``after_loop`` runs once it returned (it takes a private backlog).
    """
    code = EXIT_BOOT_FAILED
    try:
        code = Worker(server, link).run(boot, serve, after_loop, poll_interval)
    finally:
        flush_all()  # the access log's pending lines: os._exit skips atexit
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass  # closed or broken: nothing left to say
        os._exit(code)


class Worker:
    """One worker process's state: its link to the master and why it is stopping."""

    def __init__(self, server: Any, link: WorkerLink) -> None:
        self.server = server
        self.link = link
        self.stop_reason = ""
        self.served = 0
        self._next_beat = 0.0
        self.pid = os.getpid()
        self._signal_wakeup: int | None = None
        self._signal_watcher: Any = None  # the serve loop that watches _signal_wakeup
        self._alarm_pending = False
        self._stats_sent: str | None = None
        self._stats_sent_at = 0.0

    def run(
        self,
        boot: Callable[[], None],
        serve: Callable[[float | None], None],
        after_loop: Callable[[], None],
        poll_interval: float | None,
    ) -> int:
        handlers = {
            signal.SIGTERM: self._on_terminate,
            signal.SIGQUIT: _exit_now,
            signal.SIGUSR1: self._on_reopen_logs,
        }
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in MASTER_ONLY_SIGNALS:
            signal.signal(signum, _ignore)
        self._signal_wakeup = _open_signal_wakeup()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.link.signal_mask)
        ask_for_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.link.master_pid:
            return EXIT_OK  # the master died while we were being born
        os.set_blocking(self.link.status_fd, False)
        try:
            boot()
        except BaseException as exc:
            self._report_boot_failure(exc)
            return EXIT_BOOT_FAILED
        self._hook_into_loop()
        self._send(READY)
        try:
            serve(self._loop_poll_interval(poll_interval))
            if not self.stop_reason:  # a handler called shutdown(): say so, then finish
                self.stop_reason = "shutdown() was called"
                self._send(STOPPING)
            log.info("worker %d stopping (%s)", self.pid, self.stop_reason)
            after_loop()
            self._drain_and_close()
        except BaseException:
            log.exception("worker %d failed while serving", self.pid)
            return EXIT_FAILED
        return EXIT_OK

    # -- talking to the master -----------------------------------------------------------

    def _send(self, message: bytes) -> None:
        try:
            os.write(self.link.status_fd, message)
        except OSError:
            pass  # the pipe is full (the master is behind) or the master is gone

    def _report_boot_failure(self, exc: BaseException) -> None:
        log.error("worker %d failed to boot", self.pid, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        encoded = reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
        self._send(BOOT_FAILED + encoded + b"\n")

    def _beat(self) -> None:
        watcher = self._signal_watcher
        if watcher is None or not watcher.is_running:
            # Nothing wakes on the signal pipe (an async server runs its own event loop):
            # look for pending handlers at least once per turn.
            run_pending_signal_handlers()
        if os.getppid() != self.link.master_pid:
            self.begin_stop("the master is gone")
        self._report_stats()
        if self._alarm_pending:
            self._alarm_pending = False
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, self.link.stop_timeout + STOP_GRACE_SECONDS)
        interval = self.link.beat_interval
        if interval is None:
            return
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + interval
            self._send(BEAT)

    def _report_stats(self, *, now: bool = False) -> None:
        """Send the counters if they changed (at most every STATS_INTERVAL_SECONDS)."""
        moment = time.monotonic()
        if not now and moment - self._stats_sent_at < STATS_INTERVAL_SECONDS:
            return
        text = json.dumps(self.server.stats().to_dict(), separators=(",", ":"))
        if text == self._stats_sent:
            return
        self._stats_sent, self._stats_sent_at = text, moment
        self._send(STATS + text.encode() + b"\n")

    def _loop_poll_interval(self, poll_interval: float | None) -> float | None:
        """The loop must turn at least once per heartbeat, even with no traffic."""
        interval = self.link.beat_interval
        if interval is None:
            return poll_interval
        return interval if poll_interval is None else min(poll_interval, interval)

    # -- hooks into the ordinary serve loop ------------------------------------------------

    def _hook_into_loop(self) -> None:
        """Count requests and beat, whatever the user's classes override.

        Requests are counted by the serving core as each one is admitted, in every mode
        (the selector loop and the async mode's event loop alike). The
        heartbeat wraps ``service_actions`` as an instance attribute on purpose: a
        subclass that overrides it without calling ``super()`` (the stdlib invites that)
        must not silence the heartbeat and get its worker killed.
        """
        server = self.server
        service_actions = server.service_actions

        def beating_service_actions() -> None:
            self._beat()
            service_actions()

        vars(server)["service_actions"] = beating_service_actions
        if self.link.request_limit:
            server._core.on_request_admitted.append(self._count_request)
        loop = getattr(server, "_serve_loop", None)
        if loop is not None:
            loop.watch(self.link.master_gone_fd, self._on_master_pipe)
            if self._signal_wakeup is not None:
                loop.watch(self._signal_wakeup, self._on_signal_wakeup)
                self._signal_watcher = loop

    def _count_request(self, ticket: object) -> None:
        # Runs on the loop's thread, as the request is admitted: only counts and asks.
        self.served += 1
        if self.served == self.link.request_limit:
            self._send(RECYCLING)  # first, so the replacement starts while we finish
            self.begin_stop(f"served max_requests={self.served}")

    def _on_signal_wakeup(self) -> None:
        assert self._signal_wakeup is not None
        try:
            while os.read(self._signal_wakeup, 64):
                pass
        except BlockingIOError:
            pass
        run_pending_signal_handlers()

    def _on_master_pipe(self) -> None:
        try:
            data = os.read(self.link.master_gone_fd, 64)
        except BlockingIOError:
            return
        if not data:  # EOF: every copy of the write end is closed, so the master is gone
            self.server._serve_loop.unwatch(self.link.master_gone_fd)
            self.begin_stop("the master is gone")

    # -- stopping ------------------------------------------------------------------------

    def _on_terminate(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:  # a child this worker forked (ForkingMixIn): default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # From the master this is news to nobody; from anyone else (an operator, a
        # service manager) the master learns it should start a replacement.
        self._send(STOPPING)
        self._report_in_flight()
        self.begin_stop("SIGTERM")

    def _on_reopen_logs(self, signum: int, frame: object) -> None:
        # From the master (SIGUSR1 after a log rotation): only raises a flag.
        self.server.reopen_logs()

    def _report_in_flight(self) -> None:
        """Tell the master how many requests are in flight as the stop begins.

        A synchronous worker whose only thread is stuck in a handler sends nothing more;
        when the master kills it at the deadline it counts the last reported ``active``
        as aborted, and that report (at most STATS_INTERVAL_SECONDS old) predated the
        request: the fault battery's blocked handler was reported ``aborted=0``. This
        runs in a signal handler, maybe inside ``stats()`` itself, so it takes no lock:
        the last report, with ``active`` read from the limiter now.
        """
        try:
            last = json.loads(self._stats_sent) if self._stats_sent else {}
        except ValueError:
            last = {}
        last["active"] = self.server._core.limiter.active
        self._send(STATS + json.dumps(last, separators=(",", ":")).encode() + b"\n")

    def begin_stop(self, reason: str) -> None:
        """Stop accepting; safe in a signal handler (it only asks the loop, lock-free).

        An alarm bounds the whole stop: if the master is gone, nobody else will. The
        alarm's default action ends the process even if a handler is stuck in C code.
        """
        if self.stop_reason:
            return
        self.stop_reason = reason
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, self.link.stop_timeout + STOP_GRACE_SECONDS)
        else:
            self._alarm_pending = True  # set by the main thread at its next beat
        # Ask, never wait: this may run on a pool worker whose request the drain awaits.
        self.server._request_stop(drain_timeout=self.link.stop_timeout)

    def _drain_and_close(self) -> None:
        report = self.server.drain(self.link.stop_timeout)
        if report.aborted:
            log.warning(
                "worker %d aborted %d request(s) still running after %.1f s",
                self.pid,
                report.aborted,
                self.link.stop_timeout,
            )
        self.server.server_close()
        self._report_stats(now=True)
        drained = {"finished": report.finished, "aborted": report.aborted}
        self._send(DRAINED + json.dumps(drained).encode() + b"\n")


def _ignore(signum: int, frame: object) -> None:
    """A master-only signal reached a worker: nothing to do."""


def _exit_now(signum: int, frame: object) -> None:
    """SIGQUIT in a worker: leave now, without finishing anything (a fast stop)."""
    os._exit(EXIT_OK)


def close_descriptors(fds: Iterable[int | socket.socket]) -> None:
    """Close the master's private descriptors in a freshly forked worker.

    A socket object is detached first, so that its copy in this process can never close
    the number again later, when it may name one of the worker's own descriptors.
    """
    for fd in fds:
        try:
            os.close(fd.detach() if isinstance(fd, socket.socket) else fd)
        except OSError:
            pass  # already closed


@cache
def _libc() -> Any:
    import ctypes  # here, not at the top: only Linux workers need it

    return ctypes.CDLL(None, use_errno=True)


#: prctl(2) option: the signal this process gets when its parent exits (Linux).
PR_SET_PDEATHSIG = 1


def ask_for_parent_death_signal(signum: int) -> None:
    """On Linux, have the kernel send ``signum`` when the master dies, even by SIGKILL.

    Elsewhere the master-gone pipe does the same job, only through the serve loop.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl (a static or exotic libc): the pipe still tells us


def run_pending_signal_handlers() -> None:
    """Run the Python handlers of signals that have arrived, now.

    Normally the interpreter does this between bytecodes by itself. CPython 3.13.0 does
    not in a process forked from a thread other than the main one (a master serving
    from a thread, as tests and embedding applications do): a SIGTERM that lands while
    the worker runs Python code stays unhandled until some system call is interrupted,
    and the worker never stops (reproduced here: 3.11.7 and 3.12.1 run the handler,
    3.13.0 does not). ``pthread_sigmask`` checks for pending handlers after its system
    call. The synchronous loop calls this when the signal pipe wakes it; a loop that
    does not watch that pipe calls it every turn.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, ())


def _open_signal_wakeup() -> int | None:
    """A pipe the C-level signal handler writes to, so a signal wakes the serve loop.

    Returns its read end (the loop watches it), or None where the platform refuses.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    try:
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread after all, or no such support
        os.close(read_end)
        os.close(write_end)
        return None
    return read_end
