"""The async serve loop: one event loop, its listener, and one task per request.

How it works
    ``serve()`` watches the listening socket with ``loop.add_reader``. When it is
    readable, up to ``ACCEPT_BATCH`` requests are taken with ``server.get_request()``,
    and each goes through the serving core (``serving/core.py``: peer checks, preludes,
    client checks, capacity), the same as in the synchronous modes, and becomes a task
    running ``connections.serve_stream`` (or ``serve_datagram``) with its
    ``RequestJob``, which the task's end finishes.
    The listener is watched only while the server may accept: it is taken out at
    capacity under ``overload_policy = "wait"`` (clients wait in the kernel's backlog),
    during an accept back-off (``listeners.py`` names the errno policy), and when stopping.

Stopping
    ``shutdown()`` from another thread posts a wake-up with ``call_soon_threadsafe`` and
    waits for ``serve()`` to return; from the loop's own thread (a handler) it only asks.
    On its way out ``serve()`` stops accepting, cancels the requests still running (each
    one's ``finish()`` runs and its connection is closed) and waits for them, at most
    ``ABORT_GRACE_SECONDS``. ``drain()`` does the same after letting them finish until its
    deadline.

Threads
    Everything here runs on the loop's thread except ``shutdown()`` and ``drain()``, which
    only post work to the loop, and the watchdog (``watchdog.py``), which only reads.
    The stdlib's ``_BaseServer__shutdown_request`` flag and ``_BaseServer__is_shut_down``
    event keep their meaning, as in the synchronous loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import socket
import threading
import time
from functools import partial
from typing import Any

from ..addresses import format_address
from ..admission.checks import Refused
from ..listener_stop import backlog_bound, refuse_new_connections
from ..listeners import TRANSIENT_ACCEPT_ERRNOS
from ..metrics import DrainReport
from ..serving.core import ServingCore
from ..serving.job import RequestJob
from ..serving.loop_threads import STOP_FLAG, STOPPED_EVENT
from ..serving.selector_loop import ABORT_GRACE_SECONDS, ACCEPT_BATCH
from .connections import serve_datagram, serve_stream
from .datagrams import DatagramSender
from .opening import begin_stream
from .preludes import run_preludes
from .streams import receive_buffer
from .watchdog import LoopWatchdog

log = logging.getLogger("sockserve.aio.serve_loop")


class AsyncServeLoop:
    """Runtime state of one async server: its loop, listener, requests and counters."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core
        self.limiter = core.limiter
        core.wake_loop = self._room_freed
        self._in_preludes: set[asyncio.Task[Any]] = set()  # connections in their preludes
        self._last_drain: DrainReport | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._server: Any = None
        self._wake_up: asyncio.Future[None] | None = None
        self._requests: dict[asyncio.Task[None], RequestJob] = {}
        self._listener_fd = -1
        self._is_stream = True
        self._is_listening = False
        self._is_stopping = True
        self._is_draining = False
        self._back_off_timer: asyncio.TimerHandle | None = None
        self._receive_view = memoryview(b"")
        self._sender: DatagramSender | None = None

    # -- serve / shutdown ----------------------------------------------------------------

    async def serve(self, server: Any, poll_interval: float | None) -> None:
        """Serve until shutdown(); ``service_actions()`` every ``poll_interval`` s."""
        loop = asyncio.get_running_loop()
        if not self._enter(server, loop):
            return
        watchdog = None
        try:
            self._prepare(server, loop)
            self._is_stopping = False
            self._update_listener()
            if server.slow_callback_duration:
                watchdog = LoopWatchdog(loop, server.slow_callback_duration, self._describe)
                watchdog.start()
            assert self._wake_up is not None
            while not getattr(server, STOP_FLAG):
                await asyncio.wait((self._wake_up,), timeout=poll_interval)
                if getattr(server, STOP_FLAG):
                    break
                self.core.tick()
                server.service_actions()
        finally:
            try:
                await self._stop_serving()
            finally:
                if watchdog is not None:
                    watchdog.stop()
                self._leave(server)

    def shutdown(self, server: Any) -> None:
        """Stop ``serve()``; wait for it unless called on the loop's own thread."""
        with self._lock:
            setattr(server, STOP_FLAG, True)
            loop, loop_thread = self._loop, self._loop_thread
        if loop is None:
            return  # not serving: the next serve() returns at once, as in the stdlib
        if loop_thread == threading.get_ident():
            self._wake()
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the loop has closed: serve() is on its way out anyway
        getattr(server, STOPPED_EVENT).wait()

    def ask_to_stop(self, server: Any, drain_timeout: float | None) -> None:
        """From any thread or a signal handler: stop (after a drain) without waiting."""
        with self._lock:
            loop = self._loop
            if loop is None or drain_timeout is None:
                setattr(server, STOP_FLAG, True)
        if loop is None:
            return
        action = self._wake if drain_timeout is None else partial(self._start_drain, drain_timeout)
        try:
            loop.call_soon_threadsafe(action)
        except RuntimeError:
            pass  # the loop has closed: serve() is on its way out anyway

    def _start_drain(self, timeout: float) -> None:
        server = self._server
        if server is not None and not self._is_draining and not self._is_stopping:
            assert self._loop is not None
            # The queue is taken and the listener closed now, not in the drain task's
            # first step a loop turn later: meanwhile a request accepted before the stop
            # could be served and its client queue its next connection, which a
            # pre-fork worker past its max_requests would then serve too.
            self._stop_accepting_for_drain()
            self._loop.create_task(self.drain_async(server, timeout))

    def _enter(self, server: Any, loop: asyncio.AbstractEventLoop) -> bool:
        with self._lock:
            if self._loop is not None:
                raise RuntimeError(
                    "this async server is already serving; it runs one event loop "
                    "(for more cores, run one server per process)"
                )
            if getattr(server, STOP_FLAG):
                # shutdown() came before serve(): honour it, as the stdlib does.
                setattr(server, STOP_FLAG, False)
                getattr(server, STOPPED_EVENT).set()
                return False
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._wake_up = loop.create_future()
            getattr(server, STOPPED_EVENT).clear()
        return True

    def _leave(self, server: Any) -> None:
        with self._lock:
            self._loop = None
            self._loop_thread = None
            self._server = None
            setattr(server, STOP_FLAG, False)
            getattr(server, STOPPED_EVENT).set()

    def _wake(self) -> None:
        if self._wake_up is not None and not self._wake_up.done():
            self._wake_up.set_result(None)

    def _prepare(self, server: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        sock: socket.socket = server.socket
        self._listener_fd = sock.fileno()
        self._is_stream = sock.type == socket.SOCK_STREAM
        if self._is_stream:
            # The flag only: accept() then raises BlockingIOError instead of hanging, and
            # socket.gettimeout() keeps the user's value (the synchronous loop does this too).
            os.set_blocking(self._listener_fd, False)
            self._receive_view = receive_buffer()
        else:
            self._sender = DatagramSender(loop, sock)

    async def _stop_serving(self) -> None:
        self._is_stopping = True
        self._is_draining = False
        self._update_listener()
        if self._back_off_timer is not None:
            self._back_off_timer.cancel()
            self._back_off_timer = None
        running = [task for task in self._requests if task is not asyncio.current_task()]
        for task in running:
            task.cancel()
        if running:
            _, pending = await asyncio.wait(running, timeout=ABORT_GRACE_SECONDS)
            if pending:
                log.warning(
                    "%d request(s) ignored cancellation for %.1f s; leaving them to the loop",
                    len(pending),
                    ABORT_GRACE_SECONDS,
                )
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    # -- accepting -------------------------------------------------------------------------

    def _update_listener(self) -> None:
        """Watch the listener exactly while the server may take requests."""
        loop = self._loop
        if loop is None or self._listener_fd < 0:
            return
        is_wanted = self._may_accept()
        if is_wanted != self._is_listening:
            self._is_listening = is_wanted
            if is_wanted:
                loop.add_reader(self._listener_fd, self._on_readable)
            else:
                loop.remove_reader(self._listener_fd)

    def _room_freed(self) -> None:
        """A request finished. Freeing a slot can only make room, so a listener already
        watched stays so: only an open overload episode (whose end is logged) or an
        unwatched listener needs the full check, which cost 1 µs per connection."""
        if self._is_listening and not self.limiter.is_overloaded:
            return
        self._update_listener()

    def _may_accept(self) -> bool:
        server = self._server
        if self._is_stopping or self._is_draining or server is None:
            return False
        if getattr(server, STOP_FLAG):
            return False
        if self._back_off_timer is not None:
            return False
        if len(self._in_preludes) >= server.max_pending_preludes:
            return False
        capacity, what = server._capacity()
        has_room = self.limiter.has_room(capacity)
        policy = server.overload_policy
        self.limiter.note_capacity(not has_room, capacity, what, policy)
        return has_room or policy != "wait"

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._accept_one() is None or not self._may_accept():
                break
        self._update_listener()

    def _accept_one(self) -> asyncio.Task[None] | bool | None:
        """Take one request: its task, False if it was refused (or is in its preludes),
        None if none came."""
        server = self._server
        core = self.core
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            if isinstance(exc, BlockingIOError):
                core.backoff.record_empty_queue()
                return None
            if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
                return False  # that one connection failed; the next may be fine
            if core.on_accept_error(exc, server.server_address, is_serving=True):
                self._back_off()
            return None
        core.backoff.record_success(server.server_address)
        admitted = core.admit_peer(server, request, client_address)
        if admitted is None:
            return False
        request, client_address = admitted
        if not self._is_stream:
            request = (request[0], self._sender)
        elif core.preludes:
            self._start_preludes(request, client_address)
            return False
        return self._admit(request, client_address)

    def _start_preludes(self, request: Any, client_address: Any) -> None:
        """Run the preludes on the loop, then admit; counted against their own bound."""
        assert self._loop is not None
        task = self._loop.create_task(run_preludes(self.core.preludes, request, client_address))
        self._in_preludes.add(task)
        task.add_done_callback(partial(self._preludes_done, request, client_address))

    def _preludes_done(self, request: Any, client_address: Any, task: asyncio.Task[Any]) -> None:
        self._in_preludes.discard(task)
        server = self._server
        if task.cancelled() or server is None:
            request.close()
        else:
            exc = task.exception()
            if isinstance(exc, Refused):
                self.core.refuse(server, request, client_address, exc.reason, str(exc))
            elif exc is not None:
                log.error("a prelude failed for %s", format_address(client_address), exc_info=exc)
                request.close()
            else:
                request, client_address, details = task.result()
                # A drain serves what was accepted (the listener may be closed already,
                # and a balancer cannot retry a connection it saw succeed); a stop does not.
                if self._is_stopping:
                    self.core.refuse(server, request, client_address, "stopping", "stopping")
                else:
                    self._admit(request, client_address, details)
        self._update_listener()

    def _admit(
        self, request: Any, client_address: Any, details: dict[str, Any] | None = None
    ) -> asyncio.Task[None] | bool:
        server = self._server
        job = self.core.admit_client(server, request, client_address, details)
        if job is None:
            return False
        loop = self._loop
        assert loop is not None
        # The task's own context, given to serve_stream too: it resumes the handler in
        # it from the reader's callbacks (aio/inline.py).
        context = contextvars.copy_context()
        if self._is_stream:
            # Verified, and its transport begun, here: the task finds it ready (opening.py).
            opening = context.run(begin_stream, job, self._receive_view, loop)
            if opening is None:
                job.finish()  # ended here: refused or lost, reported and closed
                return False
            work = serve_stream(job, self._receive_view, context, loop, opening=opening)
        else:
            work = serve_datagram(job)
        task = loop.create_task(work, context=context)
        job.ticket.aborter = partial(_cancel, task)
        self._requests[task] = job
        task.add_done_callback(self._request_done)
        return task

    def _request_done(self, task: asyncio.Task[None]) -> None:
        job = self._requests.pop(task, None)
        if not task.cancelled():
            # serve_stream/serve_datagram report what handlers and peers do themselves;
            # an exception reaching here is sockserve's own fault: say so, loudly, once
            # (SystemExit and the like left the loop already).
            exc = task.exception()
            if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
                where = format_address(job.client_address) if job is not None else "?"
                log.error("internal error serving %s", where, exc_info=exc)
        elif job is not None:
            job.ticket.was_aborted = True  # shutdown() or a drain's deadline cancelled it
        if job is not None:
            job.finish()  # the core calls _room_freed: room for the next one

    def _back_off(self) -> None:
        assert self._loop is not None
        delay = self.core.backoff.delay
        self._back_off_timer = self._loop.call_later(delay, self._end_back_off)
        self._update_listener()

    def _end_back_off(self) -> None:
        self._back_off_timer = None
        if self._may_accept() and self._listener_fd >= 0:
            # Look once even if no client waits: an accept batch can end in EMFILE on an
            # empty queue (Linux allocates the descriptor first), and without a look the
            # episode would stay open until the next client, its "works again" line with it.
            self._on_readable()
        else:
            self._update_listener()

    def _describe(self, task: asyncio.Task[Any]) -> str | None:
        """For the watchdog (another thread): which handler and client a task serves."""
        job = self._requests.get(task)
        server = self._server
        if job is None or server is None:
            return None
        handler = server.RequestHandlerClass
        name = getattr(handler, "__qualname__", repr(handler))
        return f"handler {name} for {format_address(job.client_address)}"

    # -- handle_request ----------------------------------------------------------------

    async def handle_one(self, server: Any, timeout: float | None) -> Any:
        """Wait up to ``timeout`` for one request and serve it; else ``handle_timeout()``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("handle_request() while the server is serving")
            self._loop, self._loop_thread = loop, threading.get_ident()
        try:
            self._prepare(server, loop)
            readable = loop.create_future()
            loop.add_reader(self._listener_fd, _set_done, readable)
            try:
                await asyncio.wait_for(readable, timeout)
            except TimeoutError:
                return server.handle_timeout()
            finally:
                loop.remove_reader(self._listener_fd)
            task = self._accept_one()
            if isinstance(task, asyncio.Task):
                await asyncio.wait((task,))
            return None
        finally:
            if self._sender is not None:
                self._sender.close()
                self._sender = None
            with self._lock:
                self._loop = self._loop_thread = self._server = None

    # -- drain and stats ---------------------------------------------------------------

    def drain(self, server: Any, timeout: float) -> DrainReport:
        """From another thread: ``drain_async`` on the loop, then wait for serve() to end."""
        started = time.monotonic()
        with self._lock:
            loop, loop_thread = self._loop, self._loop_thread
            if loop is None:
                # Not serving. If a drain ended the last serve() (a pre-fork worker's
                # stop starts one on the loop), that drain's report is the answer.
                report, self._last_drain = self._last_drain, None
                if report is not None:
                    return report
                setattr(server, STOP_FLAG, True)
                return DrainReport(finished=0, aborted=0, seconds=time.monotonic() - started)
        if loop_thread == threading.get_ident():
            raise RuntimeError(
                "drain() on the event loop's own thread would wait for itself; "
                "use await server.drain_async(timeout)"
            )
        try:
            future = asyncio.run_coroutine_threadsafe(self.drain_async(server, timeout), loop)
        except RuntimeError:  # the loop closed meanwhile: nothing left to drain
            return DrainReport(finished=0, aborted=0, seconds=time.monotonic() - started)
        stopped: threading.Event = getattr(server, STOPPED_EVENT)
        while True:
            try:
                report = future.result(timeout=0.05)
                break
            except concurrent.futures.TimeoutError:
                if stopped.is_set() and not future.done():
                    future.cancel()  # serve() ended before the drain could run
                    return DrainReport(0, 0, seconds=time.monotonic() - started)
        stopped.wait(ABORT_GRACE_SECONDS)
        self._last_drain = None  # answered here
        return report

    async def drain_async(self, server: Any, timeout: float) -> DrainReport:
        """Stop listening; let requests finish until ``timeout``; cancel the rest; stop.

        The same steps as the synchronous drain (``serving/selector_loop.py``): the
        connections the kernel had queued are accepted, then the listening socket is
        closed, so new clients are refused at once.
        """
        started = time.monotonic()
        log.info("draining %d request(s) for up to %.1f s", self.limiter.active, timeout)
        released_before = self._stop_accepting_for_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Connections still in their preludes become requests when those end: wait
            # for both, until none is left or time is up.
            pending = self._running_work()
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        finished = self.limiter.released - released_before
        if pending:
            log.warning(
                "drain: %d request(s) still running after %.1f s; cancelling them",
                len(pending),
                timeout,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=ABORT_GRACE_SECONDS)
        setattr(server, STOP_FLAG, True)
        self._wake()
        report = DrainReport(
            finished=finished, aborted=len(pending), seconds=time.monotonic() - started
        )
        self._last_drain = report
        return report

    def _stop_accepting_for_drain(self) -> int:
        """A drain's first steps (once; again, they do nothing): mark its start, take
        what the kernel queued, close the listener, stop accepting but let serve() run.
        Returns the ``limiter.released`` count the drain counts from."""
        released_before = self.core.begin_draining()
        self._take_backlog_and_stop_listening()
        self._is_draining = True
        self._update_listener()
        return released_before

    def _running_work(self) -> set[asyncio.Task[Any]]:
        """The requests and prelude runs in progress, except the caller (a drain task)."""
        current = asyncio.current_task()
        return {task for task in (*self._in_preludes, *self._requests) if task is not current}

    def _take_backlog_and_stop_listening(self) -> None:
        server = self._server
        if server is None or not self._is_stream or self._listener_fd < 0:
            return
        if self._is_listening and self._loop is not None:
            self._loop.remove_reader(self._listener_fd)
            self._is_listening = False
        # No new connections from here, so the close below resets nobody and the sweep
        # ends (listener_stop.refuse_new_connections says how, and when it does nothing).
        refuse_new_connections(server)
        for _ in range(backlog_bound(server)):
            if self._accept_one() is None:
                break
        self._listener_fd = -1
        server.socket.close()


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
