"""What this machine's loopback offers, for tests that skip with a reason without it."""

from __future__ import annotations

import socket


def has_ipv6_loopback() -> bool:
    """True if a socket can bind ``::1`` (IPv6 may be compiled out or disabled)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
