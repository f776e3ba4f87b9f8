"""``--bind`` addresses: parsing the forms, opening inherited sockets, naming what is bound.

Forms (``Bind.parse``): ``HOST:PORT`` and ``tcp://HOST:PORT`` (IPv6 as ``[::1]:PORT``),
``udp://HOST:PORT``, ``unix:/PATH`` (a socket file; relative paths too), ``unix:@NAME``
(Linux's abstract namespace), ``fd://N`` (a socket this process inherited, already
bound; its family and type are read from the descriptor), and ``systemd`` /
``systemd:NAME`` (socket activation: every socket systemd passed, or those whose
``FileDescriptorName=`` is NAME; ``build.py`` expands them, one server per socket).
Pure parsing, except ``inherited_socket`` and ``check_inherited``; binding itself is
the servers' job.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from typing import Any

from ..addresses import format_address
from ..errors import ConfigurationError

#: The schemes ``--bind`` accepts, by prefix.
SCHEMES = ("tcp://", "udp://", "unix:", "fd://", "systemd")


class BindSyntaxError(ConfigurationError):
    """A ``--bind`` value that names no address we can serve on."""


@dataclass(frozen=True)
class Bind:
    """One place to serve: ``transport`` is ``tcp``, ``udp``, ``unix``, ``fd`` or ``systemd``.

    ``address`` is ``(host, port)``, a Unix path (``"\\0name"`` when abstract), a
    descriptor number, or for ``systemd`` the descriptor name (None: every one); ``text``
    is the canonical spelling (``--print-config`` shows it).
    """

    transport: str
    address: Any
    text: str

    @classmethod
    def parse(cls, text: str) -> Bind:
        value = text.strip()
        if value == "systemd" or value.startswith("systemd:"):
            return _parse_systemd(value)
        if value.startswith("unix:"):
            return _parse_unix(value)
        if value.startswith("fd://"):
            return _parse_fd(value)
        transport = "udp" if value.startswith("udp://") else "tcp"
        rest = value.split("://", 1)[1] if "://" in value else value
        if "://" in value and not value.startswith(("tcp://", "udp://")):
            raise BindSyntaxError(f"{text!r}: unknown scheme; use one of {', '.join(SCHEMES)}")
        host, port = _split_host_port(rest, text)
        return cls(transport, (host, port), f"{transport}://{_join(host, port)}")

    @classmethod
    def tcp(cls, host: str, port: int) -> Bind:
        """The bind ``--host``/``--port`` stand for."""
        return cls("tcp", (host, port), f"tcp://{_join(host, port)}")

    @property
    def is_unix_path(self) -> bool:
        """A Unix socket file (not abstract): the one kind ``--unix-mode`` applies to."""
        return self.transport == "unix" and not str(self.address).startswith("\0")


def _split_host_port(rest: str, text: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise BindSyntaxError(f"{text!r}: write an IPv6 address as [HOST]:PORT")
        port_text = tail[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise BindSyntaxError(f"{text!r}: expected HOST:PORT (port 0: any free)")
        if ":" in host:
            raise BindSyntaxError(f"{text!r}: write an IPv6 address as [HOST]:PORT")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise BindSyntaxError(f"{text!r}: the port must be a number 0-65535")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_unix(value: str) -> Bind:
    path = value[len("unix:") :]
    if path.startswith("//"):
        path = path[2:]  # unix:///run/x.sock, URL-style, is unix:/run/x.sock
    if path in ("", "@"):
        raise BindSyntaxError(f"{value!r}: give a path (unix:/PATH) or a name (unix:@NAME)")
    if path.startswith("@"):
        return Bind("unix", "\0" + path[1:], f"unix:{path}")
    return Bind("unix", path, f"unix:{path}")


def _parse_fd(value: str) -> Bind:
    number = value[len("fd://") :]
    if not number.isdigit():
        raise BindSyntaxError(f"{value!r}: expected fd://N with N a descriptor number")
    return Bind("fd", int(number), f"fd://{int(number)}")


def _parse_systemd(value: str) -> Bind:
    if value == "systemd":
        return Bind("systemd", None, "systemd")
    name = value[len("systemd:") :]
    # sd_listen_fds_with_names(3): names are what FileDescriptorName= allows, and
    # LISTEN_FDNAMES separates them with colons, so a name holds none.
    if not name or ":" in name or not name.isprintable():
        raise BindSyntaxError(
            f"{value!r}: expected systemd (every inherited socket) or systemd:NAME "
            "(those whose FileDescriptorName= is NAME)"
        )
    return Bind("systemd", name, value)


def inherited_socket(fd: int) -> socket.socket:
    """The socket behind descriptor ``fd``, checked: bound, and a stream or datagram socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise BindSyntaxError(f"--bind fd://{fd}: descriptor {fd} is not a socket")
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindSyntaxError(f"--bind fd://{fd}: {exc.strerror or exc}") from None
    try:
        check_inherited(sock, f"--bind fd://{fd}")
    except BindSyntaxError:
        sock.detach()
        raise
    return sock


def check_inherited(sock: socket.socket, where: str) -> None:
    """Refuse an inherited socket no server can serve on: not a stream or datagram
    socket, not bound, or a connection rather than a listener (systemd's ``Accept=yes``
    passes one connection per process; sockserve accepts its own)."""
    if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise BindSyntaxError(f"{where}: neither a stream nor a datagram socket")
    name = sock.getsockname()
    if name in ("", b"") or (isinstance(name, tuple) and name[1] == 0):
        raise BindSyntaxError(f"{where}: the socket is not bound to an address")
    if sock.type == socket.SOCK_STREAM and _is_connected(sock):
        raise BindSyntaxError(
            f"{where}: a connected socket, not a listening one (a .socket unit with "
            "Accept=yes? use Accept=no: sockserve accepts connections itself)"
        )


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def transport_of(sock: socket.socket) -> str:
    """``tcp``, ``udp`` or ``unix`` for a socket (an inherited one, say)."""
    if sock.family == getattr(socket, "AF_UNIX", None):
        return "unix"
    return "tcp" if sock.type == socket.SOCK_STREAM else "udp"


def describe(server: Any) -> str:
    """How the ready line names a server's address: TCP as ``HOST:PORT``, the rest with
    the scheme that would bind it again (``udp://``, ``unix:``)."""
    sock = server.socket
    address = format_address(server.server_address)
    if sock.family == getattr(socket, "AF_UNIX", None):
        kind = "" if sock.type == socket.SOCK_STREAM else " (datagram)"
        return f"unix:{address}{kind}"
    return address if sock.type == socket.SOCK_STREAM else f"udp://{address}"
