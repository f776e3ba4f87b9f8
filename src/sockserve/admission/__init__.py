"""Connection setup: what is decided about a connection before any handler runs.

* ``checks.py``: admission checks, instant decisions made in the accept loop (the peer,
  then the client after the preludes), and ``Refused``.
* ``preludes.py``: what the client must send first (a PROXY header, a TLS handshake),
  driven without blocking by the loop that owns the socket.
* ``limits.py``: the connection limiter and each admitted request's ``Ticket``.

``serving/core.py`` runs them in the order ``checks.py`` writes down.
"""

from .checks import AdmissionCheck, Judged, Refused, ReleasingCheck, UnmapIPv4
from .limits import ConnectionLimiter, Ticket
from .preludes import WANT_READ, WANT_WRITE, Prelude, PreludeDone, PreludeRun

__all__ = [
    "WANT_READ",
    "WANT_WRITE",
    "AdmissionCheck",
    "ConnectionLimiter",
    "Judged",
    "Prelude",
    "PreludeDone",
    "PreludeRun",
    "Refused",
    "ReleasingCheck",
    "Ticket",
    "UnmapIPv4",
]
