"""``sockserve serve TARGET``: finding what TARGET names, and what kind of thing it is.

TARGET is ``MODULE:NAME`` (an importable module) or ``PATH.py:NAME`` (a file, loaded as a
module named after it, with its directory put first on ``sys.path`` so that its own
imports work). NAME may be dotted (``Outer.Inner``). It names either

- a **request handler class** (a ``BaseRequestHandler`` subclass, sockserve's or the
  stdlib's, or any class whose ``handle`` is ``async def``): the command picks the server
  class for each bind's transport and the mode; or
- a **server factory**: a function called as ``factory(server_address)`` (and, for an
  inherited ``fd://`` socket, ``factory(server_address, bind_and_activate=False)``) that
  returns a sockserve server; it chooses its own class and handler, so ``--mode``,
  ``--workers``, ``--threads`` and ``--max-connections`` do not apply.

Anything else (a server class, a number, a module) is refused with one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import socketserver
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from ..servers import BaseServer


@dataclass(frozen=True)
class Target:
    """What TARGET named: ``obj``, and ``is_factory`` (else it is a handler class)."""

    obj: Any
    text: str
    is_factory: bool = False

    @property
    def name(self) -> str:
        return str(getattr(self.obj, "__name__", self.text))


def load_target(text: str) -> Target:
    module_part, colon, attribute = text.rpartition(":")
    if not colon or not module_part or not attribute:
        raise ConfigurationError(f"TARGET must be MODULE:NAME or PATH.py:NAME, got {text!r}")
    module = _load_module(module_part)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{module_part!r} has no attribute {attribute!r} (TARGET {text!r})"
            ) from None
    return classify(obj, text)


def classify(obj: Any, text: str) -> Target:
    if inspect.isclass(obj):
        if issubclass(obj, (BaseServer, socketserver.BaseServer)):
            raise ConfigurationError(
                f"{text} is a server class; name its request handler class, or a "
                "factory function that builds the server from an address"
            )
        if issubclass(obj, (BaseRequestHandler, socketserver.BaseRequestHandler)) or (
            is_async_handler(obj)
        ):
            return Target(obj, text)
    elif inspect.isfunction(obj) or inspect.ismethod(obj):
        return Target(obj, text, is_factory=True)
    raise ConfigurationError(
        f"{text} is {obj!r}: not a request handler class (a RequestHandlerClass) "
        "nor a server factory function"
    )


def is_async_handler(handler: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(handler, "handle", None))


def handler_kind(handler: Any) -> str:
    """``stream``, ``datagram``, or ``any`` (a plain ``BaseRequestHandler`` takes both)."""
    if is_async_handler(handler):
        from ..aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler

        if issubclass(handler, AsyncDatagramRequestHandler):
            return "datagram"
        if issubclass(handler, AsyncStreamRequestHandler):
            return "stream"
        return "any"
    if issubclass(handler, (DatagramRequestHandler, socketserver.DatagramRequestHandler)):
        return "datagram"
    if issubclass(handler, (StreamRequestHandler, socketserver.StreamRequestHandler)):
        return "stream"
    return "any"


def _load_module(spec: str) -> Any:
    if spec.endswith(".py"):
        return _load_file(Path(spec))
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise ConfigurationError(f"no module named {spec!r}") from None
        raise ConfigurationError(f"importing {spec!r} failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise ConfigurationError(f"importing {spec!r} failed: {_one_line(exc)}") from None


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigurationError(f"no file {str(path)!r}")
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot load {str(path)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigurationError(f"loading {str(path)!r} failed: {_one_line(exc)}") from None
    return module


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0] if text else type(exc).__name__
