"""Inline dispatch: the work runs on the serving thread before the next accept.

Design: nothing to manage, nothing to reap. One slow client stalls every other one, which
is the stdlib's documented behaviour for a plain ``TCPServer``.
"""

from __future__ import annotations

from collections.abc import Callable


def run_inline(work: Callable[[], None]) -> None:
    """Run ``work`` now, letting its exceptions reach the caller."""
    work()
