"""systemd integration, written against the documented protocol: no libsystemd, stdlib only.

Both halves are small wire protocols, so speaking them directly costs less than a
dependency (and works where systemd's Python bindings are not installed):

* **Socket activation** (sd_listen_fds(3)): systemd binds the sockets a unit's ``.socket``
  file names and starts the service with them as descriptors 3, 4, …
  (``SD_LISTEN_FDS_START``), described by ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (which
  process they are for) and ``LISTEN_FDNAMES`` (``FileDescriptorName=``, colon-separated).
  ``inherited_sockets()`` reads them and returns one ``InheritedSocket`` per descriptor.
* **Notifications** (sd_notify(3)): ``Type=notify`` services tell systemd they are ready,
  reloading or stopping, and ping the watchdog, by sending ``KEY=VALUE`` lines in one
  datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET``. ``Notifier`` sends them;
  ``watchdog_interval()`` reads ``WatchdogSec=`` back from ``WATCHDOG_USEC``.

Error handling: variables that contradict each other or the process raise
``SystemdEnvironmentError`` (``SocketActivationError`` for ``LISTEN_*``) when read, at
start-up, where a clear message is worth a refusal to start. A notification that cannot
be delivered never raises into the server: see ``Notifier``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from .addresses import format_address, unix_address
from .errors import ConfigurationError, SocketActivationError, SystemdEnvironmentError

log = logging.getLogger("sockserve.systemd")

#: The first inherited descriptor: 0-2 stay stdin, stdout and stderr (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
#: The variables of socket activation, unset after reading so children do not take them.
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: The name of every descriptor when ``LISTEN_FDNAMES`` is unset, as in
#: sd_listen_fds_with_names(3).
UNNAMED_DESCRIPTOR = "unknown"
#: systemd.service(5), ``WatchdogSec=``: "it is recommended that a daemon sends a
#: keep-alive notification message to the service manager every half of the time
#: returned" by sd_watchdog_enabled(3). Ping every ``watchdog_interval() * this``.
WATCHDOG_PING_FRACTION = 0.5


@dataclass(frozen=True)
class InheritedSocket:
    """One descriptor handed over by socket activation.

    ``socket`` is the ``socket.socket`` that owns ``fd`` (built with
    ``socket.socket(fileno=fd)``, which reads family, type and protocol from the kernel):
    closing it closes the descriptor. ``name`` is its ``FileDescriptorName=`` (by default
    the ``.socket`` unit's name), or ``"unknown"`` when systemd passed no names. The
    socket's blocking mode is whatever the descriptor had.
    """

    fd: int
    name: str
    family: int
    type: int
    socket: socket.socket


def inherited_sockets(*, unset_environment: bool = True) -> list[InheritedSocket]:
    """The sockets systemd passed to this process, in descriptor order; [] if none.

    As sd_listen_fds(3) does, each descriptor is marked close-on-exec, and with
    ``unset_environment`` the ``LISTEN_*`` variables are removed (whatever the outcome),
    so a child process cannot mistake them for its own. Unlike sd_listen_fds(3), which
    returns 0 then, variables meant for another process (``LISTEN_PID`` is not ours, or
    missing) raise ``SocketActivationError``: a service that expected sockets and
    silently got none would fail later with a less helpful message. So do a
    ``LISTEN_FDS`` that is not a count, a name count that differs from it, and a
    descriptor that is not open or not a socket. On an error no descriptor is closed.
    """
    try:
        return _adopt_inherited_sockets()
    finally:
        if unset_environment:
            for variable in LISTEN_VARIABLES:
                os.environ.pop(variable, None)


def _adopt_inherited_sockets() -> list[InheritedSocket]:
    count_text = os.environ.get("LISTEN_FDS")
    if count_text is None:
        return []
    pid_text = os.environ.get("LISTEN_PID")
    if pid_text is None:
        raise SocketActivationError(
            f"LISTEN_FDS={count_text} is set but LISTEN_PID is not, so the descriptors "
            "cannot be known to be this process's (systemd always sets both)"
        )
    listen_pid = _parse_number(SocketActivationError, "LISTEN_PID", pid_text)
    if listen_pid != os.getpid():
        raise SocketActivationError(
            f"LISTEN_PID={listen_pid} but this process is {os.getpid()}: the LISTEN_* "
            "variables were meant for another process (a parent that passed its "
            "environment on without unsetting them?)"
        )
    count = _parse_number(SocketActivationError, "LISTEN_FDS", count_text)
    names = _descriptor_names(os.environ.get("LISTEN_FDNAMES"), count)
    adopted: list[InheritedSocket] = []
    try:
        for offset, name in enumerate(names):
            adopted.append(_adopt(SD_LISTEN_FDS_START + offset, name, count))
    except BaseException:
        for inherited in adopted:
            inherited.socket.detach()  # leave the descriptors as we found them
        raise
    return adopted


def _descriptor_names(names_text: str | None, count: int) -> list[str]:
    if names_text is None:
        return [UNNAMED_DESCRIPTOR] * count
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        raise SocketActivationError(
            f"LISTEN_FDNAMES names {len(names)} descriptors ({names_text!r}) but LISTEN_FDS={count}"
        )
    return names


def _adopt(fd: int, name: str, count: int) -> InheritedSocket:
    shown = f"descriptor {fd} ({name!r}) of LISTEN_FDS={count}"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        reason = {errno.EBADF: "is not open", errno.ENOTSOCK: "is not a socket"}.get(
            exc.errno or 0, f"cannot be used: {exc.strerror}"
        )
        raise SocketActivationError(f"{shown} {reason}") from exc
    os.set_inheritable(fd, False)
    return InheritedSocket(fd, name, sock.family, sock.type, sock)


def _parse_number(error: type[SystemdEnvironmentError], variable: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise error(f"{variable}={text!r} is not a non-negative decimal number")
    return int(text)


class Notifier:
    """Sends sd_notify(3) state changes to the service manager.

    Methods for the caller: ``ready()``, ``reloading()``, ``stopping()``,
    ``status(text)``, ``watchdog()``, and ``send(**fields)`` for any other field
    (``send(READY=1, STATUS="serving")`` sends both in one datagram); ``close()``.
    Build one with ``Notifier.from_environment()``, which returns None when the process
    was not started by a service manager that listens (``NOTIFY_SOCKET`` unset).

    Error handling: sending never blocks and never raises. The socket is non-blocking,
    so a manager that does not read (its queue full) costs a failed send, not a stalled
    server; the first failure logs one WARNING on ``sockserve.systemd``, later ones are
    silent, and every method returns whether its datagram went out. A field the caller
    got wrong (a newline in a value, a name that is not a name) raises
    ``ConfigurationError`` before anything is sent: that is a bug, not a delivery failure.

    Resource handling: one AF_UNIX datagram socket, close-on-exec, opened on the first
    send and closed by ``close()`` (or by leaving a ``with`` block). Threads may share a
    notifier. A forked child shares the socket; systemd accepts its messages only with
    ``NotifyAccess=all`` (the default, ``main``, takes the main process's alone).
    """

    def __init__(self, address: str | bytes) -> None:
        #: Where datagrams go: a path, or ``"\0name"`` in Linux's abstract namespace.
        self.address = address
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._has_warned = False

    @classmethod
    def from_environment(cls, *, unset_environment: bool = False) -> Notifier | None:
        """A notifier for ``NOTIFY_SOCKET``; None if it is unset, empty or unusable.

        ``NOTIFY_SOCKET`` is an absolute path, or ``@name`` for an abstract socket.
        Other forms (systemd 254's ``vsock:`` addresses among them) are not supported:
        they log a WARNING and give None. With ``unset_environment`` the variable is
        removed, so child processes do not report on this service's behalf.
        """
        text = os.environ.get("NOTIFY_SOCKET", "")
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        if not text:
            return None
        if not text.startswith(("/", "@")):
            log.warning(
                "NOTIFY_SOCKET=%r is neither an absolute path nor an @abstract name; "
                "not sending systemd notifications",
                text,
            )
            return None
        return cls(unix_address(text))

    def ready(self) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``."""
        return self.send(READY=1)

    def reloading(self) -> bool:
        """A reload starts: ``RELOADING=1``; call ``ready()`` when it is done.

        ``MONOTONIC_USEC`` goes with it, as ``Type=notify-reload`` needs since systemd
        253 (systemd.service(5)): it tells the manager this message follows its request.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=now_usec)

    def stopping(self) -> bool:
        """Shutdown has begun: ``STOPPING=1``."""
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status``; line breaks become spaces."""
        return self.send(STATUS=" ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``: ``WATCHDOG=1``. See ``watchdog_interval()``."""
        return self.send(WATCHDOG=1)

    def send(self, **fields: str | int) -> bool:
        """Send ``NAME=value`` lines in one datagram; True if it went out.

        Booleans are sent as ``1`` and ``0``, as systemd expects.
        """
        payload = _encode_fields(fields)
        try:
            self._socket_for_sending().sendto(payload, self.address)
        except OSError as exc:
            if not self._has_warned:
                self._has_warned = True
                log.warning(
                    "cannot notify systemd at %s: %s; further failures are not logged",
                    format_address(self.address),
                    exc,
                )
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def _socket_for_sending(self) -> socket.socket:
        with self._lock:
            if self._socket is None:
                # CLOEXEC is Python's default (PEP 446); spelled out because a notify
                # socket leaking into a child would let it speak for this service.
                sock_type = socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0)
                sock = socket.socket(socket.AF_UNIX, sock_type)
                sock.setblocking(False)
                self._socket = sock
            return self._socket


def _encode_fields(fields: dict[str, str | int]) -> bytes:
    lines = []
    for name, value in fields.items():
        text = str(int(value)) if isinstance(value, bool) else str(value)
        if not name or "=" in name or "\n" in name or "\n" in text:
            raise ConfigurationError(
                f"a notification field is NAME=value on one line; cannot send {name}={text!r}"
            )
        lines.append(f"{name}={text}")
    return "\n".join(lines).encode()


def watchdog_interval() -> float | None:
    """``WatchdogSec=`` in seconds if systemd expects this process to ping, else None.

    Read from ``WATCHDOG_USEC``; when ``WATCHDOG_PID`` is set, only that process is
    meant (None for any other), as in sd_watchdog_enabled(3). Ping with
    ``Notifier.watchdog()`` every ``interval * WATCHDOG_PING_FRACTION`` (half of it, as
    systemd advises). Values that are not numbers raise ``SystemdEnvironmentError``.
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", str(os.getpid()))  # unset: meant for us
    if _parse_number(SystemdEnvironmentError, "WATCHDOG_PID", pid_text) != os.getpid():
        return None
    usec = _parse_number(SystemdEnvironmentError, "WATCHDOG_USEC", usec_text)
    if usec == 0:
        return None  # sd_watchdog_enabled(3) treats 0 as "no watchdog" too
    return usec / 1_000_000
