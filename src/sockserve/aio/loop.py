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
import asyncio.selector_events
import importlib
from collections.abc import Callable
from typing import Any

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


#: The standard library's plain socket transport (private; None if a Python lacks it).
STDLIB_SOCKET_TRANSPORT: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)
#: Whether that transport has a set of private names, by the names: answered by the
#: first transport asked (the names are its class's or set by its ``__init__``), so a
#: connection pays one type check and one dict lookup.
_HAS_NAMES: dict[tuple[str, ...], bool] = {}


def is_stdlib_socket_transport(transport: Any, private_names: tuple[str, ...]) -> bool:
    """Whether ``transport`` is the standard library's plain socket transport and has
    ``private_names`` (what ``receive_switch`` and ``gathered_sends`` use of it)."""
    if STDLIB_SOCKET_TRANSPORT is None or type(transport) is not STDLIB_SOCKET_TRANSPORT:
        return False
    has_names = _HAS_NAMES.get(private_names)
    if has_names is None:
        has_names = all(hasattr(transport, name) for name in private_names)
        _HAS_NAMES[private_names] = has_names
    return has_names
