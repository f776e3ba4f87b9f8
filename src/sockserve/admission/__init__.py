"""Connection setup: what is decided about a connection before any handler runs.

* ``checks.py``: admission checks, instant decisions made in the accept loop (the peer,
  then the client after the preludes), and ``Refused``.
* ``preludes.py``: what the client must send first (a PROXY header, a TLS handshake),
  driven without blocking by the loop that owns the socket, and their order.
* ``proxy_header.py``: the PROXY protocol's trusted-proxy check and header prelude.
* ``limits.py``: the connection limiter and each admitted request's ``Ticket``.
* ``client_checks.py``: allow/deny lists and per-client limits as client checks
  (``AccessCheck``, ``RatePerClient``, ``ConnectionsPerClient``), built from a server's
  settings or added with ``server.add_admission_check``.

``serving/core.py`` runs them in the order ``checks.py`` writes down.
"""

from .checks import AdmissionCheck, Judged, Refused, ReleasingCheck, UnmapIPv4
from .client_checks import AccessCheck, ClientLimits, ConnectionsPerClient, RatePerClient
from .limits import ConnectionLimiter, Ticket
from .preludes import (
    ORDER_DEFAULT,
    ORDER_FIRST,
    ORDER_LAST,
    WANT_READ,
    WANT_WRITE,
    Prelude,
    PreludeDone,
    PreludeRun,
)
from .proxy_header import ProxyHeaderPrelude, TrustedProxies

__all__ = [
    "ORDER_DEFAULT",
    "ORDER_FIRST",
    "ORDER_LAST",
    "WANT_READ",
    "WANT_WRITE",
    "AccessCheck",
    "AdmissionCheck",
    "ClientLimits",
    "ConnectionsPerClient",
    "ConnectionLimiter",
    "Judged",
    "Prelude",
    "PreludeDone",
    "PreludeRun",
    "ProxyHeaderPrelude",
    "RatePerClient",
    "Refused",
    "ReleasingCheck",
    "Ticket",
    "TrustedProxies",
    "UnmapIPv4",
]
