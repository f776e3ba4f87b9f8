"""How a request ended badly: the peer's doing, or an error to report with a traceback.

A client that resets, vanishes, stays silent past the handler's timeout or sends a line
over the limit is routine for a server on a real network: it is a *peer fault*, counted
by kind in ``stats().peer_faults`` and logged as one line per episode, never as an ERROR
with a traceback. Anything else a handler raises is a *handler error*: counted, and
given to ``handle_error`` (which logs it with the traceback). Both loops and every
dispatcher classify with ``peer_fault_kind`` and report through ``call_handle_error``,
so a user's own ``handle_error`` sees both kinds in every mode.
"""

from __future__ import annotations

import logging
from typing import Any

from . import errors
from .addresses import format_address

#: Exceptions that mean the client ended the conversation, by the kind counted.
PEER_FAULT_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    # The server's slow-client limits (slow_clients.py): before TimeoutError, whose
    # subclasses they are.
    (errors.IdleTimeoutError, "idle_timeout"),
    (errors.ConnectionDeadlineError, "deadline"),
    (errors.TransferTooSlowError, "too_slow"),
    (errors.WriteTimeoutError, "write_timeout"),
    (ConnectionError, "reset"),  # reset, broken pipe, aborted: the peer is gone
    (TimeoutError, "timeout"),  # socket.timeout and ReadTimeoutError: a silent peer
    (errors.LineTooLongError, "line_too_long"),  # over the handler's max_line_length
    (errors.PeerProtocolError, "bad_input"),  # bytes the protocol forbids
)


def peer_fault_kind(exc: BaseException) -> str | None:
    """The peer-fault kind of ``exc``, or None when it is a handler error."""
    for kind, name in PEER_FAULT_KINDS:
        if isinstance(exc, kind):
            return name
    return None


def call_handle_error(
    server: Any, request: Any, client_address: Any, logger: logging.Logger
) -> None:
    """Give the current exception to ``handle_error``; if that raises too, log it on
    ``logger`` instead of letting it end the loop or the connection's task."""
    try:
        server.handle_error(request, client_address)
    except Exception:
        logger.exception(
            "handle_error() itself raised while reporting an error for %s",
            format_address(client_address),
        )
