"""TLS on a server: the handshake as the last prelude, and the server's side of reloading.

How it works
    ``install_tls(server, ssl_context)`` (called by ``TCPServer.__init__`` when
    ``ssl_context`` is set) keeps the context in a ``ContextHolder`` on the server. In
    the synchronous modes it adds a ``TLSPrelude``: for each accepted connection the
    loop that accepted it advances a ``HandshakeStep`` on its own readiness events
    (``serving/pending_preludes.py``), under ``handshake_timeout``, and the prelude
    hands on the ``ssl.SSLSocket`` with ``{"tls": TLSInfo}`` for ``self.tls``. The
    handler then gets the ``SSLSocket``, blocking again, so ``rfile``/``wfile`` (and
    ``http.server``) work unchanged. The async mode cannot give an ``SSLSocket`` to
    its event loop; it reads the same holder and lets the loop's own TLS do the
    handshake (``aio/connections.py``).

Ordering
    The TLS prelude runs after every other prelude, whenever either was added: a PROXY
    header precedes the ClientHello on the wire, and once the socket is wrapped the
    bytes that follow are TLS records that only OpenSSL may read. Because it is last,
    no driver ever waits for readability on an ``SSLSocket`` that holds decrypted bytes
    the descriptor will not announce (``sslsocket.pending()``): the handler reads them.

Reloading
    ``reload_tls(server, context=None)`` replaces the holder's context (or rebuilds it
    from its files). Each handshake reads the holder when it starts, so new
    connections get the new context and live ones keep theirs; nothing is dropped.

Trade-off: the handshake timeout is per connection, not per byte, so a client that
trickles a ClientHello a byte a second is still cut off at the deadline.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from ..errors import ConfigurationError, TLSHandshakeError
from ..tls import ContextHolder
from ..tls_handshake import HandshakeStep
from .checks import Refused
from .preludes import ORDER_LAST, WANT_READ, WANT_WRITE, PreludeDone

#: Seconds a client gets to complete its TLS handshake. A full TLS 1.2 handshake is two
#: round trips after TCP's one, about 1 s even on a 300 ms satellite path; 10 s leaves
#: ten times that. nginx (``ssl_handshake_timeout``, since 1.25.3) and asyncio
#: (``SSL_HANDSHAKE_TIMEOUT``) default to 60 s, which lets a client that connects and
#: says nothing hold a socket six times longer for no benefit to a real one.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLSPrelude",
    "install_tls",
    "reload_tls",
    "send_close_notify",
    "tls_holder",
]


class TLSPrelude:
    """The prelude that does a connection's TLS handshake; it runs last (see above)."""

    name = "tls"
    order = ORDER_LAST

    def __init__(self, holder: ContextHolder, server: Any) -> None:
        self.holder = holder
        self._server = server

    @property
    def timeout(self) -> float:
        """The server's ``handshake_timeout``, read per connection (it may be changed)."""
        return float(self._server.handshake_timeout)

    def start(self, request: Any, client_address: Any) -> TLSRun:
        return TLSRun(self.holder, request, client_address)

    def __repr__(self) -> str:
        return f"TLSPrelude(timeout={self.timeout:g})"


class TLSRun:
    """One connection's handshake. ``connection`` is what the driver closes if it fails:
    the accepted socket until it is wrapped, the ``SSLSocket`` after (wrapping detaches
    the socket object it was given; the descriptor number stays the same)."""

    def __init__(self, holder: ContextHolder, request: socket.socket, client_address: Any) -> None:
        self._holder = holder
        self._step: HandshakeStep | None = None
        self.connection: Any = request
        self._client_address = client_address

    def advance(self) -> str | PreludeDone:
        try:
            if self._step is None:
                # The context in force now: a reload from here on is for later clients.
                self._step = HandshakeStep(self.connection, self._holder.context)
                self.connection = self._step.sslsocket
            outcome = self._step.advance()
        except TLSHandshakeError as exc:
            raise Refused(exc.reason, str(exc)) from None
        if outcome == "read":
            return WANT_READ
        if outcome == "write":
            return WANT_WRITE
        assert not isinstance(outcome, str)
        return PreludeDone(self._step.sslsocket, self._client_address, {"tls": outcome})


def install_tls(server: Any, ssl_context: Any) -> None:
    """Serve ``server``'s connections over TLS with ``ssl_context`` (or a ``ContextHolder``).

    Raises ``ConfigurationError`` for a datagram server (DTLS is another protocol) or
    for something that is not a context.
    """
    if server.socket_type != socket.SOCK_STREAM:
        raise ConfigurationError(
            f"{type(server).__name__} is a datagram server: ssl_context applies to stream "
            "servers only (TLS needs a stream; DTLS is not supported)"
        )
    if isinstance(ssl_context, ContextHolder):
        holder = ssl_context
    elif isinstance(ssl_context, ssl.SSLContext):
        holder = ContextHolder(ssl_context)
    else:
        raise ConfigurationError(
            f"ssl_context must be an ssl.SSLContext (see sockserve.tls.server_context) or a "
            f"ContextHolder, got {ssl_context!r}"
        )
    timeout = server.handshake_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigurationError(f"handshake_timeout must be a positive number, got {timeout!r}")
    server._tls_holder = holder
    if not getattr(server, "_tls_on_event_loop", False):
        server._core.add_prelude(TLSPrelude(holder, server))


def tls_holder(server: Any) -> ContextHolder | None:
    """The holder of ``server``'s TLS context; None if it serves plain connections."""
    holder: ContextHolder | None = getattr(server, "_tls_holder", None)
    return holder


def reload_tls(server: Any, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """New connections of ``server`` get ``context``, or one rebuilt from its files.

    Returns the context now in force. Raises ``ConfigurationError`` if the server has
    no TLS, or (``TLSConfigurationError``) if the files are bad; then the current
    context stays.
    """
    holder = tls_holder(server)
    if holder is None:
        raise ConfigurationError(
            f"{type(server).__name__} serves without TLS: there is no context to reload "
            "(give it ssl_context)"
        )
    if context is None:
        return holder.reload_from_files()
    holder.replace(context)
    return context


def send_close_notify(conn: ssl.SSLSocket) -> None:
    """Tell the client the TLS stream ends (close_notify), without waiting for its reply.

    ``SSLSocket.shutdown`` alone drops the TLS state and sends a bare FIN, which strict
    clients report as a truncation (OpenSSL 3: "unexpected eof while reading"). A
    blocking ``unwrap()`` would then wait for the client's own close_notify, which a
    client need not send; non-blocking, the alert is written and the wait is skipped.
    """
    try:
        conn.setblocking(False)
        conn.unwrap()
    except (ssl.SSLError, OSError, ValueError):
        pass  # the alert is queued (SSLWantReadError), or the peer is gone already
