"""Run many clients at once: N attackers beside M well-behaved clients.

Design: one thread per callable, all released together by a barrier so that they really
overlap; the caller gets the results in the order it gave the callables. Every faulty
client bounds itself with its own deadline, so ``timeout`` here only catches a callable
that does not (a plain client with no socket timeout, say).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import ClientsDidNotFinish
from .client_connection import DEFAULT_CLIENT_TIMEOUT

ResultT = TypeVar("ResultT")

#: ``run_concurrently``'s default: each client's own deadline, twice over.
DEFAULT_CONCURRENT_TIMEOUT = 2 * DEFAULT_CLIENT_TIMEOUT


def run_concurrently(
    calls: Sequence[Callable[[], ResultT]],
    *,
    timeout: float = DEFAULT_CONCURRENT_TIMEOUT,
) -> list[ResultT]:
    """Call every callable on its own thread, all starting together; return their
    results in the same order.

    Mix clients with ``functools.partial`` or lambdas::

        outcomes = run_concurrently(
            [partial(trickle, address, b"GET /\\n")] * 10 + [partial(ask, address)] * 3
        )

    Error handling: if any callable raised, a ``BaseExceptionGroup`` (an
    ``ExceptionGroup`` for ordinary exceptions) carries every exception, in call order,
    once all have finished. If some have not finished within ``timeout`` seconds,
    ``ClientsDidNotFinish`` names which.
    """
    results: dict[int, ResultT] = {}
    failures: dict[int, BaseException] = {}
    start_together = threading.Barrier(len(calls)) if calls else None

    def run(index: int) -> None:
        try:
            if start_together is not None:
                start_together.wait(timeout)
            results[index] = calls[index]()
        except BaseException as exc:  # handed to the caller below
            failures[index] = exc

    threads = [
        threading.Thread(target=run, args=(index,), name=f"run_concurrently[{index}]", daemon=True)
        for index in range(len(calls))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    unfinished = [index for index, thread in enumerate(threads) if thread.is_alive()]
    if unfinished:
        raise ClientsDidNotFinish(
            f"calls {unfinished} of {len(calls)} still running after {timeout} s"
        )
    if failures:
        raise BaseExceptionGroup(
            f"{len(failures)} of {len(calls)} concurrent calls raised",
            [failures[index] for index in sorted(failures)],
        )
    return [results[index] for index in range(len(calls))]
