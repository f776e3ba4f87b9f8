"""Pre-forking: a master process keeps ``workers`` whole serve loops running in children.

``class S(PreforkMixIn, TCPServer)`` is N single-threaded processes on one listening
socket; ``class S(PreforkMixIn, ThreadingMixIn, TCPServer)`` is N processes of threads.
This is not a per-connection strategy (``ForkingMixIn`` is one): each worker runs the
ordinary loop of the next class in the MRO for its whole life. ``master.py`` supervises,
``worker.py`` is the child's side; this module is the facade that wires them to a server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn

# Modules, not names: only what ``__all__`` lists is public here.
from .. import errors, metrics, servers, sockets
from ..admission import tls_prelude
from ..errors import WorkerBootError
from ..listener_stop import backlog_bound as _backlog_bound
from . import master, worker

__all__ = [
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_WORKER_TIMEOUT",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "WorkerBootError",
    "default_worker_count",
]

#: Seconds a worker may go without a heartbeat before it is killed (gunicorn's default).
DEFAULT_WORKER_TIMEOUT = 30.0
#: Seconds in-flight requests get after a graceful stop (gunicorn's default too).
DEFAULT_GRACEFUL_TIMEOUT = 30.0


def default_worker_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13
    if counter is not None:
        return int(counter() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class PreforkMixIn:
    """Serve from ``workers`` forked processes, supervised by the process that forked them.

    Methods for the caller (in the master):

    - ``serve_forever(poll_interval=0.5)``: start the workers and supervise them until
      ``shutdown()``, SIGTERM or SIGINT (graceful) or SIGQUIT (fast). ``poll_interval``
      paces each worker's ``service_actions()``. Raises ``WorkerBootError`` if a worker
      fails before it is ready, after stopping the others.
    - ``shutdown()``: graceful stop, from another thread (waits) or a signal handler.
    - ``worker_pids()``: the pids of the live workers; ``workers_ready()``: how many of
      them serve (reported ready, not asked to stop).
    - ``add_master_task(callback, interval=)``: run ``callback()`` on the master's loop
      every turn, at least every ``interval`` seconds, while it supervises (the command
      pings systemd's watchdog this way, so a ping proves the master loop turns).
    - ``draining``: in the master, True once the pool's graceful or fast stop began.
    - ``handle_request()``: serves one request in the calling process, with no workers,
      exactly as the next class in the MRO would (handy in tests and one-shot tools).

    Methods that may be overridden:

    - ``worker_init()``: runs in each worker after fork, before it serves: open
      per-process resources here (database connections, a fresh random seed). An
      exception here is a boot failure.
    - Every ``socketserver`` hook: they run in the workers, as in any server.

    Class attributes, also constructor keywords: ``workers`` (default: the usable CPUs),
    ``worker_timeout`` (seconds without a heartbeat before a worker is killed; None or 0:
    never), ``graceful_timeout`` (seconds in-flight requests get on a graceful stop),
    ``max_requests`` (recycle a worker after that many requests; 0: never) and
    ``max_requests_jitter`` (add up to that many, per worker, so they do not all recycle
    at once), ``reuse_port`` (each worker binds its own ``SO_REUSEPORT`` socket and the
    kernel spreads connections; IP servers only).

    Signals (master): TERM, INT graceful stop (a second INT: fast); QUIT fast stop; HUP
    re-read the TLS files (if ``ssl_context`` came from files) and restart the workers
    one generation at a time; TTIN one worker more; TTOU one fewer. Handlers are installed only when
    ``serve_forever`` runs on the main thread, and the previous ones restored after.

    Resource handling: in ``serve_forever`` the master never accepts on its socket; the
    workers share it (or, with ``reuse_port``, each has its own). Every worker is reaped
    before ``serve_forever`` returns, and workers stop on their own if the master dies.
    """

    workers: int | None = None
    worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    max_requests: int = 0
    max_requests_jitter: int = 0
    reuse_port: bool = False

    def __init__(
        self,
        *args: Any,
        workers: int | None = None,
        worker_timeout: float | None = None,
        graceful_timeout: float | None = None,
        max_requests: int | None = None,
        max_requests_jitter: int | None = None,
        reuse_port: bool | None = None,
        **kwargs: Any,
    ) -> None:
        given = {
            "workers": workers,
            "worker_timeout": worker_timeout,
            "graceful_timeout": graceful_timeout,
            "max_requests": max_requests,
            "max_requests_jitter": max_requests_jitter,
            "reuse_port": reuse_port,
        }
        for name, value in given.items():
            if value is not None:
                setattr(self, name, value)
        self._supervisor: master.Supervisor | None = None
        self._last_master_stats: Any = None  # the last serve_forever's final stats()
        self._is_prefork_worker = False
        self._stop_pending = False
        self._listener_spec: tuple[Any, ...] | None = None
        self._master_tasks: list[master.MasterTask] = []
        super().__init__(*args, **kwargs)

    # -- construction ---------------------------------------------------------------------

    def _check_settings(self) -> None:
        if not hasattr(os, "fork"):
            raise errors.ConfigurationError(
                f"{type(self).__name__} needs os.fork(), which {os.name!r} does not have"
            )
        if self.workers is None:
            self.workers = default_worker_count()
        _require_number("workers", self.workers, least=1, integer=True)
        if self.worker_timeout is not None:
            _require_number("worker_timeout", self.worker_timeout, least=0)
        _require_number("graceful_timeout", self.graceful_timeout, least=0)
        _require_number("max_requests", self.max_requests, least=0, integer=True)
        _require_number("max_requests_jitter", self.max_requests_jitter, least=0, integer=True)
        if self.reuse_port:
            family = getattr(self, "address_family", None)
            if not hasattr(socket, "SO_REUSEPORT") or family == getattr(socket, "AF_UNIX", -1):
                raise errors.ConfigurationError(
                    "reuse_port needs an IP server on a platform with SO_REUSEPORT"
                )
            server: Any = self
            server.allow_reuse_port = True  # the master's bind must allow the workers' binds
        super()._check_settings()  # type: ignore[misc]

    def server_activate(self) -> None:
        """Listen, except in a ``reuse_port`` master: the port is held, the workers listen."""
        if self.reuse_port and not self._is_prefork_worker:
            return
        super().server_activate()  # type: ignore[misc]

    # -- the master -------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the workers and supervise them until stopped (see the class docstring)."""
        if self._is_prefork_worker:
            super().serve_forever(poll_interval)  # type: ignore[misc]
            return
        if self._supervisor is not None:
            raise RuntimeError("serve_forever() is already running for this server")
        timeout = self.worker_timeout or None
        settings = master.Settings(
            workers=int(self.workers or 1),
            worker_timeout=timeout,
            graceful_timeout=float(self.graceful_timeout),
            max_requests=int(self.max_requests),
            max_requests_jitter=int(self.max_requests_jitter),
        )
        if self.reuse_port and self._listener_spec is None:
            self._listener_spec = _listener_spec(self._listener())
        supervisor = master.Supervisor(
            settings,
            partial(self._become_worker, poll_interval=poll_interval),
            on_ready=self._on_first_worker_ready,
            tasks=tuple(self._master_tasks),
            on_hangup=self._reload_tls_files,
        )
        self._supervisor = supervisor
        try:
            if not self._stop_pending:  # else shutdown() came first: return at once
                supervisor.run()
        finally:
            self._last_master_stats = self._with_shared_socket_drops(supervisor.stats())
            self._supervisor = None
            self._stop_pending = False
            supervisor.finished.set()

    def shutdown(self) -> None:
        """Stop gracefully: from another thread, wait until every worker has exited."""
        if self._is_prefork_worker:
            super().shutdown()  # type: ignore[misc]
            return
        # No lock (a signal handler may call this): a flag first, then the supervisor.
        self._stop_pending = True
        supervisor = self._supervisor
        if supervisor is None:
            return
        supervisor.request("graceful_stop")
        if threading.get_ident() != supervisor.thread_id:
            supervisor.finished.wait()

    def stats(self) -> Any:
        """In the master: every worker's counters combined (see ``Supervisor.stats`` and
        ``metrics.combine`` for each field's rule); in a worker, its own."""
        if self._is_prefork_worker:
            return super().stats()  # type: ignore[misc]
        supervisor = self._supervisor
        if supervisor is not None:
            return self._with_shared_socket_drops(supervisor.stats())
        if self._last_master_stats is not None:
            return self._last_master_stats
        return super().stats()  # type: ignore[misc]

    def _with_shared_socket_drops(self, combined: Any) -> Any:
        """The workers' sum, with the kernel's drops on the shared datagram socket read
        here once (each worker reports 0 for it: summing their readings would count
        every drop once per worker). ``reuse_port`` workers count their own sockets."""
        listener = self._listener()
        if self.reuse_port or listener.type != socket.SOCK_DGRAM or listener.fileno() < 0:
            return combined
        return replace(combined, kernel_drops=sockets.kernel_drops(listener))

    def drain(self, timeout: float) -> Any:
        """In the master: stop listening, drain every worker within ``timeout``, return
        their summed ``DrainReport``; in a worker (or with no workers), a plain drain.

        Each worker drains with its own ``graceful_timeout``; the master kills the ones
        still running ``timeout`` + ``worker.STOP_GRACE_SECONDS`` after the drain began,
        and counts their last in-flight requests as aborted.
        """
        supervisor = self._supervisor
        if self._is_prefork_worker or supervisor is None:
            return super().drain(timeout)  # type: ignore[misc]
        if timeout < 0:
            raise errors.ConfigurationError(f"drain timeout must be >= 0, got {timeout!r}")
        started = time.monotonic()
        server: Any = self
        server._core.is_draining = True
        # The master's copy of the listening socket: closed now, so the port stops
        # listening as soon as the workers have closed theirs.
        self._listener().close()
        supervisor.set_graceful_timeout(timeout)
        self._stop_pending = True
        supervisor.request("graceful_stop")
        if threading.get_ident() != supervisor.thread_id:
            supervisor.finished.wait()
        finished, aborted = supervisor.drain_report()
        return metrics.DrainReport(
            finished=finished, aborted=aborted, seconds=time.monotonic() - started
        )

    def reload_tls(self, context: Any = None) -> Any:
        """New connections get ``context`` (or one rebuilt from the files), in every worker.

        In the master the new context is installed here (bad files raise, and nothing
        changes), then a rolling restart replaces the workers, which fork with it;
        connections the old workers serve finish under their ``graceful_timeout``. A
        worker's own call (or a master not serving) only swaps its context.
        """
        installed = super().reload_tls(context)  # type: ignore[misc]
        supervisor = self._supervisor
        if not self._is_prefork_worker and supervisor is not None:
            supervisor.request("rolling_restart")
        return installed

    def _reload_tls_files(self) -> None:
        """SIGHUP in the master: re-read the TLS files, if the context came from files."""
        holder = tls_prelude.tls_holder(self)
        if holder is not None and holder.settings is not None:
            holder.reload_from_files()
            master.log.info(
                "SIGHUP: reloaded the TLS certificate from %s", holder.settings.certfile
            )

    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (empty unless ``serve_forever`` runs)."""
        supervisor = self._supervisor
        return [] if supervisor is None else supervisor.worker_pids()

    def workers_ready(self) -> int:
        """Workers serving now: ready, and not asked to stop (0 unless supervising)."""
        supervisor = self._supervisor
        return 0 if supervisor is None else supervisor.ready_count()

    def add_master_task(self, callback: Callable[[], None], *, interval: float) -> None:
        """Run ``callback()`` on the master loop every turn, at least every ``interval``
        seconds, from the next ``serve_forever`` on; an exception is logged, not raised."""
        if self._is_prefork_worker:
            raise RuntimeError("add_master_task() is for the master, not a worker")
        _require_number("interval", interval, least=0)
        if interval <= 0:
            raise errors.ConfigurationError(f"interval must be > 0, got {interval!r}")
        self._master_tasks.append(master.MasterTask(callback, float(interval)))

    @property
    def draining(self) -> bool:
        """True once a drain began: in the master, the pool's stop; in a worker, its own."""
        supervisor = self._supervisor
        if not self._is_prefork_worker and supervisor is not None and supervisor.is_stopping:
            return True
        return bool(super().draining)  # type: ignore[misc]

    def _listener(self) -> socket.socket:
        server: Any = self
        sock: socket.socket = server.socket
        return sock

    def _on_first_worker_ready(self) -> None:
        # A reuse_port datagram socket in the master would receive its share of the
        # traffic and never read it; once a worker holds the port, let it go.
        listener = self._listener()
        if self.reuse_port and listener.type == socket.SOCK_DGRAM:
            listener.close()

    # -- the worker -----------------------------------------------------------------------

    def _become_worker(self, link: worker.WorkerLink, *, poll_interval: float) -> NoReturn:
        self._is_prefork_worker = True
        self._supervisor = None
        serve = super().serve_forever  # type: ignore[misc]
        worker.run_worker(
            self,
            link,
            boot=self._boot_worker,
            serve=serve,
            after_loop=self._take_private_backlog,
            poll_interval=poll_interval,
        )

    def _boot_worker(self) -> None:
        server: Any = self
        server._listener_is_shared = not self.reuse_port
        if self.reuse_port:
            assert self._listener_spec is not None
            inherited = server.socket
            server.socket = _open_like(self._listener_spec)
            inherited.close()
            server.server_bind()
            server.server_activate()
        self.worker_init()

    def _take_private_backlog(self) -> None:
        """Serve what the kernel queued on this worker's own ``reuse_port`` socket.

        Closing a listening socket resets the connections queued on it; on a shared
        socket the other workers take them, on a private one nobody would.
        """
        listener = self._listener()
        server: Any = self
        if not self.reuse_port or listener.type != socket.SOCK_STREAM:
            return
        if server._serve_loop is None or listener.fileno() < 0:
            return  # the async mode's drain took it; or the drain closed the listener
        for _ in range(_backlog_bound(server)):
            if not server._handle_request_noblock():
                break

    def worker_init(self) -> None:
        """Called in each worker before it serves; an exception is a boot failure."""


class PreforkTCPServer(PreforkMixIn, servers.TCPServer):
    """TCP, served by pre-forked worker processes."""


class PreforkUDPServer(PreforkMixIn, servers.UDPServer):
    """UDP, served by pre-forked worker processes."""


if hasattr(socket, "AF_UNIX"):

    class PreforkUnixStreamServer(PreforkMixIn, servers.UnixStreamServer):
        """A Unix stream socket, served by pre-forked worker processes."""

    __all__ += ["PreforkUnixStreamServer"]


def _require_number(name: str, value: object, *, least: int, integer: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
        or value < least
    ):
        kind = "an int" if integer else "a number"
        raise errors.ConfigurationError(f"{name} must be {kind} >= {least}, got {value!r}")


def _listener_spec(sock: socket.socket) -> tuple[Any, ...]:
    """How to open another socket like ``sock``: class, family, type, proto, V6ONLY."""
    v6only = None
    if sock.family == getattr(socket, "AF_INET6", None):
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    return type(sock), sock.family, sock.type, sock.proto, v6only


def _open_like(spec: tuple[Any, ...]) -> socket.socket:
    cls, family, sock_type, proto, v6only = spec
    sock: socket.socket = cls(family, sock_type, proto)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    return sock
