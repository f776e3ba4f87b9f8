"""Thread-per-request dispatch, with bookkeeping that cannot grow without bound.

Design: each request gets a new thread. Threads the server must wait for at close
(non-daemon threads when ``block_on_close`` is set) are kept in a set and each removes
itself when its work ends, so the set holds live threads only, however long the server
runs (the stdlib kept every finished thread until the next request arrived; bpo-37193).
Nothing bounds how many threads run at once: that is what a thread pool is for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator


class ThreadPerRequest:
    """Starts one thread per piece of work and can join those it was asked to track.

    It also offers the list-like surface of the stdlib's private ``_threads`` object
    (``append``, ``reap``, ``join``, ``pop_all``, ``len``, iteration), which
    ``ThreadingMixIn._threads`` returns for code that pokes at it.
    """

    def __init__(self, name_prefix: str = "sockserve-request") -> None:
        self._name_prefix = name_prefix
        self._lock = threading.Lock()
        self._tracked: set[threading.Thread] = set()
        self._started = 0

    def submit(self, work: Callable[[], None], *, daemon: bool, track: bool) -> None:
        """Run ``work`` on a new thread; ``track`` makes ``join()`` wait for it."""
        with self._lock:
            self._started += 1
            name = f"{self._name_prefix}-{self._started}"
        thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=daemon)
        if track:
            with self._lock:
                self._tracked.add(thread)
        try:
            thread.start()
        except BaseException:
            self._forget(thread)
            raise

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            self._forget(threading.current_thread())

    def _forget(self, thread: threading.Thread) -> None:
        with self._lock:
            self._tracked.discard(thread)

    # -- the stdlib ``_threads`` surface -------------------------------------------------

    def append(self, thread: threading.Thread) -> None:
        """Track a thread started elsewhere (daemon threads are never waited for)."""
        if not thread.daemon:
            with self._lock:
                self._tracked.add(thread)
        self.reap()

    def reap(self) -> None:
        """Drop threads that have finished."""
        with self._lock:
            self._tracked = {t for t in self._tracked if t.is_alive() or not t.ident}

    def pop_all(self) -> list[threading.Thread]:
        with self._lock:
            threads, self._tracked = list(self._tracked), set()
        return threads

    def join(self, timeout: float | None = None) -> None:
        """Wait for every tracked thread (each up to ``timeout`` seconds if given)."""
        for thread in self.pop_all():
            if thread is not threading.current_thread():
                thread.join(timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tracked)

    def __iter__(self) -> Iterator[threading.Thread]:
        with self._lock:
            return iter(list(self._tracked))
