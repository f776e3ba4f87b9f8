"""The exceptions sockserve raises, in one rooted tree.

::

    SockserveError
    ├── ConfigurationError          (also TypeError)  a setting or argument makes no sense
    │   └── HandlerClassError                          RequestHandlerClass is not callable
    ├── AddressError                (also ValueError)  a server address we cannot use
    │   ├── PortOutOfRangeError     (also OverflowError, like the socket module)
    │   └── HostResolutionError     (also socket.gaierror)
    └── BindError                   (also OSError, errno kept)  the kernel refused bind/listen
        └── AddressInUseError       EADDRINUSE: another socket holds the address
            └── UnixSocketPathExistsError                 a file already sits at the path

Each class also derives from the built-in exception the standard library raises in the
same situation, so code written against ``socketserver`` that catches ``OSError``,
``OverflowError`` or ``TypeError`` keeps working; the difference is the message, which
always names the problem and the address.

This module is a leaf: it imports nothing from sockserve.
"""

from __future__ import annotations

import socket


class SockserveError(Exception):
    """Root of every exception sockserve raises on purpose."""


class ConfigurationError(SockserveError, TypeError):
    """A constructor argument or class attribute that cannot work."""


class HandlerClassError(ConfigurationError):
    """``RequestHandlerClass`` is not something we can call per request."""


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
