"""How an async request's end is counted and reported, wherever it ends: in the accept
callback (``opening.py``) or in the connection's task (``connections.py``)."""

from __future__ import annotations

import logging
from typing import Any

from ..addresses import format_address
from ..handler_errors import call_handle_error, peer_fault_kind
from ..serving.job import HANDLER_ERROR, UNVERIFIED, RequestJob
from ..serving.traffic import measure

log = logging.getLogger("sockserve.aio.connections")


def report_ending(server: Any, exc: Exception, request: Any, client_address: Any) -> str:
    """Count how a request ended and give it to ``handle_error``; call inside the
    ``except`` block (``handle_error`` reads the exception being handled). Returns the
    outcome counted."""
    outcome = peer_fault_kind(exc) or HANDLER_ERROR
    server._core.count_outcome(outcome)
    call_handle_error(server, request, client_address, log)
    return outcome


def end_verify_error(job: RequestJob, exc: Exception) -> None:
    """``verify_request`` raised: counted, given to ``handle_error`` and closed; call
    inside the ``except`` block, as ``report_ending``."""
    sock = job.request
    job.ticket.outcome = report_ending(job.server, exc, sock, job.client_address)
    measure_traffic(job, sock)
    sock.close()


def end_unverified(job: RequestJob) -> None:
    """``verify_request`` said no: closed unserved, with ``shutdown_request`` as in the
    synchronous servers."""
    job.ticket.outcome = UNVERIFIED
    measure_traffic(job, job.request)
    job.server.shutdown_request(job.request)


def end_lost_before_serving(job: RequestJob, exc: OSError) -> None:
    """The connection was gone before its handler could start (the transport could not be
    made): a peer fault, one line per episode; the caller closes the socket."""
    core = job.server._core
    job.ticket.outcome = "reset"
    core.count_outcome("reset")
    core.peer_fault_log.note(
        "reset", f"{format_address(job.client_address)}: lost before serving: {exc}"
    )


def measure_traffic(job: RequestJob, sock: Any) -> None:
    """Bytes the connection carried, into the ticket, if traffic is recorded: before
    the close (the transport's socket, or a datagram request's size)."""
    if job.server._core.traffic is not None:
        job.ticket.bytes_in, job.ticket.bytes_out = measure(sock)
