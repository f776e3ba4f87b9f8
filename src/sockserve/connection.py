"""What happens to a connection between accept() and the handler: the admission stages.

Every accepted request passes through an ordered list of stages before ``verify_request``
and the dispatch strategy see it. A stage receives ``(request, client_address)`` and
returns the pair to pass on, possibly changed (the real client behind a proxy, a TLS
socket around the raw one), or raises ``Rejected`` to refuse it; the serve loop then
closes that request and moves on.

Order matters and follows the wire: a PROXY protocol header precedes the TLS ClientHello,
so a PROXY stage must run before a TLS stage; limits run on the true client address.
Today's only built-in stage shows IPv4 clients of a dual-stack socket as IPv4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .addresses import unmap_ipv4

#: ``(request, client_address) -> (request, client_address)``
Stage = Callable[[Any, Any], "tuple[Any, Any]"]


class Rejected(Exception):
    """Raised by a stage to refuse a connection.

    ``reason`` is a short key counted in ``server.stats().rejected`` (``"denied"``,
    ``"bad_proxy_header"``); the message, if any, is logged.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


def unmap_ipv4_client(request: Any, client_address: Any) -> tuple[Any, Any]:
    """Stage: ``("::ffff:192.0.2.1", port, 0, 0)`` becomes ``("192.0.2.1", port)``."""
    return request, unmap_ipv4(client_address)


def run_stages(stages: Sequence[Stage], request: Any, client_address: Any) -> tuple[Any, Any]:
    """Pass the pair through each stage in order; ``Rejected`` propagates."""
    for stage in stages:
        request, client_address = stage(request, client_address)
    return request, client_address
