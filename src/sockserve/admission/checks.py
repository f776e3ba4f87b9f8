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

    accept → peer checks (trusted proxies) → preludes (PROXY header, then users'
    preludes, then the TLS handshake: ``preludes.py``) → client checks (allow/deny
    lists, per-client limits) → capacity (max_connections / pool) → verify_request →
    process_request → handler

Behind a proxy, everything from the client checks on (``verify_request`` and the
handler too) sees the real client the PROXY header named, not the proxy: the peer
checks are the only ones that judge the proxy itself.

Preludes run by their ``order`` (``preludes.py``), then in the order they were added:
the PROXY header first (``ORDER_FIRST``), users' preludes next, the TLS handshake last
(``ORDER_LAST``, ``tls_prelude.py``) whenever they were added: a PROXY header comes
before the ClientHello on the wire, and after the handshake the bytes are TLS records
only the handler's ``SSLSocket`` may read. In async mode the
event loop does the handshake (``aio/connections.py``), after the preludes and the
client checks, in the request's task.

A check may also hold something per admitted connection (a per-client count): if it has
a ``release(client_address)`` method, the core calls it when that connection's work is
finished, whatever the mode, with the address the check itself returned (a later check
rewriting it changes nothing), and at once if a later check or capacity refuses.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from ..addresses import unmap_ipv4
from ..errors import Refused

__all__ = ["AdmissionCheck", "Judged", "Refused", "ReleasingCheck", "UnmapIPv4", "check_judges"]

Judged = Literal["peer", "client"]


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
