"""``TCPServer`` (and the Unix stream server): a listening stream socket under
``BaseServer``'s hooks: family and dual stack, bind and listen, accept, TLS close, the
Unix socket file."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Unpack

from ..access import NetworkList
from ..admission.checks import UnmapIPv4
from ..admission.client_checks import ClientLimitSettings
from ..admission.tls_prelude import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    install_tls,
    reload_tls,
    send_close_notify,
)
from ..listeners import bind_socket, listen_socket
from ..sockets import (
    UnixSocketFile,
    accepted_socket_class,
    apply_unix_socket_mode,
    bound_unix_socket_file,
    check_unix_socket_mode,
    family_and_bind_address,
    open_socket,
    remove_unix_socket_file,
)
from .base import BaseServer


class TCPServer(BaseServer):
    """A server on a listening stream socket (TCP by default).

    ``__init__(server_address, RequestHandlerClass, bind_and_activate=True, *,
    dual_stack=None)``. With ``bind_and_activate=False`` the socket exists but is neither
    bound nor listening: set options on ``self.socket``, then call ``server_bind()`` and
    ``server_activate()``.

    Class attributes: ``address_family``, ``socket_type``, ``request_queue_size``
    (backlog), ``allow_reuse_address``, ``allow_reuse_port``, ``dual_stack`` (one IPv6
    socket that takes IPv4 clients too; they appear as plain IPv4 ``client_address``).
    An IPv6 literal host gives an ``AF_INET6`` socket without further ado.
    ``unix_socket_mode`` (Unix servers; default None, the umask decides) gives the socket
    file its permission bits before any client can reach it. A stale socket file at the
    path (nobody bound to it any more) is removed at bind, with an INFO log line; a live
    socket or any other file raises ``UnixSocketPathExistsError``.

    Resource handling: a constructor that raises has closed the socket. ``server_close``
    closes it, and a Unix socket file this server created is removed.
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = socket.SOMAXCONN
    #: Accepted sockets read ``family`` and ``type`` without converting them each time
    #: (``sockets.accepted_socket_class``); the async servers turn it on.
    _accepted_sockets_know_their_kind = False
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    dual_stack: bool = False
    unix_socket_mode: int | None = None
    #: TLS for every connection (``admission/tls_prelude.py``): an ``ssl.SSLContext``
    #: (``sockserve.tls.server_context``) or a ``ContextHolder``; stream servers only.
    ssl_context: Any = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any,
        bind_and_activate: bool = True,
        *,
        dual_stack: bool | None = None,
        max_connections: int | None = None,
        overload_policy: str | None = None,
        proxy_protocol: str | None = None,
        trusted_proxies: NetworkList | Sequence[str] | None = None,
        proxy_header_timeout: float | None = None,
        proxy_header_max: int | None = None,
        ssl_context: Any = None,
        idle_timeout: float | None = None,
        connection_deadline: float | None = None,
        min_transfer_rate: float | None = None,
        min_transfer_window: float | None = None,
        write_timeout: float | None = None,
        **client_limits: Unpack[ClientLimitSettings],
    ) -> None:
        BaseServer.__init__(
            self,
            server_address,
            RequestHandlerClass,
            max_connections=max_connections,
            overload_policy=overload_policy,
            proxy_protocol=proxy_protocol,
            trusted_proxies=trusted_proxies,
            proxy_header_timeout=proxy_header_timeout,
            proxy_header_max=proxy_header_max,
            idle_timeout=idle_timeout,
            connection_deadline=connection_deadline,
            min_transfer_rate=min_transfer_rate,
            min_transfer_window=min_transfer_window,
            write_timeout=write_timeout,
            **client_limits,
        )
        if dual_stack is not None:
            self.dual_stack = dual_stack
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if self.ssl_context is not None:
            install_tls(self, self.ssl_context)
        family = self._choose_family()
        self._unix_path_created: UnixSocketFile | None = None
        #: (pid, socket) of the listener this server bound itself: see owns_listener().
        self._bound_listener: tuple[int, socket.socket] | None = None
        self._accepted_socket_triple: (
            tuple[socket.socket, int, int, int, type[socket.socket]] | None
        ) = None
        self.socket = open_socket(family, self.socket_type, dual_stack=self.dual_stack)
        if family == getattr(socket, "AF_INET6", None):
            self._core.peer_checks.insert(0, UnmapIPv4())
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                self.socket.close()  # in case an overridden server_close() did not
                raise

    def _choose_family(self) -> int:
        family, self.server_address = family_and_bind_address(
            self.server_address, self.address_family, dual_stack=self.dual_stack
        )
        if family != self.address_family:
            self.address_family = family
        return family

    def server_bind(self) -> None:
        """Apply the reuse options and bind; ``server_address`` becomes the real one."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        mode = check_unix_socket_mode(self.socket, self.server_address, self.unix_socket_mode)
        bind_socket(self.socket, self.server_address)
        self._bound_listener = (os.getpid(), self.socket)
        self._remember_unix_path()
        apply_unix_socket_mode(self._unix_path_created, mode)  # before listen(): no client yet
        self.server_address = self.socket.getsockname()

    def owns_listener(self) -> bool:
        """Whether this process bound the listening socket and so holds it alone.

        False for a socket it inherited (``fd://``, systemd, a pre-fork master's fork)
        or one set after binding: another process may be listening on it too, so a
        drain must not change it (``listener_stop.py``), only close its own descriptor.
        """
        bound = self._bound_listener
        return bound is not None and bound[0] == os.getpid() and bound[1] is self.socket

    def server_activate(self) -> None:
        """Listen, with a backlog of ``request_queue_size``."""
        listen_socket(self.socket, self.request_queue_size, self.server_address)

    def server_close(self) -> None:
        """Close the listening socket (and remove the Unix socket file we created)."""
        self._stop_connection_watch()
        self._flush_access_log()
        self.socket.close()
        self._remove_unix_path()

    def fileno(self) -> int:
        """The listening socket's descriptor, for selectors."""
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection: ``(socket, client_address)``."""
        listener = self.socket
        if type(listener) is not socket.socket:
            return listener.accept()  # e.g. an SSLSocket, whose accept() also wraps
        # socket.accept() spends half its time converting family and type to enums for
        # the new socket object (8.2 µs against 4.7 µs measured here); the triple is
        # fixed for a listener, so convert once.
        triple = self._accepted_socket_triple
        if triple is None or triple[0] is not listener:
            kind = socket.socket
            if self._accepted_sockets_know_their_kind:
                kind = accepted_socket_class(listener)
            family, sock_type = int(listener.family), int(listener.type)
            triple = (listener, family, sock_type, listener.proto, kind)
            self._accepted_socket_triple = triple
        fd, address = listener._accept()  # type: ignore[attr-defined]
        conn = triple[4](triple[1], triple[2], triple[3], fileno=fd)
        if socket.getdefaulttimeout() is None and listener.gettimeout():
            conn.setblocking(True)  # as socket.accept() does for a listener with a timeout
        return conn, address

    def reload_tls(self, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
        """New connections get ``context``, or one rebuilt from the files (see docs/tls.md)."""
        return reload_tls(self, context)

    def shutdown_request(self, request: Any) -> None:
        """Send FIN (TLS: close_notify first) so the peer sees the end at once; close."""
        self._core.closing(request)  # the bytes it carried, if traffic is recorded
        if isinstance(request, ssl.SSLSocket):
            send_close_notify(request)
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may be gone already (ENOTCONN)
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        request.close()

    # -- the Unix socket file ----------------------------------------------------------

    def _remember_unix_path(self) -> None:
        created = bound_unix_socket_file(self.socket, self.server_address)
        if created is not None:
            self._unix_path_created = created

    def _remove_unix_path(self) -> None:
        created = getattr(self, "_unix_path_created", None)
        if created is None or created.creator_pid != os.getpid():
            return  # none created; or this is a forked child, and the file is the parent's
        self._unix_path_created = None
        remove_unix_socket_file(created)


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """A stream server on a Unix socket path (or a Linux abstract name)."""

        address_family = socket.AF_UNIX
