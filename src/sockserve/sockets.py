"""A server's own socket, below the stdlib hooks: open it, read datagrams, clean up after.

``servers.py`` decides *when* each of these happens (the stdlib's hook order); this module
knows *how* the socket module and the kernel do it, so a platform quirk is fixed here
without touching the server classes. Binding and listening, with their errors, are
``listeners.py``'s; this module covers the rest of the socket's life:

* choosing its address family, and opening it: with ``dual_stack``, as one IPv6 socket
  that takes IPv4 clients too;
* receiving one datagram and telling whether the kernel cut it to fit;
* remembering the Unix socket file a bind created, so closing removes that file and no
  other.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any, NamedTuple

from .addresses import dual_stack_address, family_for, format_address, is_ipv4_literal
from .errors import ConfigurationError


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


def receive_datagram(sock: socket.socket, max_size: int) -> tuple[bytes, Any, bool]:
    """One datagram without blocking: ``(data, sender, was_truncated)``.

    ``recvmsg`` reports MSG_TRUNC when the datagram did not fit; ``recvfrom`` cannot.
    MSG_DONTWAIT makes this one call non-blocking while the socket itself stays blocking,
    because handlers reply through the same socket.
    """
    flags = getattr(socket, "MSG_DONTWAIT", 0)
    if hasattr(sock, "recvmsg"):
        data, _, msg_flags, address = sock.recvmsg(max_size, 0, flags)
        return data, address, bool(msg_flags & getattr(socket, "MSG_TRUNC", 0))
    data, address = sock.recvfrom(max_size, flags)
    return data, address, False


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
