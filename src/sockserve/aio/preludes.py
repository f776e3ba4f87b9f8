"""Preludes on the event loop: the async mode's driver for ``admission/preludes.py``.

The same ``PreludeRun`` objects the synchronous loop drives from its selector are driven
here from the event loop's readiness callbacks (``add_reader`` / ``add_writer`` on the
raw, non-blocking socket), each under its prelude's ``timeout``. A stalled client costs
a registered socket and a timer, nothing else; the serve loop counts connections in
preludes against ``max_pending_preludes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..admission.preludes import WANT_READ, Prelude, PreludeDone, timed_out


async def run_preludes(
    preludes: Sequence[Prelude], request: Any, client_address: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Take one accepted socket through ``preludes``: the final request, address and
    details (see ``PreludeDone``).

    Raises ``Refused`` (a timeout too). The socket stays non-blocking, as the event
    loop wants it.
    """
    loop = asyncio.get_running_loop()
    request.setblocking(False)
    details: dict[str, Any] = {}
    for prelude in preludes:
        run = prelude.start(request, client_address)
        try:
            async with asyncio.timeout(prelude.timeout):
                while True:
                    step = run.advance()
                    if isinstance(step, PreludeDone):
                        request, client_address = step.request, step.client_address
                        details.update(step.details)
                        break
                    await _ready(loop, request.fileno(), reading=step == WANT_READ)
        except TimeoutError:
            raise timed_out(prelude) from None
    return request, client_address, details


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, reading: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (
        (loop.add_reader, loop.remove_reader) if reading else (loop.add_writer, loop.remove_writer)
    )
    add(fd, _set_done, ready)
    try:
        await ready
    finally:
        remove(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
