"""Socket addresses: how to print them, which family they need, how clients appear.

Pure functions, no sockets opened here. Addresses come in the shapes the ``socket``
module uses: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6,
a ``str``/``bytes``/path for Unix sockets (a leading NUL byte names Linux's abstract
namespace).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

#: Hosts that mean "every interface"; with ``dual_stack`` they become ``"::"``.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def format_address(address: Any) -> str:
    """Render an address for a log line or an error message.

    ``("127.0.0.1", 80)`` → ``127.0.0.1:80``; ``("::1", 80, 0, 0)`` → ``[::1]:80``;
    a Unix path as itself; an abstract Unix name as ``@name``; anything else as repr.
    """
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
        host, port = address[0], address[1]
        if ":" in host:
            return f"[{host}]:{port}"
        return f"{host or '*'}:{port}"
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if isinstance(address, bytes):
        address = address.decode("utf-8", "backslashreplace")
    if isinstance(address, str):
        if address.startswith("\0"):
            return "@" + address[1:]
        return address or "(unnamed Unix socket)"
    return repr(address)


def unix_address(text: str) -> str:
    """A Unix socket address from its written form: ``@name`` → the abstract ``"\\0name"``.

    The inverse of ``format_address`` for Unix names, for command lines and configuration
    files, where a NUL byte cannot be typed. A path (or ``""``) is returned as it is; the
    server classes take addresses as the ``socket`` module does and do not translate.
    """
    if text.startswith("@"):
        return "\0" + text[1:]
    return text


def is_ipv6_literal(host: object) -> bool:
    """True for a host string that is an IPv6 address (optionally with a %scope)."""
    if not isinstance(host, str) or ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def family_for(address: Any, configured: int) -> int:
    """The family to open for ``address`` when the class asks for ``configured``.

    An ``AF_INET`` server given an IPv6 literal gets an ``AF_INET6`` socket instead of the
    stdlib's confusing ``gaierror``; everything else keeps the configured family.
    """
    if (
        configured == socket.AF_INET
        and isinstance(address, tuple)
        and address
        and is_ipv6_literal(address[0])
    ):
        return socket.AF_INET6
    return configured


def is_ipv4_literal(address: Any) -> bool:
    """True for ``("192.0.2.1", port)``-style addresses that name one IPv4 interface.

    The wildcard hosts are not: a dual-stack server maps them to ``"::"``.
    """
    if not (isinstance(address, tuple) and address and isinstance(address[0], str)):
        return False
    host = address[0]
    if host in WILDCARD_HOSTS:
        return False
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False  # a hostname or an IPv6 literal


def dual_stack_address(address: Any) -> Any:
    """Map a wildcard host to ``"::"`` so one IPv6 socket can also take IPv4 clients."""
    if isinstance(address, tuple) and address and address[0] in WILDCARD_HOSTS:
        return ("::", *address[1:])
    return address


def unmap_ipv4(address: Any) -> Any:
    """Show an IPv4 client of a dual-stack socket as plain IPv4.

    The kernel reports such a peer as ``("::ffff:192.0.2.1", port, 0, 0)``; users expect
    ``("192.0.2.1", port)``, the shape an IPv4-only server would give them.
    """
    if (
        isinstance(address, tuple)
        and len(address) == 4
        and isinstance(address[0], str)
        and address[0].startswith("::ffff:")
    ):
        try:
            mapped = ipaddress.IPv6Address(address[0]).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return (str(mapped), address[1])
    return address
