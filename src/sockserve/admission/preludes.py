"""Preludes: what a connection must say before its handler runs (a PROXY header, a TLS
handshake), read without ever blocking the loop that accepted it.

A ``Prelude`` is configuration (one per server, e.g. "read a PROXY v2 header from a
trusted peer"); ``start(request, client_address)`` gives a ``PreludeRun`` for one
connection. The loop that owns the socket calls ``run.advance()`` whenever the socket is
ready, and the run answers with what to wait for next (``WANT_READ`` / ``WANT_WRITE``),
or ``PreludeDone(request, client_address, details)`` (either may be replaced: the real
client behind a proxy, a TLS socket around the raw one; ``details`` are what the
handler may read, e.g. ``{"proxy": header}``, ``{"tls": info}``), or raises
``Refused``. The run never
blocks: the socket is non-blocking while preludes run.

Who drives it: the selector loop of the synchronous modes (``serving/preludes.py``) and
the event loop of the async mode, each from its own readiness events, so a stalled
client costs a registered socket, not a worker thread or a process. Each prelude has a
``timeout``; past it the connection is refused with reason ``"<name>_timeout"``.
The next prelude starts with what the previous one returned. Connections in preludes
count against their own bound (``max_pending_preludes`` on the server), so stalled
clients cannot exhaust descriptors.

Order among preludes, the rule every prelude follows: a prelude may have an ``order``
(default ``ORDER_DEFAULT``); lower runs first, equal ones in the order they were added
(``ServingCore.add_prelude`` keeps the list sorted so). The wire decides: the PROXY
header precedes everything the client sends, so its prelude
(``admission/proxy_header.py``) has ``ORDER_FIRST``; a TLS handshake wraps everything
after it, so its prelude takes ``ORDER_LAST``; a user's prelude reads plain bytes
between the two.

``drive_blocking`` runs a whole sequence on one socket with a deadline: for
``handle_request()``, which serves exactly one connection anyway.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .checks import Refused

WANT_READ: Final = "read"
WANT_WRITE: Final = "write"

#: ``order`` values (see the module docstring): the PROXY header, other preludes, TLS.
ORDER_FIRST: Final = 0
ORDER_DEFAULT: Final = 50
ORDER_LAST: Final = 100

#: Connections in preludes at once, per server: far above what a busy service has in
#: handshakes at any instant, far below a descriptor limit of 65,536.
DEFAULT_MAX_PENDING_PRELUDES = 1024


@dataclass(frozen=True, slots=True)
class PreludeDone:
    """A prelude's result: the request and client address to continue with, and what
    the handler may read about the connection (``BaseRequestHandler.connection_detail``:
    ``self.proxy``, ``self.tls``)."""

    request: Any
    client_address: Any
    details: Mapping[str, Any] = field(default_factory=dict)


class PreludeRun(Protocol):
    """One prelude in progress on one connection."""

    def advance(self) -> str | PreludeDone:
        """Make what progress the socket allows now: ``WANT_READ``, ``WANT_WRITE``, or
        the result; raise ``Refused`` to end the connection."""
        ...


class Prelude(Protocol):
    """A step every connection of a server goes through before its handler."""

    #: Short name, used in refusal reasons (``"proxy"`` → ``"proxy_timeout"``).
    name: str
    #: Seconds the client gets to complete this prelude.
    timeout: float

    def start(self, request: Any, client_address: Any) -> PreludeRun: ...


def prelude_order(prelude: Prelude) -> int:
    """Where ``prelude`` runs among the others: its ``order``, else ``ORDER_DEFAULT``."""
    order: int = getattr(prelude, "order", ORDER_DEFAULT)
    return order


def timed_out(prelude: Prelude) -> Refused:
    """The refusal of a connection that did not complete ``prelude`` in its ``timeout``:
    reason ``"<name>_timeout"``, the same from every driver."""
    return Refused(
        f"{prelude.name}_timeout", f"{prelude.name} not complete within {prelude.timeout:g} s"
    )


def connection_of(run: PreludeRun | None, request: Any) -> Any:
    """What to close when ``run`` is refused or runs out of time.

    A run that replaces the socket object while it is still running (the TLS prelude
    wraps it at its first step, which detaches the original object) says so in
    ``run.connection``; the descriptor number never changes, so drivers key their
    selectors by it.
    """
    return getattr(run, "connection", request) if run is not None else request


def drive_blocking(
    preludes: Sequence[Prelude], request: Any, client_address: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Run ``preludes`` in order on one connection, waiting in a private selector.

    Returns the final ``(request, client_address, details)`` or raises ``Refused`` (a
    timeout too), whose ``connection`` is the object to close. The socket is left
    non-blocking; the caller restores what the handler needs.
    """
    details: dict[str, Any] = {}
    for prelude in preludes:
        deadline = time.monotonic() + prelude.timeout
        fd = request.fileno()  # kept: a run may swap the object, never the descriptor
        run = prelude.start(request, client_address)
        try:
            with selectors.DefaultSelector() as selector:
                registered: int | None = None
                while True:
                    step = run.advance()
                    if isinstance(step, PreludeDone):
                        request, client_address = step.request, step.client_address
                        details.update(step.details)
                        break
                    events = selectors.EVENT_READ if step == WANT_READ else selectors.EVENT_WRITE
                    if registered is None:
                        selector.register(fd, events)
                    elif registered != events:
                        selector.modify(fd, events)
                    registered = events
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not selector.select(remaining):
                        raise timed_out(prelude)
        except Refused as why:
            why.connection = connection_of(run, request)
            raise
    return request, client_address, details
