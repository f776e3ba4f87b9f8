"""The exceptions sockserve raises, in one rooted tree.

::

    SockserveError
    ├── ConfigurationError          (also TypeError)  a setting or argument makes no sense
    │   ├── HandlerClassError                          RequestHandlerClass is not callable
    │   └── SystemdEnvironmentError                    systemd's variables contradict
    │       └── SocketActivationError                  LISTEN_*: no usable sockets
    │   └── TLSConfigurationError   (also OSError)     a certificate, key or CA file we
    │                                                  cannot use; ``path`` names it
    ├── AddressError                (also ValueError)  a server address we cannot use
    │   ├── PortOutOfRangeError     (also OverflowError, like the socket module)
    │   └── HostResolutionError     (also socket.gaierror)
    ├── BindError                   (also OSError, errno kept)  the kernel refused bind/listen
    │   └── AddressInUseError       EADDRINUSE: another socket holds the address
    │       └── UnixSocketPathExistsError                 a file already sits at the path
    ├── LineTooLongError            (also ValueError)  a line longer than the handler's
    │   │                           max_line_length (synchronous and async handlers)
    │   └── AsyncLineTooLongError   (also asyncio.LimitOverrunError)  the async reader's
    ├── ReadTimeoutError            (also TimeoutError)  async mode: no data within timeout
    ├── Refused                     raised by an admission check or a prelude: refuse this
    │                               connection; ``reason`` is counted in stats().rejected
    ├── WorkerBootError             a pre-fork worker failed before it could serve
    ├── ServerDidNotStop            (also RuntimeError)  sockserve.testing: a test server
    │                               did not stop within its deadline
    ├── ClientsDidNotFinish         (also TimeoutError)  sockserve.testing: clients still
    │                               running at run_concurrently's timeout
    ├── SlowPeerError               (also TimeoutError)  the server cut a connection that
    │   │                           broke one of its slow-client limits; ``kind`` names it
    │   ├── IdleTimeoutError        nothing moved for ``idle_timeout`` seconds
    │   ├── ConnectionDeadlineError alive longer than ``connection_deadline``
    │   ├── TransferTooSlowError    sending slower than ``min_transfer_rate`` (slowloris)
    │   └── WriteTimeoutError       not reading our replies for ``write_timeout`` seconds
    └── PeerProtocolError           (also ValueError)  the peer's fault: its bytes break the
        │                           protocol; ``reason`` names the rule, ``reply`` is what
        │                           to send before closing (empty: close at once)
        ├── ProxyHeaderError        a PROXY protocol v1/v2 header we must refuse
        └── TLSHandshakeError       (also OSError, as ssl.SSLError is)  the TLS handshake
                                    failed: garbage, a plain-text client, a refused
                                    client certificate, a version mismatch, EOF

Each class also derives from the built-in exception the standard library raises in the
same situation, so code written against ``socketserver`` that catches ``OSError``,
``OverflowError`` or ``TypeError`` keeps working; the difference is the message, which
always names the problem and the address.

The peer's fault is kept apart from ours (as h11 separates ``RemoteProtocolError`` from
``LocalProtocolError``): a ``PeerProtocolError`` is about one connection, never about the
server, so the right response is to close that connection, count it and keep serving.
Its message quotes at most ``PEER_EXCERPT_BYTES`` of what the peer sent, escaped, so a
hostile peer can neither flood a log line nor write control characters into it.

This module is a leaf: it imports nothing from sockserve, and importing it (or raising
anything in it) does not import asyncio, which costs about 10 ms and several MiB that a
``socketserver`` program never needs.

Why two classes for a line too long: the synchronous handlers raise ``LineTooLongError``
(``StreamRequestHandler.max_line_length``) and must not import asyncio to do it, yet the
async reader's error has always been an ``asyncio.LimitOverrunError`` too, so that code
moved from asyncio (``except asyncio.LimitOverrunError`` around ``readuntil``) keeps
working. One class cannot be both: ``except`` matches by the real base classes
(``PyType_IsSubtype``; no ``__subclasscheck__``), so deriving from asyncio's class means
importing asyncio when the class is made. So ``LineTooLongError`` is plain (a
``SockserveError`` and a ``ValueError``, as asyncio's ``readline`` raises) and is the one
to catch, in either mode. The async reader raises its subclass ``AsyncLineTooLongError``,
which adds ``asyncio.LimitOverrunError`` and is created on first access (module
``__getattr__``; type checkers see the plain definition), by which time the async mode
has imported asyncio anyway. Considered and rejected: giving the eager class asyncio's
base later (``__bases__`` assignment when ``sockserve.aio`` is imported), a class
mutated at import time, the kind of magic the compiled path was just rid of.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING


class SockserveError(Exception):
    """Root of every exception sockserve raises on purpose."""


class ConfigurationError(SockserveError, TypeError):
    """A constructor argument or class attribute that cannot work."""


class HandlerClassError(ConfigurationError):
    """``RequestHandlerClass`` is not something we can call per request."""


class SystemdEnvironmentError(ConfigurationError):
    """Variables systemd sets (``LISTEN_*``, ``WATCHDOG_*``) contradict themselves or us."""


class SocketActivationError(SystemdEnvironmentError):
    """``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` do not describe usable sockets."""


class AddressError(SockserveError, ValueError):
    """A server address that is malformed for the server's address family."""


class PortOutOfRangeError(AddressError, OverflowError):
    """A port outside 0-65535 (the socket module raises OverflowError here)."""


class HostResolutionError(socket.gaierror, AddressError):
    """The host part of the address does not resolve.

    ``gaierror`` comes first so that its ``errno`` and message formatting win.
    """


class BindError(SockserveError, OSError):
    """bind() or listen() failed; ``errno`` is the kernel's."""


class AddressInUseError(BindError):
    """Another socket is bound to the address (EADDRINUSE)."""


class UnixSocketPathExistsError(AddressInUseError):
    """A file already exists at the Unix socket path."""


class ReadTimeoutError(SockserveError, TimeoutError):
    """Async mode: no data arrived within the handler's ``timeout`` seconds."""


class SlowPeerError(SockserveError, TimeoutError):
    """The server cut a connection that broke a slow-client limit (``slow_clients.py``).

    ``kind`` is the peer-fault kind counted in ``stats().peer_faults``. A
    ``TimeoutError``, as a socket timeout is, so ``except TimeoutError`` keeps matching.
    """

    kind = "slow_peer"


class IdleTimeoutError(SlowPeerError):
    """No byte arrived (and none of ours was acknowledged) for ``idle_timeout`` seconds."""

    kind = "idle_timeout"


class ConnectionDeadlineError(SlowPeerError):
    """The connection outlived ``connection_deadline`` seconds."""

    kind = "deadline"


class TransferTooSlowError(SlowPeerError):
    """The client sent, over ``min_transfer_window`` seconds, slower than
    ``min_transfer_rate`` bytes/s while the server waited for it (slowloris)."""

    kind = "too_slow"


class WriteTimeoutError(SlowPeerError):
    """Our replies were waiting to be sent and the client acknowledged none of them for
    ``write_timeout`` seconds (it does not read)."""

    kind = "write_timeout"


class TLSConfigurationError(ConfigurationError, OSError):
    """A certificate, private key or CA file that cannot be used; ``path`` names it.

    An ``OSError`` too, because ``ssl`` raises ``FileNotFoundError`` or ``ssl.SSLError``
    here. The file is kept in ``path``, not ``filename``: ``OSError`` would then print
    ``[Errno None] None: 'cert.pem'`` instead of the message.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


#: The most bytes of peer data an error message quotes (escaped, so up to 4x in text).
PEER_EXCERPT_BYTES = 40


class PeerProtocolError(SockserveError, ValueError):
    """The peer sent bytes the protocol forbids; close this connection, keep serving.

    ``reason`` is a short machine-readable name for the rule that was broken (for
    metrics and tests); ``reply`` is the bytes to send before closing, empty when the
    protocol says to close without a word. ``excerpt`` (optional) is the offending peer
    data: the message quotes at most ``PEER_EXCERPT_BYTES`` of it, escaped.
    """

    reply: bytes = b""

    def __init__(self, reason: str, message: str, *, excerpt: bytes | None = None) -> None:
        if excerpt is not None:
            shown = repr(bytes(excerpt[:PEER_EXCERPT_BYTES]))
            more = "..." if len(excerpt) > PEER_EXCERPT_BYTES else ""
            message = f"{message} (got {shown}{more})"
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[PeerProtocolError], tuple[str, str]]:
        # Pickling would otherwise call the class with the message alone; the excerpt is
        # already folded into the message, so these two arguments rebuild the error.
        return (type(self), (self.reason, self.message))


class ProxyHeaderError(PeerProtocolError):
    """A PROXY protocol header (v1 text or v2 binary) that must be refused.

    The spec (HAProxy's proxy-protocol.txt, section 2.1) says to abort the connection
    without a reply, so ``reply`` stays empty.
    """


class TLSHandshakeError(PeerProtocolError, OSError):
    """The TLS handshake with a client failed; ``reason`` starts with ``tls_``.

    Keys: ``tls_bad_handshake`` (not TLS: garbage or a plain-text client),
    ``tls_no_client_cert``, ``tls_bad_client_cert``, ``tls_version``,
    ``tls_peer_rejected_cert`` (the client refused our certificate), ``tls_eof`` (closed
    mid-handshake), ``tls_other``. An ``OSError`` as the ``ssl.SSLError`` it replaces is,
    so ``except OSError`` around a handshake keeps matching. ``reply`` is always empty:
    where TLS allows an answer, OpenSSL has already sent its alert.
    """


class Refused(SockserveError):
    """Raised by an admission check or a prelude to refuse a connection.

    ``reason`` is a short key counted in ``server.stats().rejected`` (``"denied"``,
    ``"proxy_bad_header"``); the message, if any, goes to the log (once per episode).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        #: Set by a prelude driver when a prelude replaced the socket object (the TLS
        #: prelude wraps it): the one to close instead of the accepted socket.
        self.connection: object = None

    def __reduce__(self) -> tuple[type[Refused], tuple[str, str]]:
        return type(self), (self.reason, str(self))


class WorkerBootError(SockserveError):
    """A pre-fork worker failed before it could serve, so the master stopped instead of
    restarting it in a loop (booting again would fail again and hide the cause)."""


class ServerDidNotStop(SockserveError, RuntimeError):
    """``sockserve.testing``: the server's loop or its request threads did not finish
    within the deadline."""


class ClientsDidNotFinish(SockserveError, TimeoutError):
    """``sockserve.testing``: some callables given to ``run_concurrently`` were still
    running at its timeout (their threads are daemons and are left behind)."""


class LineTooLongError(SockserveError, ValueError):
    """A line (or ``readuntil`` chunk) longer than the handler's ``max_line_length``.

    A ``ValueError`` because asyncio's ``readline`` raises one here. ``consumed`` is the
    number of bytes seen, as in asyncio's ``LimitOverrunError``. The async reader raises
    the subclass ``AsyncLineTooLongError``, which is also an ``asyncio.LimitOverrunError``.
    """

    def __init__(self, message: str, consumed: int) -> None:
        super().__init__(message)
        self.consumed = consumed

    def __reduce__(self) -> tuple[type[LineTooLongError], tuple[str, int]]:
        return type(self), (self.args[0], self.consumed)


_ASYNC_LINE_TOO_LONG_DOC = """The async reader's ``LineTooLongError``: asyncio's kind too.

    asyncio's ``readuntil`` raises ``LimitOverrunError`` at its limit, so ``except``
    clauses written for asyncio keep matching. Created on first access (see the module
    docstring).
    """

if TYPE_CHECKING:
    import asyncio

    class AsyncLineTooLongError(LineTooLongError, asyncio.LimitOverrunError):
        __doc__ = _ASYNC_LINE_TOO_LONG_DOC

else:

    def __getattr__(name: str) -> object:
        if name != "AsyncLineTooLongError":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import asyncio  # only now: see the module docstring

        cls = type(
            "AsyncLineTooLongError",
            (LineTooLongError, asyncio.LimitOverrunError),
            {"__doc__": _ASYNC_LINE_TOO_LONG_DOC, "__module__": __name__},
        )
        globals()[name] = cls  # created once: every later access is a plain lookup
        return cls
