"""Listening sockets: binding with clear errors, and what to do when accept() fails.

Binding translates the kernel's terse errors into sockserve errors that name the address
(``errors.py``); a stale Unix socket file is removed first (``sockets.py`` tells stale
from live). Accepting classifies each ``OSError`` by a named errno policy:

* transient errors concern one half-open connection or an interrupted call: retry at once;
* capacity errors mean the process or system is out of a resource (descriptors, buffers,
  memory): log once, count, and back off so the loop does not spin at 100 % CPU while the
  listening socket stays readable, then try again;
* anything else is unexpected; it is logged with its traceback and backed off too, because
  retrying a persistent error at full speed helps nobody.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import time
from typing import Any

from .addresses import format_address
from .errors import (
    AddressError,
    AddressInUseError,
    BindError,
    HostResolutionError,
    PortOutOfRangeError,
    UnixSocketPathExistsError,
)
from .sockets import clear_unix_socket_path

log = logging.getLogger("sockserve.listeners")

#: accept() failed for one connection or was interrupted; the next call may well succeed.
#: Linux passes pending network errors of the new socket to accept() (see accept(2),
#: "Error handling"): those are per-connection too.
TRANSIENT_ACCEPT_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in (
            "EAGAIN",
            "EWOULDBLOCK",
            "EINTR",
            "ECONNABORTED",
            "EPROTO",
            "EPERM",
            "ENETDOWN",
            "ENOPROTOOPT",
            "EHOSTDOWN",
            "ENONET",
            "EHOSTUNREACH",
            "ENETUNREACH",
            "EOPNOTSUPP",
        )
    )
    if code is not None
)

#: The process or the system ran out of something. Retrying at once spins (the stdlib's
#: serve loop burns a full core silently on EMFILE); waiting lets a descriptor free up.
CAPACITY_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
)

#: Back-off after a capacity error doubles from the first to the last value.
ACCEPT_BACKOFF_FIRST = 0.005
ACCEPT_BACKOFF_MAX = 1.0
#: A capacity episode ends after accepts have worked this long without a capacity error;
#: twice the longest pause, so that a failure right after a pause still counts as the
#: same episode.
ACCEPT_EPISODE_END_SECONDS = 2 * ACCEPT_BACKOFF_MAX

#: Whether ``accept()`` reports EMFILE before EAGAIN (``record_empty_queue``): Linux.
_ACCEPT_ALLOCATES_FIRST = sys.platform.startswith("linux")


def bind_socket(sock: socket.socket, address: Any) -> None:
    """``sock.bind(address)``, with errors that say what went wrong and where."""
    shown = format_address(address)
    if sock.family == getattr(socket, "AF_UNIX", None):
        _check_unix_path_free(address)
    try:
        sock.bind(address)
    except OverflowError as exc:
        raise PortOutOfRangeError(f"port out of range 0-65535 in address {shown}") from exc
    except socket.gaierror as exc:
        raise HostResolutionError(
            exc.errno, f"cannot resolve host of address {shown}: {exc.strerror}"
        ) from None
    except TypeError as exc:
        raise _MalformedAddressError(f"malformed address {address!r}: {exc}") from exc
    except OSError as exc:
        raise _bind_error(exc, "bind", shown) from exc


def listen_socket(sock: socket.socket, backlog: int, address: Any) -> None:
    """``sock.listen(backlog)``, with the address in any error."""
    try:
        sock.listen(backlog)
    except OSError as exc:
        raise _bind_error(exc, "listen", format_address(address)) from exc


class _MalformedAddressError(AddressError, TypeError):
    """The address has the wrong shape (the socket module raises TypeError)."""


def _bind_error(exc: OSError, call: str, shown: str) -> BindError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(exc.errno, f"address already in use: {shown}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(exc.errno, f"address not available on this host: {shown}")
    if exc.errno == errno.EACCES:
        return BindError(exc.errno, f"permission denied to {call} on {shown}")
    return BindError(exc.errno, f"cannot {call} on {shown}: {reason}")


def _check_unix_path_free(address: Any) -> None:
    occupant = clear_unix_socket_path(address)  # removes a stale socket file
    if occupant is not None:
        raise UnixSocketPathExistsError(
            errno.EADDRINUSE,
            f"Unix socket path already exists ({occupant}): {format_address(address)}",
        )


class AcceptBackoff:
    """Remembers a capacity episode: when to try accept() again, and what to log.

    One warning starts an episode; one info line ends it with the count of failures, so a
    long EMFILE storm costs two log lines, not a line per attempt. The back-off restarts
    from ``ACCEPT_BACKOFF_FIRST`` after every accept that works, but the episode only ends
    once accepts have worked for ``ACCEPT_EPISODE_END_SECONDS`` with no capacity error
    (at the next success or ``flush()`` after that): a server at its descriptor limit
    alternates between one accept that works and one that fails, and logged two lines
    per connection before (the fault battery's starvation case measured 4 episodes in
    1.5 s on uvloop).
    """

    def __init__(self) -> None:
        self.delay = 0.0
        self.resume_at = 0.0
        self.failures_in_episode = 0
        self.total_errors = 0
        self._last_failure_at = 0.0
        self._worked_since_failure = False
        self._address: Any = None

    @property
    def is_backing_off(self) -> bool:
        return self.failures_in_episode > 0

    def seconds_left(self) -> float:
        return max(0.0, self.resume_at - time.monotonic())

    def record_failure(self, exc: OSError, address: Any) -> None:
        now = time.monotonic()
        self.total_errors += 1
        self.failures_in_episode += 1
        self._address = address
        if self.failures_in_episode == 1:
            self.delay = ACCEPT_BACKOFF_FIRST
            if exc.errno in CAPACITY_ACCEPT_ERRNOS:
                log.warning(
                    "accept() on %s failed: %s; pausing accepts until resources free up",
                    format_address(address),
                    exc,
                )
            else:
                log.error(
                    "accept() on %s failed unexpectedly; backing off",
                    format_address(address),
                    exc_info=exc,
                )
        elif self._worked_since_failure:
            self.delay = ACCEPT_BACKOFF_FIRST  # a descriptor freed since: look again soon
        else:
            self.delay = min(self.delay * 2, ACCEPT_BACKOFF_MAX)
        self._worked_since_failure = False
        self._last_failure_at = now
        self.resume_at = now + self.delay

    def record_success(self, address: Any) -> None:
        if self.failures_in_episode:
            self._worked_since_failure = True
            self.resume_at = 0.0
            self.flush()

    def record_empty_queue(self) -> None:
        """``accept()`` found no connection waiting. On Linux it allocates the new
        descriptor before it looks at the queue (``do_accept``), so that answer also
        says descriptors are free again: the episode may end as after a success."""
        if self.failures_in_episode and _ACCEPT_ALLOCATES_FIRST:
            self._worked_since_failure = True
            self.resume_at = 0.0

    def flush(self) -> None:
        """End the episode (one info line) if accepts have worked long enough since the
        last failure; the loops call this every turn, so the line comes even when no
        further connection does."""
        if not (self.failures_in_episode and self._worked_since_failure):
            return
        if time.monotonic() - self._last_failure_at < ACCEPT_EPISODE_END_SECONDS:
            return
        log.info(
            "accept() on %s works again after %d failed attempts",
            format_address(self._address),
            self.failures_in_episode,
        )
        self.failures_in_episode = 0
        self.delay = 0.0
