"""Concurrency mixins: each one only picks a dispatch strategy for ``process_request``.

Mixin order is part of the stdlib contract: ``class S(ThreadingMixIn, TCPServer)`` puts
the mixin's ``process_request`` and ``server_close`` in front of the server's.
"""

from __future__ import annotations

import os
import socket
from functools import partial
from typing import Any

from .dispatch import ForkPerRequest, ThreadPerRequest
from .serve_loop import report_handler_error


class ThreadingMixIn:
    """Serve each request on a new thread.

    ``daemon_threads``: threads do not keep the process alive (and are not waited for).
    ``block_on_close``: ``server_close()`` waits for the non-daemon request threads.
    Bookkeeping holds live threads only; nothing bounds how many run at once.
    """

    daemon_threads = False
    block_on_close = True

    @property
    def _threads(self) -> ThreadPerRequest:
        """The strategy object (it also offers the stdlib's ``_threads`` list surface)."""
        threads: ThreadPerRequest | None = vars(self).get("_thread_per_request")
        if threads is None:
            threads = vars(self).setdefault("_thread_per_request", ThreadPerRequest())
        return threads

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Runs on the request's thread: the handler, then error handling and closing."""
        server: Any = self
        try:
            server.finish_request(request, client_address)
        except Exception:
            report_handler_error(server, request, client_address)
            return
        except BaseException:
            server.shutdown_request(request)
            raise
        server.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the request."""
        self._threads.submit(
            partial(self.process_request_thread, request, client_address),
            daemon=self.daemon_threads,
            track=self.block_on_close and not self.daemon_threads,
        )

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self._threads.join()


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

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a child for the request; the parent only closes its copy."""
            self.collect_children()
            server: Any = self
            self._forks.submit(
                partial(self._serve_in_child, request, client_address),
                in_parent=partial(server.close_request, request),
            )

        def _serve_in_child(self, request: Any, client_address: Any) -> int:
            server: Any = self
            listener = getattr(server, "socket", None)
            if isinstance(listener, socket.socket) and listener.type == socket.SOCK_STREAM:
                # The child serves one connection; holding the listening socket would keep
                # the port bound after the parent closes it.
                listener.close()
            try:
                server.finish_request(request, client_address)
            except Exception:
                report_handler_error(server, request, client_address)
                return 1
            except BaseException:
                server.shutdown_request(request)
                raise
            server.shutdown_request(request)
            return 0

        def server_close(self) -> None:
            super().server_close()  # type: ignore[misc]
            self.collect_children(blocking=self.block_on_close)
