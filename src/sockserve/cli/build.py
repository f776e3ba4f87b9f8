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
from ..errors import ConfigurationError, TLSConfigurationError
from ..mixins import ThreadingMixIn, ThreadPoolMixIn
from ..tls import ContextHolder
from . import activation
from .binds import Bind, transport_of
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
        lambda p: p.target.is_factory and p.settings.given("proxy-protocol"),
        lambda p: (
            f"{p.target.text} is a server factory: set proxy_protocol and trusted_proxies "
            "on the server it builds, not with --proxy-protocol"
        ),
    ),
    (
        lambda p: (
            p.settings.given("proxy-protocol")
            and not p.settings["trusted-proxy"]
            and not all(b.transport == "unix" for b in p.binds)
        ),
        lambda p: (
            "--proxy-protocol needs --trusted-proxy CIDR (repeatable): the networks of the "
            "proxies that may send the header; from anyone else it would let a client "
            "choose its own address"
        ),
    ),
    (
        lambda p: bool(p.settings["trusted-proxy"]) and not p.settings.given("proxy-protocol"),
        lambda p: "--trusted-proxy applies with --proxy-protocol only",
    ),
    (
        lambda p: p.settings.given("proxy-protocol") and any(b.transport == "udp" for b in p.binds),
        lambda p: "--proxy-protocol applies to stream binds (tcp, unix), not udp://",
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
        lambda p: (
            not p.settings.given("tls-cert")
            and (p.settings.given("tls-key") or p.settings.given("tls-ca"))
        ),
        lambda p: "--tls-key and --tls-ca need --tls-cert (the server's certificate)",
    ),
    (
        lambda p: p.settings.given("tls-cert") and any(b.transport == "udp" for b in p.binds),
        lambda p: (
            "--tls-cert serves TLS, which needs a stream: udp:// binds cannot use it "
            "(DTLS is not supported)"
        ),
    ),
    (
        lambda p: p.target.is_factory and p.settings.given("tls-cert"),
        lambda p: (
            f"{p.target.text} is a server factory: give its server ssl_context there; "
            "--tls-cert applies to handler classes"
        ),
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
    """Bind every address; on any failure close those already open and raise.

    ``systemd`` binds stand for the sockets socket activation passed (``activation.py``):
    one server each.
    """
    openings = activation.expand(plan.binds)
    if plan.mode == "prefork" and len(openings) > 1:
        for _, inherited in openings:
            if inherited is not None:
                inherited.close()
        raise ConfigurationError(
            f"--mode prefork serves one socket, and these binds give {len(openings)}; "
            "name one (--bind systemd:NAME) or run one command per socket"
        )
    opened: list[Any] = []
    tls = tls_context(plan.settings)  # one for every bind: one SIGHUP reload
    try:
        for index, (bind, inherited) in enumerate(openings):
            try:
                opened.append(_open(plan, bind, inherited, tls))
            except BaseException:
                for _, unused in openings[index + 1 :]:
                    if unused is not None:
                        unused.close()
                raise
    except BaseException:
        for server in opened:
            server.server_close()
        raise
    return opened


def tls_context(settings: Settings) -> ContextHolder | None:
    """The TLS context ``--tls-cert``/``--tls-key``/``--tls-ca`` ask for, kept with its
    files so that SIGHUP can re-read them; None without ``--tls-cert``.

    ``--tls-ca`` makes client certificates *required*: a CA file given on the command
    line means "only clients with our certificates"; an optional client certificate is
    for code that decides per request (``server_context(require_client_cert=False)``).
    """
    certfile = settings["tls-cert"]
    if certfile is None:
        return None
    cafile = settings["tls-ca"]
    try:
        return ContextHolder.from_files(
            certfile, settings["tls-key"], cafile=cafile, require_client_cert=cafile is not None
        )
    except TLSConfigurationError as exc:
        raise TLSConfigurationError(f"--tls-cert/--tls-key/--tls-ca: {exc}", exc.path) from None


def _open(
    plan: Plan, bind: Bind, inherited: socket.socket | None, tls: ContextHolder | None = None
) -> Any:
    transport = bind.transport if inherited is None else transport_of(inherited)
    address = bind.address if inherited is None else inherited.getsockname()
    try:
        if plan.target.is_factory:
            server = _from_factory(plan.target, address, inherited)
        else:
            server = _from_handler(plan, transport, bind, address, inherited is not None, tls)
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
        _apply_slow_client_limits(plan, server)
        apply_settings(server, plan.settings)
    except BaseException:
        server.server_close()
        raise
    return server


def apply_settings(server: Any, settings: Settings) -> None:
    """What every server the command runs takes from the settings, whoever built it.

    ``sockserve serve`` calls this for each server it opened (from a handler class or a
    factory); ``sockserve run`` calls it for each server the program constructs, before
    that server binds. A new option that shapes every server (logging, metrics, edge
    checks) is applied here, so both commands get it: use attributes and
    ``add_admission_check``/``add_prelude``, not the socket, which may not be bound yet.
    """
    if hasattr(server, "graceful_timeout"):  # a pre-fork master drains its workers
        server.graceful_timeout = settings["drain-timeout"]


def _from_handler(
    plan: Plan, transport: str, bind: Bind, address: Any, adopt: bool, tls: ContextHolder | None
) -> Any:
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
    keywords = _keywords(plan)
    if tls is not None:
        keywords["ssl_context"] = tls
    server = server_class(address, handler, False, **keywords)
    if not adopt:
        try:
            if bind.is_unix_path:
                # Set before the bind: the file has its mode before any client can connect.
                server.unix_socket_mode = plan.settings["unix-mode"]
            server.server_bind()
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
    if settings["proxy-protocol"] is not None:
        keywords["proxy_protocol"] = settings["proxy-protocol"]
        keywords["trusted_proxies"] = settings["trusted-proxy"] or None
    if plan.mode in ("pool", "prefork") and settings["threads"] is not None:
        keywords["max_workers"] = settings["threads"]
    if plan.mode == "prefork":
        keywords["workers"] = settings["workers"]
        keywords["graceful_timeout"] = settings["drain-timeout"]
    for name in CLIENT_LIMIT_OPTIONS:
        if settings[name] not in (None, []):  # an empty list: no --allow given
            keywords[name.replace("-", "_")] = settings[name]
    return keywords


#: The slow-client options, by the server attribute each sets (``slow_clients.py``).
SLOW_CLIENT_OPTIONS = {
    "idle_timeout": "idle-timeout",
    "connection_deadline": "connection-deadline",
    "min_transfer_rate": "min-transfer-rate",
    "write_timeout": "write-timeout",
}


def _apply_slow_client_limits(plan: Plan, server: Any) -> None:
    """Set the limits on ``server`` (0 turns one off). A factory's server keeps its own
    choices but for the options given explicitly."""
    for attribute, option in SLOW_CLIENT_OPTIONS.items():
        if plan.target.is_factory and not plan.settings.given(option):
            continue
        setattr(server, attribute, plan.settings[option] or None)


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
