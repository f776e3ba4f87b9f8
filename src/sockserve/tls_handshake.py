"""The TLS handshake on an accepted socket, one non-blocking step at a time, and why it
failed.

``HandshakeStep(sock, context)`` wraps an accepted socket; ``advance()`` makes one
non-blocking attempt and says what it waits for (``"read"``/``"write"``) or returns the
negotiated ``TLSInfo``. The loop that owns the socket waits on the descriptor and
enforces the deadline (``admission/tls_prelude.py``), so a client that stalls
mid-handshake costs a socket, never a worker. ``handshake_failure`` turns what OpenSSL,
asyncio or uvloop raised into a ``TLSHandshakeError`` with a reason key to count by;
the async mode uses it too.

Resource handling: ``HandshakeStep`` owns the socket from construction. On success the
caller takes ``step.sslsocket``, sets it blocking (or a timeout) and hands it on. On a
failure, or at the deadline, the caller unregisters the descriptor from its selector and
then calls ``step.close()``; ``advance()`` never closes, because closing a descriptor
that a selector still watches confuses the selector.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Literal

from .errors import TLSHandshakeError
from .tls import TLSInfo, record_server_names, tls_info

#: Bytes of a new connection looked at (without consuming them) before the handshake
#: reads it: enough for the longest HTTP method and its space ("OPTIONS ", "CONNECT ").
FIRST_BYTES_PEEKED = 8

#: A TLS connection opens with a handshake record: content type 22 (RFC 8446 §5.1).
TLS_HANDSHAKE_RECORD = 0x16

#: Request methods of RFC 9110 §9, PATCH (RFC 5789), and "PRI", the HTTP/2 preface
#: (RFC 9113 §3.4): the first word of a plain-text HTTP client on a TLS port.
HTTP_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE"}
    | {b"PATCH", b"PRI"}
)

#: OpenSSL's own verdict that a plain-text HTTP client (or proxy) is talking to us.
OPENSSL_HTTP_REASONS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})

#: OpenSSL's reason (``ssl.SSLError.reason``) → our reason key. Names as OpenSSL 1.1.1
#: to 3.x spell them; the handshake tests produce the common ones here. An unknown
#: reason is counted as ``tls_other`` and its text is logged.
SSL_REASONS: dict[str, str] = {
    # Not TLS at all: a plain-text client, a port scanner, garbage.
    "HTTP_REQUEST": "tls_bad_handshake",
    "HTTPS_PROXY_REQUEST": "tls_bad_handshake",
    "WRONG_VERSION_NUMBER": "tls_bad_handshake",
    "UNKNOWN_PROTOCOL": "tls_bad_handshake",
    "PACKET_LENGTH_TOO_LONG": "tls_bad_handshake",
    "RECORD_LAYER_FAILURE": "tls_bad_handshake",
    # Mutual TLS: the client's certificate is missing or does not verify.
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "tls_no_client_cert",
    "CERTIFICATE_VERIFY_FAILED": "tls_bad_client_cert",
    # No protocol version in common.
    "UNSUPPORTED_PROTOCOL": "tls_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "tls_version",
    "NO_PROTOCOLS_AVAILABLE": "tls_version",
    "VERSION_TOO_LOW": "tls_version",
    # The client's alert about *our* certificate (expired, unknown CA, wrong name).
    "TLSV1_ALERT_UNKNOWN_CA": "tls_peer_rejected_cert",
    "SSLV3_ALERT_BAD_CERTIFICATE": "tls_peer_rejected_cert",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "tls_peer_rejected_cert",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "tls_peer_rejected_cert",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "tls_peer_rejected_cert",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "tls_peer_rejected_cert",
    # The connection ended mid-handshake.
    "UNEXPECTED_EOF_WHILE_READING": "tls_eof",
}

#: Errnos of a connection that went away under us: counted as ``tls_eof``.
CONNECTION_GONE_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT}
)


class HandshakeStep:
    """The server side of one TLS handshake, advanced by a non-blocking loop.

    ``HandshakeStep(sock, context)`` sets the accepted socket non-blocking and wraps it
    (the step owns it from then on). Each ``advance()`` makes one attempt: ``"read"``
    means wait until ``fileno()`` is readable, ``"write"`` until writable, then call
    again; a ``TLSInfo`` means done. The caller owns the deadline.

    After success: ``sslsocket.setblocking(True)`` or ``settimeout(seconds)``, then hand
    it on; ``makefile()`` (``StreamRequestHandler``'s rfile/wfile) works on it. Mind
    that OpenSSL may already hold application data the client sent straight after its
    handshake (``sslsocket.pending()``): a loop that next waits for readability must
    read that first, since the descriptor will not signal it.

    Error handling: a failed handshake raises ``TLSHandshakeError``; ``reason`` says
    why, and a plain-text HTTP client gets a hint in the message. Then the caller
    unregisters the descriptor and calls ``close()``.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        record_server_names(context)
        sock.setblocking(False)
        try:
            self._sslsocket = context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:  # the peer is gone already
            sock.close()
            raise TLSHandshakeError("tls_eof", f"connection lost before TLS: {exc}") from exc
        self._first_bytes: bytes | None = None
        self._info: TLSInfo | None = None

    @property
    def sslsocket(self) -> ssl.SSLSocket:
        """The wrapped socket: the handler's connection once ``advance()`` is done."""
        return self._sslsocket

    def fileno(self) -> int:
        """The descriptor to wait on (the accepted socket's own)."""
        return self._sslsocket.fileno()

    def close(self) -> None:
        """Close the connection (after a failure or the deadline)."""
        self._sslsocket.close()

    def advance(self) -> Literal["read", "write"] | TLSInfo:
        """One non-blocking attempt at the handshake: what to wait for, or the result."""
        if self._info is not None:
            return self._info
        if self._first_bytes is None:
            self._first_bytes = self._peek_first_bytes()
            if self._first_bytes is None:
                # Nothing yet: OpenSSL could only wait too. Peeking again after a
                # do_handshake() that consumed the ClientHello would see the client's
                # next record (an encrypted one in TLS 1.3) and judge a refused client
                # certificate "not TLS" (seen: 1 run in 3).
                return "read"
        try:
            self._sslsocket.do_handshake()
        except ssl.SSLWantReadError:
            return "read"
        except ssl.SSLWantWriteError:
            return "write"
        except OSError as exc:  # ssl.SSLError is an OSError
            raise self._failure(exc) from exc
        self._info = tls_info(self._sslsocket)
        return self._info

    def _peek_first_bytes(self) -> bytes | None:
        """The client's first bytes, left in place for OpenSSL; None if none came yet."""
        try:
            # socket.socket.recv: the plain descriptor, beneath the TLS layer.
            return socket.socket.recv(self._sslsocket, FIRST_BYTES_PEEKED, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None  # the handshake attempt will meet the same error and report it

    def _failure(self, exc: OSError) -> TLSHandshakeError:
        return handshake_failure(exc, self._first_bytes)


def handshake_failure(exc: OSError, first_bytes: bytes | None = None) -> TLSHandshakeError:
    """The ``TLSHandshakeError`` (with its reason key) for a handshake that raised ``exc``.

    ``first_bytes``: what the client sent first, if known (``HandshakeStep`` peeks at
    it; the async mode, where the event loop's TLS reads the socket, does not know it
    and relies on OpenSSL's reason alone). Also for the errors asyncio and uvloop raise
    from ``connect_accepted_socket(ssl=...)``.
    """
    first = first_bytes
    openssl_reason = exc.reason if isinstance(exc, ssl.SSLError) else None
    if first == b"":
        return TLSHandshakeError("tls_eof", "closed before sending a TLS ClientHello")
    looks_like_http = openssl_reason in OPENSSL_HTTP_REASONS or (
        first is not None and first.split(b" ", 1)[0] in HTTP_METHODS
    )
    if looks_like_http:
        return TLSHandshakeError(
            "tls_bad_handshake",
            f"a plain-text HTTP request on a TLS port (first bytes {first!r}): "
            "the client should use https://",
        )
    if first and first[0] != TLS_HANDSHAKE_RECORD:
        return TLSHandshakeError(
            "tls_bad_handshake", f"not a TLS ClientHello (first bytes {first!r})"
        )
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return TLSHandshakeError("tls_eof", f"closed mid-handshake: {exc}")
    if openssl_reason is not None:
        reason = SSL_REASONS.get(openssl_reason, "tls_other")
        detail = getattr(exc, "verify_message", None) or openssl_reason
        return TLSHandshakeError(reason, f"TLS handshake failed: {detail}")
    if isinstance(exc, ConnectionError) or exc.errno in CONNECTION_GONE_ERRNOS:
        return TLSHandshakeError("tls_eof", f"connection lost mid-handshake: {exc}")
    return TLSHandshakeError("tls_other", f"TLS handshake failed: {exc}")
