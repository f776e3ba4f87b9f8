"""Admission checks: instant yes/no decisions about a connection, made in the accept loop.

A check is called with ``(request, client_address)`` and returns the pair to pass on
(possibly rewritten: an IPv4 client of a dual-stack socket shown as IPv4) or raises
``Refused``. It runs on the loop that accepts, so it must be instant: no I/O, no
blocking, O(1) or O(rules). Anything that reads from the client is a prelude
(``preludes.py``).

Every check declares what it judges (``judges``):

* ``"peer"``: the socket's other end as ``accept()`` reported it, before any prelude. A
  check that asks "is this a trusted proxy?" or that limits accepts per source judges
  the peer.
* ``"client"``: the client the handler will see, after the preludes. Behind a PROXY
  header that is the real client, so allow/deny lists and per-client limits judge it.

The whole order, written once (``serving/core.py`` runs it):

    accept → peer checks → preludes (PROXY header, TLS handshake) → client checks →
    capacity (max_connections / pool) → verify_request → process_request → handler

A check may also hold something per admitted connection (a per-client count): if it has
a ``release(client_address)`` method, the core calls it when that connection's work is
finished, whatever the mode, with the address the check itself returned (a later check
rewriting it changes nothing), and at once if a later check or capacity refuses.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from ..addresses import unmap_ipv4

Judged = Literal["peer", "client"]


class Refused(Exception):
    """Raised by a check or a prelude to refuse a connection.

    ``reason`` is a short key counted in ``server.stats().rejected`` (``"denied"``,
    ``"proxy_bad_header"``); the message, if any, goes to the log (once per episode).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@runtime_checkable
class AdmissionCheck(Protocol):
    """``(request, client_address) -> (request, client_address)``, or ``Refused``."""

    judges: Judged

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]: ...


@runtime_checkable
class ReleasingCheck(AdmissionCheck, Protocol):
    """A check that holds something per admitted connection until its work finishes."""

    def release(self, client_address: Any) -> None: ...


class UnmapIPv4:
    """Show IPv4 clients of a dual-stack socket as IPv4: ``("::ffff:192.0.2.1", p, 0, 0)``
    becomes ``("192.0.2.1", p)``. A peer check, so that everything after it (trusted
    proxies included) sees the plain IPv4 address."""

    judges: Judged = "peer"

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        return request, unmap_ipv4(client_address)

    def __repr__(self) -> str:
        return "UnmapIPv4()"


def check_judges(check: object) -> Judged:
    """What ``check`` judges; a plain callable without the attribute judges the client."""
    judged = getattr(check, "judges", "client")
    if judged == "peer":
        return "peer"
    if judged == "client":
        return "client"
    raise ValueError(f"{check!r}.judges must be 'peer' or 'client', not {judged!r}")
