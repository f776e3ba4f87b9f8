"""A server's own socket, below the stdlib hooks: open it, read datagrams, clean up after.

``servers/`` decides *when* each of these happens (the stdlib's hook order); this module
knows *how* the socket module and the kernel do it, so a platform quirk is fixed here
without touching the server classes. Binding and listening, with their errors, are
``listeners.py``'s; this module covers the rest of the socket's life:

* choosing its address family, and opening it: with ``dual_stack``, as one IPv6 socket
  that takes IPv4 clients too;
* receiving one datagram and telling whether the kernel cut it to fit;
* how many datagrams the kernel dropped on it (``kernel_drops``);
* the Unix socket file: making way for a bind where a crashed server left a stale file,
  giving the new file its mode (``unix_socket_mode``), and remembering the file a bind
  created, so closing removes that file and no other.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from .addresses import dual_stack_address, family_for, format_address, is_ipv4_literal
from .errors import BindError, ConfigurationError

log = logging.getLogger("sockserve.sockets")


def family_and_bind_address(
    address: Any, configured_family: int, *, dual_stack: bool
) -> tuple[int, Any]:
    """The family of the socket to open for ``address``, and the address to bind it to.

    An IPv6 literal host gets ``AF_INET6`` whatever the configured family. With
    ``dual_stack`` the socket is ``AF_INET6`` too, and a wildcard host becomes ``"::"``;
    settings that cannot take both IPv4 and IPv6 clients raise ``ConfigurationError``.
    """
    if not dual_stack:
        return family_for(address, configured_family), address
    if configured_family not in (socket.AF_INET, socket.AF_INET6):
        raise ConfigurationError(
            "dual_stack needs an IP server, not address family "
            f"{configured_family!r} (address {format_address(address)})"
        )
    if is_ipv4_literal(address):
        raise ConfigurationError(
            "dual_stack needs a wildcard host ('', '0.0.0.0' or '::') or an IPv6 "
            f"address; {format_address(address)} can only take IPv4 "
            "clients (leave dual_stack off for it)"
        )
    return socket.AF_INET6, dual_stack_address(address)


def open_socket(family: int, sock_type: int, *, dual_stack: bool) -> socket.socket:
    """A new unbound socket; with ``dual_stack``, one whose IPv6 side takes IPv4 too."""
    if not dual_stack:
        return socket.socket(family, sock_type)
    sock = _DualStackSocket(family, sock_type)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except BaseException:
        sock.close()
        raise
    return sock


class _DualStackSocket(socket.socket):
    """An IPv6 socket that also accepts a plain IPv4 address in ``sendto``.

    Datagram handlers reply with ``sock.sendto(data, client_address)``; on a dual-stack
    server that address has been shown to them as IPv4, which an ``AF_INET6`` socket
    would refuse. Mapping it back here keeps such handlers working unchanged.
    """

    def sendto(self, data: Any, *args: Any) -> int:
        *flags, address = args
        if isinstance(address, tuple) and len(address) == 2 and ":" not in address[0]:
            address = ("::ffff:" + address[0], address[1], 0, 0)
        return super().sendto(data, *flags, address)  # type: ignore[call-overload,no-any-return]


#: The classes ``accepted_socket_class`` made, by (family, type): a handful per process.
_ACCEPTED_SOCKET_CLASSES: dict[tuple[int, int], type[socket.socket]] = {}


def accepted_socket_class(listener: socket.socket) -> type[socket.socket]:
    """A ``socket.socket`` subclass for the connections ``listener`` accepts, whose
    ``family`` and ``type`` are plain class attributes.

    ``socket.socket.family`` and ``.type`` are properties that convert the kernel's
    numbers to enums on every read (0.6 µs each, measured); uvloop reads them three
    times per accepted connection (``connect_accepted_socket``). An accepted socket's
    family and type are its listener's, so they are converted once, here. Everything
    else is the socket's own; the class is named ``socket.socket`` so that reprs and
    messages read as before. Trade-off: ``type(sock) is socket.socket`` is False, and
    ``multiprocessing`` cannot pickle such a socket (its reducer is registered for the
    exact class): used by the async servers only, whose sockets go to the event loop.
    """
    key = (int(listener.family), int(listener.type))
    cls = _ACCEPTED_SOCKET_CLASSES.get(key)
    if cls is None:
        family, kind = listener.family, listener.type  # the enums (or plain ints)

        class AcceptedSocket(socket.socket):
            __slots__ = ()

        AcceptedSocket.family = family  # type: ignore[assignment]
        AcceptedSocket.type = kind  # type: ignore[assignment]
        AcceptedSocket.__module__ = "socket"
        AcceptedSocket.__name__ = AcceptedSocket.__qualname__ = "socket"
        cls = _ACCEPTED_SOCKET_CLASSES[key] = AcceptedSocket
    return cls


def receive_datagram(sock: socket.socket, max_size: int) -> tuple[bytes, Any, bool]:
    """One datagram without blocking: ``(data, sender, was_truncated)``.

    ``recvmsg`` reports MSG_TRUNC when the datagram did not fit; ``recvfrom`` cannot.
    MSG_DONTWAIT makes this one call non-blocking while the socket itself stays blocking,
    because handlers reply through the same socket.

    The datagram lands in a buffer this thread reuses (``recvmsg_into``) and only its
    bytes are copied out. ``recvmsg(max_size)`` allocated a ``max_size`` object per
    datagram and shrank it, and with the default 65535 that pattern grew glibc's heap
    for good: measured by the battery's soak, a synchronous UDPServer's RSS grew
    ~9 bytes per datagram (+6 MiB per 700 000, linearly), with no Python object left
    behind (tracemalloc flat); with the reused buffer it stays flat.
    """
    flags = getattr(socket, "MSG_DONTWAIT", 0)
    if hasattr(sock, "recvmsg_into"):
        view = _receive_buffer(max_size)
        size, _, msg_flags, address = sock.recvmsg_into([view], 0, flags)
        return bytes(view[:size]), address, bool(msg_flags & getattr(socket, "MSG_TRUNC", 0))
    data, address = sock.recvfrom(max_size, flags)
    return data, address, False


_receive_buffers = threading.local()


def _receive_buffer(size: int) -> memoryview:
    """This thread's receive buffer, exactly ``size`` bytes long (what fits is what the
    caller allows: a longer datagram is reported truncated)."""
    whole: memoryview | None = getattr(_receive_buffers, "view", None)
    if whole is None or len(whole) < size:
        whole = memoryview(bytearray(size))
        _receive_buffers.view = whole
    return whole[:size]


#: ``SO_MEMINFO`` (Linux 4.6+, include/uapi/asm-generic/socket.h; Python does not export
#: it). The architectures with their own socket.h number it differently: there the
#: counter is not read rather than read wrong.
SO_MEMINFO = 55
_OWN_SOCKET_NUMBERS = ("alpha", "mips", "parisc", "sparc")
#: ``SK_MEMINFO_DROPS``: the index of the socket's drop counter (``sk_drops``) among the
#: ``u32`` values SO_MEMINFO returns (include/uapi/linux/sock_diag.h; the 9th, Linux 4.7+).
SK_MEMINFO_DROPS = 8
_MEMINFO_BYTES = (SK_MEMINFO_DROPS + 1) * 4
_READS_MEMINFO = sys.platform == "linux" and not os.uname().machine.startswith(_OWN_SOCKET_NUMBERS)


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams Linux dropped on ``sock`` before anyone read them (its receive queue
    was full, or a filter or checksum refused them), since the socket was made; 0 where
    the kernel does not say, and once the socket is closed.

    It is the counter ``SO_RXQ_OVFL`` would attach to every datagram, read once per
    call instead: measured with ``python3 -m bench.kernel_drops_cost``, asking for the
    ancillary data adds 10-25% (100-200 ns) to every ``recvmsg`` (about 1% of the
    ~11 us of CPU a UDPServer spends per echo), this call ~0.3 us per ``stats()``; and
    it is current even when no datagram has been read since the queue overflowed.
    """
    if not _READS_MEMINFO or sock.fileno() < 0:
        return 0
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_BYTES)
    except OSError:
        return 0
    if len(info) < _MEMINFO_BYTES:  # a kernel older than SK_MEMINFO_DROPS
        return 0
    drops: int = struct.unpack_from(f"{SK_MEMINFO_DROPS + 1}I", info)[SK_MEMINFO_DROPS]
    return drops


class UnixSocketFile(NamedTuple):
    """The Unix socket file a bind created, identified so that only it is ever removed."""

    path: str | bytes
    #: Another file may take the path later (a new server after ours was replaced).
    inode: int
    #: A forked child inherits the server object, but the file belongs to the parent.
    creator_pid: int


def bound_unix_socket_file(sock: socket.socket, address: Any) -> UnixSocketFile | None:
    """The file ``sock`` has just been bound to at ``address``; None if the bind made none.

    Sockets of other families, unnamed ones and Linux abstract names have no file.
    """
    if sock.family != getattr(socket, "AF_UNIX", None):
        return None
    if not isinstance(address, (str, bytes, os.PathLike)):
        return None
    path = os.fspath(address)
    if not path or path[:1] in ("\0", b"\0"):
        return None
    return UnixSocketFile(path, os.stat(path).st_ino, os.getpid())


def remove_unix_socket_file(created: UnixSocketFile) -> None:
    """Unlink the file, unless it is gone already or another file now has its path."""
    try:
        st = os.lstat(created.path)
        if st.st_ino == created.inode and stat.S_ISSOCK(st.st_mode):
            os.unlink(created.path)
    except OSError:
        pass  # already gone, or replaced by someone else's file: leave it


# -- making way for a bind, and the new file's mode ------------------------------------------

#: What ``connect()`` from a SOCK_DGRAM socket answers for a path that is a socket file,
#: measured on Linux 6.18 for files left by each socket type (and matching
#: ``unix_find_bsd()`` and ``unix_dgram_connect()`` in net/unix/af_unix.c):
#:
#: ======================  ============  ============  ==================================
#: file bound by           stale         live          bound, not yet listening
#: ======================  ============  ============  ==================================
#: SOCK_STREAM             ECONNREFUSED  EPROTOTYPE    EPROTOTYPE
#: SOCK_SEQPACKET          ECONNREFUSED  EPROTOTYPE    EPROTOTYPE
#: SOCK_DGRAM              ECONNREFUSED  connects      (datagram sockets do not listen)
#: ======================  ============  ============  ==================================
#:
#: So a datagram probe tells "no socket is bound to this file" (ECONNREFUSED) from "a
#: socket is" (it connects, or EPROTOTYPE: one of another type), whatever the server's
#: type. A probe of the server's own stream type would not: it is refused by a stream
#: server between bind() and listen() too (one built with ``bind_and_activate=False``, or
#: starting this instant), whose file would then be taken for stale. A datagram probe
#: also sends nothing, so a live stream server never sees a stray connection. Any other
#: answer (EACCES without write permission, say) proves nothing: the file stays.
STALE_UNIX_SOCKET_ERRNO = errno.ECONNREFUSED
BOUND_UNIX_SOCKET_ERRNOS = frozenset({errno.EPROTOTYPE})


def clear_unix_socket_path(address: Any) -> str | None:
    """Make way for a bind at ``address``: None if the path is free now, else what is there.

    A socket file that no socket is bound to any more (its server crashed, or exited
    without removing it) is stale: it is removed with one INFO line on
    ``sockserve.sockets``, and the bind can go ahead. Anything else is left alone and
    described for the caller's error message: a socket some process has bound, a socket
    that cannot be probed (no write permission on it, for instance), or a file that is
    not a socket (a symlink counts as one: it is never followed).

    Two servers starting at once on one stale path both see it stale; the file is only
    removed if the path still names the file probed, so the slower server does not delete
    the faster one's new file (barring the instant between that check and the unlink).
    """
    if not isinstance(address, (str, bytes, os.PathLike)):
        return None
    path = os.fspath(address)
    if not path or path[:1] in ("\0", b"\0"):
        return None  # unnamed or abstract namespace: nothing on the filesystem
    with _held_file(path) as probed:
        if probed is None:
            return None  # nothing there (or nothing we can see): bind() will say what
        if not stat.S_ISSOCK(probed.st_mode):
            return "a file that is not a socket; not removed"
        refused = _probe_unix_socket_file(path)
        if refused is None or refused in BOUND_UNIX_SOCKET_ERRNOS:
            return "a socket that a server is using"
        if refused != STALE_UNIX_SOCKET_ERRNO:
            return (
                f"a socket that could not be probed: {os.strerror(refused)}"
                " — remove it if no server is using it"
            )
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (probed.st_dev, probed.st_ino):
                return "a socket that another process created just now"
            os.unlink(path)
        except FileNotFoundError:
            pass  # another process removed it first: the path is free all the same
        except OSError as exc:
            return f"a stale socket that could not be removed: {exc.strerror}"
    log.info("removed stale Unix socket file %s (no socket was bound to it)", format_address(path))
    return None


@contextmanager
def _held_file(path: str | bytes) -> Iterator[os.stat_result | None]:
    """The status of the file at ``path`` (a symlink itself, never its target); None if none.

    Inside the block the file is held open with O_PATH where there is one (Linux), so its
    inode number cannot pass to a new file: comparing numbers then tells for sure whether
    the path still names it. Without the hold the comparison is a best effort: tmpfs gave
    a file made just after an unlink the freed number (measured here).
    """
    o_path = getattr(os, "O_PATH", 0)
    held = -1
    try:
        if o_path:
            held = os.open(path, o_path | os.O_NOFOLLOW | os.O_CLOEXEC)
            status = os.fstat(held)
        else:
            status = os.lstat(path)
    except OSError:
        status = None
    try:
        yield status
    finally:
        if held >= 0:
            os.close(held)


def _probe_unix_socket_file(path: str | bytes) -> int | None:
    """None if a datagram connect() to ``path`` succeeds, else its errno (see the table)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)  # a datagram connect does not block; this makes it certain
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.errno if exc.errno is not None else errno.EIO
    return None


def check_unix_socket_mode(sock: socket.socket, address: Any, mode: object) -> int | None:
    """Validate ``unix_socket_mode`` for a server bound to ``address``, before the bind.

    Where the kernel allows it, the unbound socket takes the mode too: Linux creates the
    file with the socket's own mode masked by the umask (``unix_bind_bsd()`` in
    net/unix/af_unix.c; measured: ``fchmod(0o600)`` before bind under umask 022 gave a
    0o600 file, where 0o755 is the default). So the file is never wider than asked, not
    even for the instant between bind() and ``apply_unix_socket_mode()``. That matters
    for datagram sockets, which take datagrams as soon as they are bound; stream
    sockets refuse connections until listen() anyway. Changing the umask instead would be
    racy: it is per process, and other threads would create files under it.
    """
    if mode is None:
        return None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigurationError(
            f"unix_socket_mode must be None or permission bits from 0 to 0o777 (such as "
            f"0o660), not {mode!r}"
        )
    if sock.family != getattr(socket, "AF_UNIX", None):
        raise ConfigurationError(
            f"unix_socket_mode needs a Unix socket server, not address {format_address(address)}"
        )
    path = os.fspath(address) if isinstance(address, (str, bytes, os.PathLike)) else ""
    if not path or path[:1] in ("\0", b"\0"):
        raise ConfigurationError(
            f"unix_socket_mode needs a socket file, and {format_address(address)} has none "
            "(abstract and unnamed sockets have no permissions: any local process may "
            "connect)"
        )
    try:
        os.fchmod(sock.fileno(), mode)
    except OSError:
        pass  # not on this system (BSDs refuse it): apply_unix_socket_mode() still sets it
    return mode


def apply_unix_socket_mode(created: UnixSocketFile | None, mode: int | None) -> None:
    """Give the file a bind just created exactly ``mode``, whatever the umask took away."""
    if created is None or mode is None:
        return
    try:
        os.chmod(created.path, mode)
    except OSError as exc:
        raise BindError(
            exc.errno,
            f"cannot set unix_socket_mode {mode:#o} on {format_address(created.path)}: "
            f"{exc.strerror}",
        ) from exc
