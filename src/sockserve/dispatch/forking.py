"""Fork-per-request dispatch, with prompt reaping.

Design: the work runs in a child created by ``os.fork()``; the child exits with
``os._exit`` so it never returns into the parent's serve loop, and its status is 0 only if
the work returned normally. The parent remembers each child's pid and reaps it with
``waitpid(WNOHANG)`` whenever the serve loop asks (each loop turn and before each fork).
Where Linux offers ``pidfd_open`` the parent also gets a descriptor per child that turns
readable the moment the child exits; the serve loop watches it, so a child is reaped at
once rather than at the next poll interval, with no SIGCHLD handler (signals belong to
the application). A process per request isolates handlers completely, at the price of a
fork (about a millisecond) per connection.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

#: Without pidfds, how often a parent held at ``max_children`` looks for an exited child.
_EXIT_POLL_SECONDS = 0.01


class ForkPerRequest:
    """Forks a child per piece of work and reaps children as they finish."""

    def __init__(self) -> None:
        self.children: set[int] = set()
        self._on_exit: dict[int, Callable[[int], None]] = {}
        self._pidfds: dict[int, int] = {}

    def submit(
        self,
        child_work: Callable[[], int],
        in_parent: Callable[[], None],
        on_exit: Callable[[int], None] | None = None,
    ) -> int:
        """Fork; the child runs ``child_work`` then exits, the parent runs ``in_parent``.

        The child exits with the status ``child_work`` returns, or 1 if it raises.
        ``on_exit(exit_code)`` runs in the parent when the child has been reaped.
        """
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's loop
            status = 1
            try:
                status = child_work()
            finally:
                os._exit(status)
        self.children.add(pid)
        if on_exit is not None:
            self._on_exit[pid] = on_exit
        pidfd = open_pidfd(pid)
        if pidfd is not None:
            self._pidfds[pid] = pidfd
        in_parent()
        return pid

    def exit_descriptor(self, pid: int) -> int | None:
        """A descriptor that becomes readable when child ``pid`` exits, if the OS has one."""
        return self._pidfds.get(pid)

    def reap_child(self, pid: int) -> None:
        """Reap ``pid`` if it has exited (call when its exit descriptor is readable)."""
        if pid in self.children:
            self._reap_one(pid, blocking=False)

    def reap(self, *, blocking: bool = False, keep_below: int | None = None) -> None:
        """Collect finished children.

        ``keep_below`` first waits (blocking) until fewer than that many are alive;
        ``blocking`` then waits for every remaining child.
        """
        if keep_below is not None:
            self._reap_finished(blocking=False)
            while len(self.children) >= keep_below:
                self._wait_for_any_exit()
                self._reap_finished(blocking=False)
        self._reap_finished(blocking=blocking)

    def _wait_for_any_exit(self) -> None:
        """Block until at least one of *our* children may have exited.

        Whichever child finishes first frees the slot, so waiting on one particular child
        would stall the server behind its slowest client. ``waitpid(-1)`` is no answer
        either: it would steal the exit status of unrelated children of this process
        (``subprocess.Popen``). With a pidfd per child one ``poll`` waits for them all;
        without, poll each child's status at a short interval.
        """
        if self._pidfds and len(self._pidfds) == len(self.children):
            poller = select.poll()
            for pidfd in self._pidfds.values():
                poller.register(pidfd, select.POLLIN)
            poller.poll()
        else:
            time.sleep(_EXIT_POLL_SECONDS)

    def _reap_finished(self, *, blocking: bool) -> None:
        for pid in list(self.children):
            self._reap_one(pid, blocking=blocking)

    def _reap_one(self, pid: int, *, blocking: bool) -> None:
        try:
            done, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0  # reaped elsewhere: no longer ours to track
        if done:
            self.children.discard(pid)
            on_exit = self._on_exit.pop(pid, None)
            if on_exit is not None:
                on_exit(os.waitstatus_to_exitcode(status))
            pidfd = self._pidfds.pop(pid, None)
            if pidfd is not None:
                os.close(pidfd)


def open_pidfd(pid: int) -> int | None:
    """A descriptor readable once ``pid`` exits (Linux 5.3+), so reaping is immediate."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None  # kernel older than 5.3, or a seccomp policy that forbids it
    return fd
