"""sockserve: Python's ``socketserver``, kept exactly, built to hold real traffic.

``import sockserve as socketserver`` runs existing socketserver code unchanged. The data
path is: listening socket (``listeners``) → admission stages (``connection``) → dispatch
strategy (``dispatch``) → handler (``handlers``), wired by ``serve_loop``; the classes
below are the stdlib-compatible facade (``servers``, ``mixins``). ``prefork`` supervises
whole serve loops in worker processes; ``aio`` is the async mode, imported on first use
of one of its names so that the synchronous core never pays for asyncio.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from .access_log import AccessLog
from .errors import (
    AddressError,
    AddressInUseError,
    BindError,
    ClientsDidNotFinish,
    ConfigurationError,
    ConnectionDeadlineError,
    HandlerClassError,
    HostResolutionError,
    IdleTimeoutError,
    LineTooLongError,
    PeerProtocolError,
    PortOutOfRangeError,
    ProxyHeaderError,
    Refused,
    ServerDidNotStop,
    SlowPeerError,
    SocketActivationError,
    SockserveError,
    SystemdEnvironmentError,
    TLSConfigurationError,
    TLSHandshakeError,
    TransferTooSlowError,
    UnixSocketPathExistsError,
    WorkerBootError,
    WriteTimeoutError,
)
from .handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from .metrics import DrainReport, ServerStats
from .mixins import ThreadingMixIn, ThreadPoolMixIn
from .servers import BaseServer, TCPServer, UDPServer

if TYPE_CHECKING:  # the async names, for type checkers; at run time see __getattr__
    from .aio import (
        AsyncBaseRequestHandler,
        AsyncDatagramRequestHandler,
        AsyncServerMixIn,
        AsyncStreamRequestHandler,
        AsyncTCPServer,
        AsyncUDPServer,
        AsyncUnixDatagramServer,
        AsyncUnixStreamServer,
        ReadTimeoutError,
    )
    from .errors import AsyncLineTooLongError

__version__ = "0.1.0"

__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
    # sockserve's own
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "AsyncServerMixIn",
    "AsyncTCPServer",
    "AsyncUDPServer",
    "AsyncBaseRequestHandler",
    "AsyncStreamRequestHandler",
    "AsyncDatagramRequestHandler",
    "LineTooLongError",
    "AsyncLineTooLongError",
    "ReadTimeoutError",
    "ServerStats",
    "DrainReport",
    "AccessLog",
    "SockserveError",
    "ConfigurationError",
    "HandlerClassError",
    "AddressError",
    "PortOutOfRangeError",
    "HostResolutionError",
    "BindError",
    "AddressInUseError",
    "UnixSocketPathExistsError",
    "PeerProtocolError",
    "ProxyHeaderError",
    "SystemdEnvironmentError",
    "SocketActivationError",
    "TLSConfigurationError",
    "TLSHandshakeError",
    "Refused",
    "WorkerBootError",
    "ServerDidNotStop",
    "ClientsDidNotFinish",
    "SlowPeerError",
    "IdleTimeoutError",
    "ConnectionDeadlineError",
    "TransferTooSlowError",
    "WriteTimeoutError",
]


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP, each datagram handled on its own thread."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP, each connection handled on its own thread."""


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    """UDP, datagrams handled by a bounded pool of worker threads."""


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    """TCP, connections handled by a bounded pool of worker threads."""


#: Names served by the ``aio`` subpackage, imported when first asked for.
_ASYNC_NAMES = frozenset(
    {
        "AsyncServerMixIn",
        "AsyncTCPServer",
        "AsyncUDPServer",
        "AsyncUnixStreamServer",
        "AsyncUnixDatagramServer",
        "AsyncBaseRequestHandler",
        "AsyncStreamRequestHandler",
        "AsyncDatagramRequestHandler",
        "AsyncLineTooLongError",
        "ReadTimeoutError",
    }
)


def __getattr__(name: str) -> object:
    # asyncio costs ~10 ms and several MiB to import; code that never names an async
    # class (every socketserver program) should not pay for it.
    if name in _ASYNC_NAMES:
        from . import aio

        value: object = getattr(aio, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ASYNC_NAMES)


if hasattr(os, "fork"):
    from .mixins import ForkingMixIn
    from .prefork import PreforkMixIn, PreforkTCPServer, PreforkUDPServer

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP, each datagram handled in a forked child."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP, each connection handled in a forked child."""

    __all__ += [
        "ForkingUDPServer",
        "ForkingTCPServer",
        "ForkingMixIn",
        "PreforkMixIn",
        "PreforkTCPServer",
        "PreforkUDPServer",
    ]

if hasattr(socket, "AF_UNIX"):
    from .servers import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """Unix stream socket, each connection handled on its own thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """Unix datagram socket, each datagram handled on its own thread."""

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        """Unix stream socket, connections handled by a bounded pool of worker threads."""

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        """Unix datagram socket, datagrams handled by a bounded pool of worker threads."""

    __all__ += [
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
        "ThreadPoolUnixStreamServer",
        "ThreadPoolUnixDatagramServer",
        "AsyncUnixStreamServer",
        "AsyncUnixDatagramServer",
    ]

    if hasattr(os, "fork"):
        from .prefork import PreforkUnixStreamServer

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """Unix stream socket, each connection handled in a forked child."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """Unix datagram socket, each datagram handled in a forked child."""

        __all__ += [
            "ForkingUnixStreamServer",
            "ForkingUnixDatagramServer",
            "PreforkUnixStreamServer",
        ]
