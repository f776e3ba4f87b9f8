"""Concurrency mixins: each one only picks a dispatch strategy for ``process_request``.

Mixin order is part of the stdlib contract: ``class S(ThreadingMixIn, TCPServer)`` puts
the mixin's ``process_request`` and ``server_close`` in front of the server's.
"""

from __future__ import annotations

import os
import signal
import socket
from functools import partial
from typing import Any

from .dispatch import ForkPerRequest, ThreadPerRequest, ThreadPool
from .errors import ConfigurationError
from .policy import ServerPolicy
from .serving.job import RequestJob, outcome_of_exit, serve_and_close

#: Thread-pool defaults. Each worker serves one connection at a time, so the worker count
#: is the number of clients served at once; 64 covers a busy small service while keeping
#: memory bounded (a Python thread costs about 8 MiB of address space, ~64 KiB resident).
DEFAULT_MAX_WORKERS = 64
#: Accepted requests allowed to wait for a worker before the loop stops accepting.
DEFAULT_MAX_PENDING = 256


def _claim(server: Any, request: Any, client_address: Any) -> RequestJob:
    """The job the loop handed over with ``request`` (see ``serving/job.py``)."""
    job: RequestJob = server._core.claim(server, request, client_address)
    return job


def _replies_use_listener(server: Any) -> bool:
    """Datagram handlers reply through the server's own socket.

    Their threads must finish before that socket closes, or the replies still in flight
    fail with EBADF; stream handlers own their connection, so the listener closes first
    (no new clients queue up while the last requests finish).
    """
    listener = getattr(server, "socket", None)
    return isinstance(listener, socket.socket) and listener.type == socket.SOCK_DGRAM


def _pool_of(server: Any, size: int) -> ThreadPool:
    pool: ThreadPool | None = vars(server).get("_thread_pool")
    if pool is None:
        pool = vars(server).setdefault("_thread_pool", ThreadPool(size))
    return pool


def _submit_to_pool(server: Any, pool: ThreadPool, request: Any, client_address: Any) -> None:
    """Queue the request for the next free worker.

    The worker serves, and closes only once it counts as idle again: the close lets
    the client send its next connection, which should find the worker free.
    """
    job = _claim(server, request, client_address)
    try:
        pool.submit(
            partial(job.serve, close=False),
            daemon=server.daemon_threads,
            then=job.close_and_finish,
        )
    except BaseException:
        job.finish()
        raise


def _pool_stats(server: Any) -> tuple[int, int]:
    pool: ThreadPool | None = vars(server).get("_thread_pool")
    return (0, 0) if pool is None else (pool.queue_depth, pool.workers_alive)


def _close_pool(server: Any) -> None:
    pool: ThreadPool | None = vars(server).get("_thread_pool")
    if pool is not None:
        pool.close(wait=server.block_on_close and not server.daemon_threads)


def _pooled_capacity(limit: int | None, what: str, pool_capacity: int) -> tuple[int | None, str]:
    if limit is None or pool_capacity < limit:
        return pool_capacity, "pool_full"
    return limit, what


class ThreadingMixIn:
    """Serve each request on a new thread.

    ``daemon_threads``: threads do not keep the process alive (and are not waited for).
    ``block_on_close``: ``server_close()`` waits for the non-daemon request threads.
    Bookkeeping holds live threads only; nothing bounds how many run at once, unless
    ``max_threads`` (sockserve's; default None) is set: then requests run on a pool of
    that many threads, exactly as ``ThreadPoolMixIn(max_workers=max_threads)`` runs
    them. ``sockserve run --mode pool --threads N`` sets it on a program's servers
    (``policy.py``), so code written for the stdlib gets a bound without a change.
    """

    daemon_threads = False
    block_on_close = True
    max_threads: int | None = None

    def _apply_policy(self, policy: ServerPolicy) -> None:
        if policy.max_threads is not None:
            self.max_threads = policy.max_threads
        super()._apply_policy(policy)  # type: ignore[misc]

    def _check_settings(self) -> None:
        value = self.max_threads
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigurationError(f"max_threads must be None or an int >= 1, got {value!r}")
        super()._check_settings()  # type: ignore[misc]

    @property
    def _threads(self) -> ThreadPerRequest:
        """The strategy object (it also offers the stdlib's ``_threads`` list surface)."""
        threads: ThreadPerRequest | None = vars(self).get("_thread_per_request")
        if threads is None:
            threads = vars(self).setdefault("_thread_per_request", ThreadPerRequest())
        return threads

    _dispatches_off_loop = True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Runs on the request's thread: the handler, then error handling and closing."""
        serve_and_close(self, request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the request (or, with ``max_threads``, queue it for the pool)."""
        if self.max_threads is not None:
            _submit_to_pool(self, _pool_of(self, self.max_threads), request, client_address)
            return
        job = _claim(self, request, client_address)
        try:
            self._threads.submit(
                partial(job.run_with, self.process_request_thread),
                daemon=self.daemon_threads,
                track=self.block_on_close and not self.daemon_threads,
            )
        except BaseException:
            job.finish()
            raise

    def _capacity(self) -> tuple[int | None, str]:
        limit, what = super()._capacity()  # type: ignore[misc]
        if self.max_threads is None:
            return limit, what
        return _pooled_capacity(limit, what, self.max_threads + DEFAULT_MAX_PENDING)

    def _dispatch_stats(self) -> tuple[int, int]:
        if self.max_threads is not None:
            return _pool_stats(self)
        return 0, len(self._threads)

    def server_close(self) -> None:
        if _replies_use_listener(self):
            self._join_request_threads()
            super().server_close()  # type: ignore[misc]
        else:
            super().server_close()  # type: ignore[misc]
            self._join_request_threads()

    def _join_request_threads(self) -> None:
        self._threads.join()
        _close_pool(self)


class ThreadPoolMixIn:
    """Serve requests on a bounded pool of long-lived worker threads.

    ``max_workers``: the most threads that ever run handlers (default 64).
    ``max_pending``: accepted requests that may wait for a free worker (default 256).
    With ``max_workers + max_pending`` requests in flight the server is at capacity and
    ``overload_policy`` applies: ``"wait"`` stops accepting (clients wait in the kernel
    backlog), ``"reject"`` accepts, calls ``handle_overload`` and closes. Both may be
    given as keywords to the constructor. ``daemon_threads`` and ``block_on_close``
    mean what they mean for ``ThreadingMixIn``.
    """

    max_workers: int = DEFAULT_MAX_WORKERS
    max_pending: int = DEFAULT_MAX_PENDING
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        *args: Any,
        max_workers: int | None = None,
        max_pending: int | None = None,
        **kwargs: Any,
    ) -> None:
        if max_workers is not None:
            self.max_workers = max_workers
        if max_pending is not None:
            self.max_pending = max_pending
        super().__init__(*args, **kwargs)

    def _check_settings(self) -> None:
        for name in ("max_workers", "max_pending"):
            value = getattr(self, name)
            least = 1 if name == "max_workers" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigurationError(f"{name} must be an int >= {least}, got {value!r}")
        super()._check_settings()  # type: ignore[misc]

    @property
    def _pool(self) -> ThreadPool:
        return _pool_of(self, self.max_workers)

    def _capacity(self) -> tuple[int | None, str]:
        limit, what = super()._capacity()  # type: ignore[misc]
        return _pooled_capacity(limit, what, self.max_workers + self.max_pending)

    _dispatches_off_loop = True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the request for the next free worker (see ``_submit_to_pool``)."""
        _submit_to_pool(self, self._pool, request, client_address)

    def _dispatch_stats(self) -> tuple[int, int]:
        return _pool_stats(self)

    def server_close(self) -> None:
        if _replies_use_listener(self):
            _close_pool(self)
            super().server_close()  # type: ignore[misc]
        else:
            super().server_close()  # type: ignore[misc]
            _close_pool(self)


if hasattr(os, "fork"):

    class ForkingMixIn:
        """Serve each request in a forked child process.

        ``max_children``: at most that many children at once (the loop waits for one to
        exit). ``block_on_close``: ``server_close()`` waits for all children.
        ``active_children`` is the set of live child pids (None before the first fork).
        Children are reaped every loop turn and before each fork.
        """

        timeout: float | None = 300
        max_children = 40
        block_on_close = True

        @property
        def _forks(self) -> ForkPerRequest:
            forks: ForkPerRequest | None = vars(self).get("_fork_per_request")
            if forks is None:
                forks = vars(self).setdefault("_fork_per_request", ForkPerRequest())
            return forks

        @property
        def active_children(self) -> set[int] | None:
            if "_fork_per_request" not in vars(self):
                return None
            return self._forks.children

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap finished children; first wait while ``max_children`` are alive."""
            self._forks.reap(blocking=blocking, keep_below=self.max_children)

        def handle_timeout(self) -> None:
            """Reap children while waiting for requests."""
            self.collect_children()

        def service_actions(self) -> None:
            """Reap children every loop turn."""
            self.collect_children()

        _dispatches_off_loop = True

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a child for the request; the parent only closes its copy."""
            self.collect_children()
            server: Any = self
            job = _claim(server, request, client_address)
            try:
                pid = self._forks.submit(
                    partial(self._serve_in_child, job),
                    in_parent=partial(server.close_request, request),
                    on_exit=partial(self._child_exited, job),
                )
            except BaseException:
                job.finish()
                raise
            ticket = job.ticket
            ticket.aborter = partial(os.kill, pid, signal.SIGKILL)
            exit_fd = self._forks.exit_descriptor(pid)
            if exit_fd is not None:
                # Reap the moment the child exits, not at the next poll interval.
                ticket.exit_fd = exit_fd
                server._serve_loop.watch(exit_fd, partial(self._forks.reap_child, pid))

        def _child_exited(self, job: RequestJob, exit_code: int) -> None:
            server: Any = self
            if job.ticket.exit_fd is not None:
                server._serve_loop.unwatch(job.ticket.exit_fd)
            outcome = outcome_of_exit(exit_code)  # None: a signal (a drain's abort)
            if outcome is not None:
                server._core.count_outcome(outcome)
                # What the parent can know: the child closed the connection, so the bytes
                # it carried are unknown here (the access log says "-").
                job.ticket.outcome = outcome
            else:
                job.ticket.was_aborted = True
            job.finish()

        def _reap_finished_work(self) -> None:
            self._forks.reap()
            super()._reap_finished_work()  # type: ignore[misc]

        def _dispatch_stats(self) -> tuple[int, int]:
            return 0, len(self._forks.children)

        def _serve_in_child(self, job: RequestJob) -> int:
            server: Any = self
            listener = getattr(server, "socket", None)
            if isinstance(listener, socket.socket) and listener.type == socket.SOCK_STREAM:
                # The child serves one connection; holding the listening socket would keep
                # the port bound after the parent closes it.
                listener.close()
            return job.run_in_child()

        def server_close(self) -> None:
            super().server_close()  # type: ignore[misc]
            self.collect_children(blocking=self.block_on_close)
