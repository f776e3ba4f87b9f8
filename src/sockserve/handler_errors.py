"""Reporting a handler's exception to ``handle_error`` without letting a second one escape.

A server's ``handle_error`` is user code and may raise too. Both serve loops report
handler exceptions through ``call_handle_error``, so that a faulty ``handle_error`` costs
a log line, never the synchronous loop or an async connection's task. Counting the error
and closing the request stay with each loop: ``serve_loop.report_handler_error`` and
``aio/connections.report_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from .addresses import format_address


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
