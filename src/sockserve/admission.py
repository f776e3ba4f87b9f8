"""Admitting one accepted request: the admission stages, then the overload policy.

Both serve loops (``serve_loop.py`` and ``aio/serve_loop.py``) call ``admit`` for every
request they accept, so a refused request is counted, logged and closed the same way in
the synchronous and the async modes.
"""

from __future__ import annotations

import logging
from typing import Any

from .addresses import format_address
from .connection import Rejected, Stage, run_stages
from .limits import ConnectionLimiter, Ticket


def admit(
    server: Any,
    limiter: ConnectionLimiter,
    stages: list[Stage],
    request: Any,
    client_address: Any,
    logger: logging.Logger,
) -> tuple[Any, Any, Ticket] | None:
    """Run the admission stages, then the overload policy, for one accepted request.

    Returns the (possibly rewritten) request and address with the request's ticket, or
    None when it was refused: then it has been counted, logged on ``logger`` and closed
    (after ``handle_overload`` for a server at capacity under the "reject" policy).
    Shared by the synchronous and the async serve loops.
    """
    try:
        request, client_address = run_stages(stages, request, client_address)
    except Rejected as why:
        limiter.reject(why.reason)
        logger.info("refused %s: %s", format_address(client_address), why)
        server.shutdown_request(request)
        return None
    capacity, what = server._capacity()
    if server.overload_policy == "reject" and not limiter.has_room(capacity):
        limiter.reject(what)
        limiter.note_capacity(True, capacity, what, "reject")
        try:
            server.handle_overload(request, client_address)
        except Exception:
            logger.exception("handle_overload() raised for %s", format_address(client_address))
        finally:
            server.shutdown_request(request)
        return None
    return request, client_address, limiter.admit(request, client_address)
