"""From settings and a target to bound servers: one server per ``--bind``.

The server class is data: a transport base (``TRANSPORTS``) under the mode's mixins
(``MODE_MIXINS``), with ``daemon_threads`` set so that leaving the process never waits
for a request thread (the command bounds its stop itself, see ``serving.py``).
``RULES`` holds the combinations that make no sense, each with the one line that says
why; a new option that only fits some modes adds a rule there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .. import servers
from ..errors import ConfigurationError
from ..mixins import ThreadingMixIn, ThreadPoolMixIn
from .binds import Bind, inherited_socket, transport_of
from .config import Settings
from .targets import Target, handler_kind, is_async_handler

#: Options that become the server keywords of the same name (admission/client_checks.py).
CLIENT_LIMIT_OPTIONS = (
    "allow",
    "deny",
    "max-connections-per-client",
    "client-rate",
    "client-burst",
)

#: The stdlib-shaped base class for each transport, synchronous and async.
TRANSPORTS: dict[tuple[str, bool], str] = {
    ("tcp", False): "TCPServer",
    ("udp", False): "UDPServer",
    ("unix", False): "UnixStreamServer",
    ("unix-datagram", False): "UnixDatagramServer",
    ("tcp", True): "AsyncTCPServer",
    ("udp", True): "AsyncUDPServer",
    ("unix", True): "AsyncUnixStreamServer",
    ("unix-datagram", True): "AsyncUnixDatagramServer",
}


def _mode_mixins(mode: str, is_async: bool) -> tuple[type, ...]:
    if mode == "threading":
        return (ThreadingMixIn,)
    if mode == "pool":
        return (ThreadPoolMixIn,)
    if mode == "forking":
        from ..mixins import ForkingMixIn

        return (ForkingMixIn,)
    if mode == "prefork":
        from ..prefork import PreforkMixIn

        # Each worker runs one event loop, or a bounded pool of threads.
        return (PreforkMixIn,) if is_async else (PreforkMixIn, ThreadPoolMixIn)
    return ()  # sync, async: the base class alone


@dataclass(frozen=True)
class Plan:
    """What will be served: the target, the resolved mode and the binds."""

    target: Target
    mode: str
    binds: list[Bind]
    settings: Settings

    @property
    def is_async(self) -> bool:
        return not self.target.is_factory and is_async_handler(self.target.obj)


Rule = tuple[Callable[[Plan], bool], Callable[[Plan], str]]

RULES: list[Rule] = [
    (
        lambda p: (
            p.settings.given("bind") and (p.settings.given("host") or p.settings.given("port"))
        ),
        lambda p: "give --bind, or --host/--port for one TCP bind, not both",
    ),
    (
        lambda p: (
            p.target.is_factory
            and any(p.settings.given(n) for n in ("mode", "workers", "threads", "max-connections"))
        ),
        lambda p: (
            f"{p.target.text} is a server factory: it chooses its own class, so "
            "--mode, --workers, --threads and --max-connections do not apply"
        ),
    ),
    (
        lambda p: p.target.is_factory and any(p.settings.given(n) for n in CLIENT_LIMIT_OPTIONS),
        lambda p: (
            f"{p.target.text} is a server factory: set allow, deny and the per-client limits "
            "on the server it builds (--allow, --deny, --max-connections-per-client, "
            "--client-rate and --client-burst do not apply)"
        ),
    ),
    (
        lambda p: p.settings.given("client-burst") and not p.settings.given("client-rate"),
        lambda p: "--client-burst needs --client-rate",
    ),
    (
        lambda p: (
            p.settings.given("max-connections-per-client")
            and any(b.transport == "udp" for b in p.binds)
        ),
        lambda p: (
            "--max-connections-per-client applies to stream binds, not udp:// (a datagram "
            "holds no connection); limit datagram clients with --client-rate"
        ),
    ),
    (
        lambda p: p.mode in ("forking", "prefork") and not hasattr(os, "fork"),
        lambda p: f"--mode {p.mode} needs os.fork(), which this platform does not have",
    ),
    (
        lambda p: p.is_async and p.mode not in ("async", "prefork"),
        lambda p: f"{p.target.name}.handle is async def: serve it with --mode async (or prefork)",
    ),
    (
        lambda p: not p.target.is_factory and not p.is_async and p.mode == "async",
        lambda p: (
            f"--mode async needs a handler whose handle is async def; {p.target.name}.handle is not"
        ),
    ),
    (
        lambda p: p.settings.given("workers") and p.mode != "prefork",
        lambda p: "--workers applies to --mode prefork only",
    ),
    (
        lambda p: p.settings.given("threads") and p.mode not in ("pool", "prefork"),
        lambda p: "--threads applies to --mode pool and prefork only",
    ),
    (
        lambda p: p.settings.given("threads") and p.mode == "prefork" and p.is_async,
        lambda p: "--threads does not apply to async prefork workers (one event loop each)",
    ),
    (
        lambda p: p.mode == "prefork" and len(p.binds) > 1,
        lambda p: "--mode prefork serves one --bind; run one command per address",
    ),
    (
        lambda p: p.settings.given("unix-mode") and not any(b.is_unix_path for b in p.binds),
        lambda p: "--unix-mode applies to unix:/PATH binds only, and there is none",
    ),
]


def plan(target: Target, settings: Settings) -> Plan:
    """Resolve the mode and the binds; refuse combinations in ``RULES``."""
    binds = list(settings["bind"]) or [Bind.tcp(settings["host"], settings["port"])]
    mode = settings["mode"]
    if mode == "auto":
        is_async = not target.is_factory and is_async_handler(target.obj)
        mode = "factory" if target.is_factory else "async" if is_async else "threading"
    result = Plan(target, mode, binds, settings)
    for broken, message in RULES:
        if broken(result):
            raise ConfigurationError(message(result))
    return result


def open_servers(plan: Plan) -> list[Any]:
    """Bind every address; on any failure close those already open and raise."""
    opened: list[Any] = []
    try:
        for bind in plan.binds:
            opened.append(_open(plan, bind))
    except BaseException:
        for server in opened:
            server.server_close()
        raise
    return opened


def _open(plan: Plan, bind: Bind) -> Any:
    inherited = inherited_socket(bind.address) if bind.transport == "fd" else None
    transport = bind.transport if inherited is None else transport_of(inherited)
    address = bind.address if inherited is None else inherited.getsockname()
    try:
        if plan.target.is_factory:
            server = _from_factory(plan.target, address, inherited)
        else:
            server = _from_handler(plan, transport, bind, address, inherited is not None)
    except BaseException:
        if inherited is not None:
            inherited.close()
        raise
    try:
        if inherited is not None:
            _adopt(server, inherited)
        elif plan.target.is_factory and bind.is_unix_path and plan.settings["unix-mode"]:
            os.chmod(server.server_address, plan.settings["unix-mode"])
        server.daemon_threads = True  # a factory's server too: the stop stays bounded
        if hasattr(server, "graceful_timeout"):  # a pre-fork master drains its workers
            server.graceful_timeout = plan.settings["drain-timeout"]
    except BaseException:
        server.server_close()
        raise
    return server


def _from_handler(plan: Plan, transport: str, bind: Bind, address: Any, adopt: bool) -> Any:
    handler = plan.target.obj
    kind = handler_kind(handler)
    wanted = "datagram" if transport == "udp" else "stream" if transport == "tcp" else kind
    if kind not in ("any", wanted):
        raise ConfigurationError(
            f"{plan.target.name} is a {kind} handler; {bind.text} needs a {wanted} handler "
            f"(sockserve.{wanted.capitalize()}RequestHandler or its async twin)"
        )
    if transport == "unix" and kind == "datagram":
        transport = "unix-datagram"
    server_class = _server_class(plan.mode, transport, plan.is_async)
    server = server_class(address, handler, False, **_keywords(plan))
    if not adopt:
        try:
            server.server_bind()
            if bind.is_unix_path and plan.settings["unix-mode"] is not None:
                os.chmod(server.server_address, plan.settings["unix-mode"])
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
    return server


def _server_class(mode: str, transport: str, is_async: bool) -> type:
    module: ModuleType = servers
    if is_async:
        from .. import aio

        module = aio
    base = getattr(module, TRANSPORTS[transport, is_async], None)
    if base is None:
        raise ConfigurationError(f"{transport} sockets are not available on this platform")
    mixins = _mode_mixins(mode, is_async)
    name = "".join(m.__name__.removesuffix("MixIn") for m in mixins) + base.__name__
    return type(name, (*mixins, base), {"daemon_threads": True})


def _keywords(plan: Plan) -> dict[str, Any]:
    settings = plan.settings
    keywords: dict[str, Any] = {"max_connections": settings["max-connections"]}
    if plan.mode in ("pool", "prefork") and settings["threads"] is not None:
        keywords["max_workers"] = settings["threads"]
    if plan.mode == "prefork":
        keywords["workers"] = settings["workers"]
        keywords["graceful_timeout"] = settings["drain-timeout"]
    for name in CLIENT_LIMIT_OPTIONS:
        if settings[name] not in (None, []):  # an empty list: no --allow given
            keywords[name.replace("-", "_")] = settings[name]
    return keywords


def _from_factory(target: Target, address: Any, inherited: socket.socket | None) -> Any:
    try:
        if inherited is None:
            server = target.obj(address)
        else:
            server = target.obj(address, bind_and_activate=False)
    except (ConfigurationError, OSError):
        raise
    except Exception as exc:
        raise ConfigurationError(f"{target.text}({address!r}) raised {exc!r}") from None
    if not all(hasattr(server, name) for name in ("drain", "serve_forever", "socket")):
        raise ConfigurationError(
            f"{target.text} returned {server!r}, not a sockserve server (it has no drain())"
        )
    return server


def _adopt(server: Any, sock: socket.socket) -> None:
    """Serve on an inherited socket: replace the one the server opened, listen if needed."""
    unused, server.socket = server.socket, sock
    unused.close()
    server.server_address = sock.getsockname()
    if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        server.server_activate()
