"""sockserve: Python's ``socketserver``, kept exactly, built to hold real traffic.

``import sockserve as socketserver`` runs existing socketserver code unchanged. The data
path is: listening socket (``listeners``) → admission stages (``connection``) → dispatch
strategy (``dispatch``) → handler (``handlers``), wired by ``serve_loop``; the classes
below are the stdlib-compatible facade (``servers``, ``mixins``).
"""

from __future__ import annotations

import os
import socket

from .errors import (
    AddressError,
    AddressInUseError,
    BindError,
    ConfigurationError,
    HandlerClassError,
    HostResolutionError,
    PortOutOfRangeError,
    SockserveError,
    UnixSocketPathExistsError,
)
from .handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from .metrics import DrainReport, ServerStats
from .mixins import ThreadingMixIn, ThreadPoolMixIn
from .servers import BaseServer, TCPServer, UDPServer

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
    "ServerStats",
    "DrainReport",
    "SockserveError",
    "ConfigurationError",
    "HandlerClassError",
    "AddressError",
    "PortOutOfRangeError",
    "HostResolutionError",
    "BindError",
    "AddressInUseError",
    "UnixSocketPathExistsError",
]


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP, each datagram handled on its own thread."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP, each connection handled on its own thread."""


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    """UDP, datagrams handled by a bounded pool of worker threads."""


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    """TCP, connections handled by a bounded pool of worker threads."""


if hasattr(os, "fork"):
    from .mixins import ForkingMixIn

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP, each datagram handled in a forked child."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP, each connection handled in a forked child."""

    __all__ += ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"]

if hasattr(socket, "AF_UNIX"):
    from .servers import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """Unix stream socket, each connection handled on its own thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """Unix datagram socket, each datagram handled on its own thread."""

    __all__ += [
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """Unix stream socket, each connection handled in a forked child."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """Unix datagram socket, each datagram handled in a forked child."""

        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]
