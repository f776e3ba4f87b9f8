"""Which event loop an async server runs: ``event_loop = "auto" | "asyncio" | "uvloop"``.

``"auto"`` takes uvloop when it is importable and the standard library's loop otherwise,
so the optional speed-up degrades quietly (uvicorn's ``loop="auto"`` does the same).
Asking for ``"uvloop"`` by name when it is missing is a configuration error, raised when
the server is constructed rather than when it starts serving.

The choice resolves to a *factory*: no loop exists until ``serve_forever()`` runs, so a
server built before ``fork()`` creates its loop in the process that serves.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from ..errors import ConfigurationError

#: The accepted values of ``event_loop``.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")

#: ``() -> a new event loop``, as ``asyncio.Runner(loop_factory=...)`` takes it.
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def choose_loop_factory(event_loop: str) -> LoopFactory:
    """The factory for ``event_loop``; ConfigurationError if it cannot be had."""
    if event_loop not in EVENT_LOOPS:
        raise ConfigurationError(
            f"event_loop must be one of {', '.join(map(repr, EVENT_LOOPS))}, got {event_loop!r}"
        )
    if event_loop == "asyncio":
        return asyncio.new_event_loop
    uvloop_factory = _uvloop_factory()
    if uvloop_factory is not None:
        return uvloop_factory
    if event_loop == "uvloop":
        raise ConfigurationError(
            'event_loop="uvloop" but uvloop is not installed: '
            'pip install "sockserve[uvloop]" (or pip install uvloop), '
            'or use event_loop="auto" to fall back to the asyncio loop'
        )
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``, for log lines and tests."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _uvloop_factory() -> LoopFactory | None:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory
