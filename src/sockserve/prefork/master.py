"""The pre-fork master: keeps a number of worker processes serving, and nothing else.

Design: one loop in ``Supervisor.run`` waits in a selector on a wake-up socket (written by
signal handlers and ``shutdown()``, which only record what they want), on each worker's
status pipe (ready, heartbeat, recycling, a boot failure's reason; EOF when it exits) and,
where Linux offers it, on a pidfd per worker that turns readable when the worker exits.
Each turn it acts on recorded requests, reaps every worker that exited (``waitpid`` on its
own pids only, so no zombie stays and no unrelated child's status is stolen), kills the
silent and the overdue, and starts workers until ``target`` are serving. The master never
accepts a connection; a busy master therefore cannot slow requests down, and a dying
worker costs only its own in-flight requests.

Rules: a worker that exits before it is ready with ``EXIT_BOOT_FAILED`` stops the whole
server (``WorkerBootError``); any other unexpected exit is replaced after a back-off that
doubles while deaths keep coming. A worker asked to stop (graceful stop, rolling restart,
one fewer, its request budget spent) is not replaced unless the count falls short.

This module is the loop and the pool's rules; the parts it composes live beside it:
``actions.py`` (how signals and other threads reach the loop), ``status.py`` (hearing from
workers), ``deadlines.py`` (stopping and killing them), ``backoff.py`` (when a dead one is
replaced) and ``process.py`` (forking, signalling and reaping one).
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from ..dispatch.forking import open_pidfd
from ..errors import WorkerBootError
from ..metrics import DrainReport, ServerStats, combine
from .actions import SIGNAL_ACTIONS, ActionQueue
from .backoff import RestartBackoff
from .deadlines import WorkerDeadlines
from .process import WorkerProcess, describe_exit, fork_worker, reap, send_signal
from .status import StatusChannels
from .worker import BEATS_PER_TIMEOUT, EXIT_BOOT_FAILED, WorkerLink

log = logging.getLogger("sockserve.prefork")

#: The longest the master waits without looking: reaping still happens where no pidfd and
#: no pipe EOF announces an exit (a worker's own children may hold its pipe open).
MASTER_TICK_SECONDS = 1.0

#: After a status pipe reports EOF the exit is imminent: look every ``EXIT_POLL_SECONDS``
#: for up to ``EXIT_PENDING_SECONDS`` (where no pidfd announces it).
EXIT_POLL_SECONDS = 0.01
EXIT_PENDING_SECONDS = 1.0


@dataclass(frozen=True)
class Settings:
    """The mixin's settings, checked at construction and fixed for one run."""

    workers: int
    worker_timeout: float | None  #: None: heartbeats are not checked
    graceful_timeout: float
    max_requests: int
    max_requests_jitter: int


@dataclass(frozen=True)
class MasterTask:
    """A callable the master loop runs every turn; the loop turns at least every
    ``interval`` seconds while it is registered (see ``PreforkMixIn.add_master_task``)."""

    callback: Callable[[], None]
    interval: float


class Supervisor:
    """Runs the master loop for one ``serve_forever`` call.

    ``start_worker(link)`` runs in the forked child and never returns. ``on_ready()`` is
    called once, when the first worker is ready; ``on_hangup()`` on SIGHUP, on the loop's
    thread, before the rolling restart. ``tasks`` run on every turn of the loop (an
    exception is logged, the loop goes on). ``request(action)`` may be called from any
    thread or signal handler.
    """

    def __init__(
        self,
        settings: Settings,
        start_worker: Callable[[WorkerLink], NoReturn],
        *,
        on_ready: Callable[[], None] = lambda: None,
        tasks: tuple[MasterTask, ...] = (),
        on_hangup: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._tasks = tasks
        self._on_hangup = on_hangup
        self.target = settings.workers
        self._start_worker = start_worker
        self._workers: dict[int, WorkerProcess] = {}
        self._requests = ActionQueue()
        self._actions: dict[str, Callable[[], None]] = {
            "graceful_stop": self._begin_graceful_stop,
            "interrupt": self._interrupt,
            "fast_stop": self._begin_fast_stop,
            "rolling_restart": self._begin_rolling_restart,
            "hangup": self._hangup,
            "add_worker": self._add_worker,
            "remove_worker": self._remove_worker,
            "reopen_logs": self._reopen_logs,
        }
        self._deadlines = WorkerDeadlines(
            worker_timeout=settings.worker_timeout, graceful_timeout=settings.graceful_timeout
        )
        self._backoff = RestartBackoff()
        # Opened by run(), closed when it returns.
        self._master_gone_r = self._master_gone_w = -1
        self._selector = _Selector()
        self._status = StatusChannels(
            self._selector,
            stop_allowance=self._deadlines.stop_allowance,
            on_first_ready=on_ready,
            on_stats=self._stats_arrived,
        )
        self._generation = 0
        self._stopping = ""
        self._boot_error = ""
        self.thread_id = threading.get_ident()
        self.finished = threading.Event()
        # Counters of workers that have exited, so the master's stats() never go down;
        # the lock makes stats() from another thread see each worker exactly once.
        self._stats_lock = threading.Lock()
        self._stats_changed = threading.Condition(self._stats_lock)
        self._retired = ServerStats()
        self._drained: list[DrainReport] = []

    # -- for other threads and signal handlers -------------------------------------------

    def request(self, action: str) -> None:
        """Queue ``action`` and wake the loop. Lock-free: safe in a signal handler."""
        self._requests.request(action)

    def worker_pids(self) -> list[int]:
        return sorted(list(self._workers))

    def ready_count(self) -> int:
        """Workers that reported ready and were not asked to stop."""
        with self._stats_lock:
            return sum(1 for w in self._workers.values() if w.is_ready and not w.stop_reason)

    @property
    def is_stopping(self) -> bool:
        """True once a graceful or fast stop of the whole pool began."""
        return bool(self._stopping)

    def stats(self) -> ServerStats:
        """The workers' counters combined (``metrics.combine``), retired ones included.

        Each live worker counts as of its last report (``worker.STATS_INTERVAL_SECONDS``
        old at most, plus a loop turn); ``workers_alive`` is the worker processes alive.
        """
        with self._stats_lock:
            parts = [self._retired]
            parts += [w.stats for w in self._workers.values() if w.stats is not None]
            alive = len(self._workers)
        return replace(combine(parts), workers_alive=alive)

    def wait_for_stats(self, predicate: Callable[[ServerStats], bool], timeout: float) -> bool:
        """Wait until ``predicate(self.stats())`` holds, at most ``timeout`` s (tests)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.stats()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._stats_changed:
                self._stats_changed.wait(remaining)
        return True

    def _stats_arrived(self) -> None:
        with self._stats_changed:
            self._stats_changed.notify_all()

    def drain_report(self) -> tuple[int, int]:
        """``(finished, aborted)`` summed over the workers that stopped so far: their own
        drain reports, and for a worker killed before it could send one, its last
        ``active`` count as aborted."""
        with self._stats_lock:
            return (
                sum(r.finished for r in self._drained),
                sum(r.aborted for r in self._drained),
            )

    def set_graceful_timeout(self, seconds: float) -> None:
        """From another thread, before a graceful stop: the deadline the master enforces."""
        self._deadlines.graceful_timeout = seconds

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Supervise until stopped; raise ``WorkerBootError`` if a worker could not boot."""
        self._open()
        self._requests.install_signal_handlers()
        try:
            self._loop()
        except BaseException:
            self._stopping = "the master loop failed"
            self._kill_all_and_reap()
            raise
        finally:
            self._requests.restore_signal_handlers()
            self._close()
        if self._boot_error:
            raise WorkerBootError(self._boot_error)

    def _loop(self) -> None:
        log.info("master %d starting %d workers", os.getpid(), self.target)
        while True:
            for action in self._requests.take():
                self._actions[action]()
            self._reap()
            if self._boot_error and not self._stopping:
                self._begin_stop("a worker failed to boot", signal.SIGTERM)
            if self._stopping and not self._workers:
                return
            self._run_tasks()
            now = time.monotonic()
            self._deadlines.kill_overdue(self._workers.values(), now)
            if not self._stopping:
                self._balance(now)
            self._wait(self._next_timeout(now))

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            worker: WorkerProcess | None = key.data
            if worker is None:
                self._requests.clear_wakeups()
            elif key.fd == worker.channel:
                self._status.read(worker)
            # a readable pidfd needs nothing here: the worker is reaped next turn

    def _run_tasks(self) -> None:
        for task in self._tasks:
            try:
                task.callback()
            except Exception:
                log.exception("master task %r failed", task.callback)

    def _next_timeout(self, now: float) -> float:
        times = [MASTER_TICK_SECONDS, *(task.interval for task in self._tasks)]
        for worker in self._workers.values():
            if worker.kill_reason:
                continue  # SIGKILL is sent: its exit is all that is left to wait for
            due = self._deadlines.due_at(worker)
            if due is not None:
                times.append(due - now)
            if worker.eof_at is not None and now - worker.eof_at < EXIT_PENDING_SECONDS:
                times.append(EXIT_POLL_SECONDS)
        if not self._stopping and self._serving_count() < self.target:
            times.append(self._backoff.next_start_at - now)
        return max(0.0, min(times))

    # -- starting and balancing ------------------------------------------------------------

    def _serving(self, *, current: bool) -> list[WorkerProcess]:
        """Workers not asked to stop, of the current generation or of older ones, by age."""
        return [
            worker
            for worker in self._workers.values()
            if not worker.stop_reason and (worker.generation == self._generation) == current
        ]

    def _serving_count(self) -> int:
        return len(self._serving(current=True))

    def _balance(self, now: float) -> None:
        current = self._serving(current=True)
        old = self._serving(current=False)
        # Rolling restart: each ready new worker lets one old worker go.
        ready = sum(1 for worker in current if worker.is_ready)
        for worker in old[: max(0, ready + len(old) - self.target)]:
            self._deadlines.ask_to_stop(worker, "rolling restart", signal.SIGTERM, now)
        # One fewer: the oldest goes.
        for worker in current[: max(0, len(current) - self.target)]:
            self._deadlines.ask_to_stop(worker, "one worker fewer", signal.SIGTERM, now)
        missing = self.target - len(current)
        if missing > 0 and now >= self._backoff.next_start_at:
            for _ in range(missing):
                self._spawn(now)

    def _spawn(self, now: float) -> None:
        settings = self.settings
        limit = settings.max_requests
        if limit:
            limit += random.randint(0, settings.max_requests_jitter)
        link = WorkerLink(
            status_fd=-1,  # fork_worker fills in the pipe and the signal mask
            master_gone_fd=self._master_gone_r,
            master_pid=os.getpid(),
            request_limit=limit,
            beat_interval=(
                settings.worker_timeout / BEATS_PER_TIMEOUT if settings.worker_timeout else None
            ),
            stop_timeout=settings.graceful_timeout,
            signal_mask=frozenset(),
        )
        try:
            pid, channel = fork_worker(
                self._start_worker,
                link,
                close_in_child=self._private_descriptors(),
                block_signals={*SIGNAL_ACTIONS, signal.SIGTERM, signal.SIGQUIT},
            )
        except OSError:
            log.exception("cannot fork a worker")
            self._backoff.record_failure(now)
            return
        worker = WorkerProcess(
            pid=pid,
            channel=channel,
            pidfd=open_pidfd(pid),
            generation=self._generation,
            last_seen=now,
        )
        with self._stats_lock:
            self._workers[pid] = worker
        self._status.watch(worker)
        log.debug("started worker %d", pid)

    def _private_descriptors(self) -> list[int | socket.socket]:
        """What a new worker must not inherit: the wake-up, the others' pipes and pidfds."""
        fds: list[int | socket.socket] = [self._master_gone_w, *self._requests.wake_sockets()]
        for worker in self._workers.values():
            if worker.is_channel_open:  # a closed one's number may be reused by now
                fds.append(worker.channel)
            if worker.pidfd is not None:
                fds.append(worker.pidfd)
        return fds

    # -- reaping -------------------------------------------------------------------------

    def _reap(self) -> None:
        for worker in list(self._workers.values()):
            exit_code = reap(worker.pid)
            if exit_code is not None:
                self._forget(worker, exit_code)

    def _forget(self, worker: WorkerProcess, exit_code: int) -> None:
        self._status.release(worker)
        with self._stats_lock:
            del self._workers[worker.pid]
            last = worker.stats
            if last is not None:
                gone = replace(last, active=0, queue_depth=0, workers_alive=0)
                self._retired = combine([self._retired, gone])
            if worker.drained is not None:
                self._drained.append(worker.drained)
            elif last is not None and last.active:
                self._drained.append(DrainReport(finished=0, aborted=last.active, seconds=0))
        how = describe_exit(exit_code)
        if exit_code == EXIT_BOOT_FAILED and not worker.is_ready:
            reason = worker.boot_error or how
            log.error("worker %d failed to boot: %s", worker.pid, reason)
            if not self._boot_error:
                self._boot_error = (
                    f"prefork worker {worker.pid} failed to boot ({reason}); "
                    "stopped the server instead of restarting it"
                )
        elif worker.kill_reason and not worker.stop_reason:
            self._after_unexpected_exit()  # silent, hence killed: replace it
        elif worker.stop_reason:
            log.info("worker %d exited (%s, %s)", worker.pid, worker.stop_reason, how)
        elif self._stopping:
            log.info("worker %d exited (%s)", worker.pid, how)
        else:
            log.warning("worker %d ended unexpectedly (%s)", worker.pid, how)
            self._after_unexpected_exit()

    def _after_unexpected_exit(self) -> None:
        if self._stopping:
            return
        self._backoff.record_failure(time.monotonic())
        log.info("starting a replacement in %.1f s", self._backoff.delay)

    # -- the actions signals ask for -------------------------------------------------------

    def _begin_stop(self, reason: str, signum: int) -> None:
        self._stopping = reason
        now = time.monotonic()
        log.info("master %d: %s", os.getpid(), reason)
        self._deadlines.stop_all(self._workers.values(), reason, signum, now)

    def _begin_graceful_stop(self) -> None:
        if not self._stopping:
            self._begin_stop("graceful stop", signal.SIGTERM)

    def _begin_fast_stop(self) -> None:
        self._begin_stop("fast stop", signal.SIGQUIT)

    def _interrupt(self) -> None:
        if self._stopping:
            self._begin_fast_stop()
        else:
            self._begin_graceful_stop()

    def _begin_rolling_restart(self) -> None:
        if self._stopping:
            return
        self._generation += 1
        log.info("rolling restart: starting %d new workers", self.target)

    def _hangup(self) -> None:
        """SIGHUP: ``on_hangup`` (re-read what the workers are built from: the TLS
        files), then a rolling restart, so the new workers fork with what it read."""
        if self._stopping:
            return
        try:
            self._on_hangup()
        except Exception:
            log.exception("SIGHUP: reloading failed; restarting the workers as they were")
        self._begin_rolling_restart()

    def _add_worker(self) -> None:
        if not self._stopping:
            self.target += 1
            log.info("workers: %d → %d", self.target - 1, self.target)

    def _remove_worker(self) -> None:
        if self._stopping:
            return
        if self.target <= 1:
            log.warning("workers: staying at 1 (SIGTTOU cannot remove the last worker)")
            return
        self.target -= 1
        log.info("workers: %d → %d", self.target + 1, self.target)

    def _reopen_logs(self) -> None:
        """The workers write the access log: each reopens it before its next line."""
        for worker in list(self._workers.values()):
            send_signal(worker.pid, signal.SIGUSR1)

    # -- setting up and tearing down -----------------------------------------------------

    def _kill_all_and_reap(self) -> None:
        """The loop raised: take the workers down with it, so no orphan and no zombie."""
        for worker in list(self._workers.values()):
            send_signal(worker.pid, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            self._forget(worker, -signal.SIGKILL)

    def _open(self) -> None:
        self._selector.register(self._requests.open(), selectors.EVENT_READ, None)
        # Workers inherit the read end and close the write end: EOF there means we died.
        self._master_gone_r, self._master_gone_w = os.pipe()

    def _close(self) -> None:
        self._selector.close()
        self._requests.close()
        os.close(self._master_gone_r)
        os.close(self._master_gone_w)


_Selector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)
