"""A process-wide policy every server consults at construction: how ``sockserve run``
applies an operator's settings to servers a program builds with code nobody changed.

``sockserve run -m http.server`` cannot pass keywords to the ``ThreadingHTTPServer``
that http.server constructs. Instead it installs a ``ServerPolicy`` before the program
runs, and each server reads the policy while it is built (``BaseServer._apply_policy``,
which the mixins extend, each for its own settings): ``max_connections`` for every
server, ``max_threads`` for ``ThreadingMixIn`` servers (a bounded pool instead of a
thread per request), and ``configure`` hooks, called with each new server, for the
rest (the command registers servers for the drain on SIGTERM there, and applies the
options ``sockserve serve`` applies to its own servers).

Trade-off: a global. It is installed once per process by the command, before any
server exists, and is read-only after; libraries and tests that build servers never
install one, so nothing changes for them. Settings the program gave explicitly are
overridden: the operator who typed ``--max-connections`` means every server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerPolicy:
    """What every server built while the policy is installed takes.

    ``max_connections``: None leaves each server's own. ``max_threads``: None leaves
    ``ThreadingMixIn`` servers one thread per request; N gives them a pool of N.
    ``configure``: called with each new server at the end of ``BaseServer.__init__``,
    before the socket is bound (set attributes, add admission checks and preludes;
    do not touch the socket).
    """

    max_connections: int | None = None
    max_threads: int | None = None
    configure: tuple[Callable[[Any], None], ...] = ()


_installed: ServerPolicy | None = None


def install_policy(policy: ServerPolicy | None) -> None:
    """Make ``policy`` the one new servers consult (None: no policy, the default)."""
    global _installed
    _installed = policy


def current_policy() -> ServerPolicy | None:
    """The installed policy, or None."""
    return _installed
