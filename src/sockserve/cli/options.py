"""The option table: every setting of the command, once, for the command line, the
environment (``SOCKSERVE_<NAME>``) and the config file (``name = value``, dashes).

Adding an option is one row here plus the code that applies it (``build.py`` for what
shapes a server, ``__init__.py`` for process-wide matters such as logging). Each row
parses text (from argv or the environment) and checks values from TOML the same way, so
an error names the option however it was given. Rules about options that do not fit
together live in ``build.py``, next to the code that would otherwise misbehave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..access import parse_network
from .binds import Bind, BindSyntaxError

#: Concurrency modes; ``auto`` picks async for an ``async def handle``, else threading.
MODES = ("auto", "threading", "pool", "prefork", "forking", "sync", "async")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
PROXY_VERSIONS = ("v1", "v2", "any")
#: Environment variables read elsewhere in sockserve: known, so no "unknown" warning.
OTHER_ENVIRONMENT = frozenset({"SOCKSERVE_PURE_PYTHON"})  # aio/fastpath.py
ENV_PREFIX = "SOCKSERVE_"
#: Where ``--metrics PORT`` listens: the endpoint has no authentication.
LOOPBACK = "127.0.0.1"


class OptionValueError(ValueError):
    """A value an option cannot take; the message says what it can take."""


@dataclass(frozen=True)
class Option:
    """One setting. ``parse`` turns text into the value; ``default`` None means unset.

    ``many``: a list (``--bind`` repeats; the environment separates items by spaces; the
    file takes a string or an array). ``unset``: what None means, for help and
    ``--print-config``.
    """

    name: str
    help: str
    parse: Callable[[str], Any]
    default: Any = None
    metavar: str | None = None
    many: bool = False
    unset: str = ""

    @property
    def key(self) -> str:
        """The attribute name: ``drain_timeout``."""
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name

    def from_text(self, text: str) -> Any:
        if self.many:
            return [self.parse(item) for item in text.split()]
        return self.parse(text)

    def from_toml(self, value: object) -> Any:
        """A value from the config file: the TOML type the text form implies."""
        if self.many:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise OptionValueError("expected a string or an array of strings")
            return [self.parse(item) for item in items]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise OptionValueError(f"expected a string or a number, got {value!r}")
        if isinstance(value, int) and self.parse is parse_octal_mode:
            return _check_mode(value)  # TOML writes 0o660 as a number
        return self.parse(str(value))


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise OptionValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


def count(text: str) -> int:
    """A whole number >= 1 (workers, threads, connections)."""
    try:
        value = int(text)
    except ValueError:
        raise OptionValueError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise OptionValueError(f"must be at least 1, got {value}")
    return value


def per_second(text: str) -> float:
    """A positive rate (connections per second); fractions allowed (0.5: one per 2 s)."""
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"expected a number per second, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise OptionValueError(f"must be a finite number > 0, got {text!r}")
    return value


def network(text: str) -> str:
    """A CIDR network or one address, checked now so that a typo stops the command."""
    try:
        parse_network(text)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None
    return text.strip()


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise OptionValueError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise OptionValueError(f"a port is 0-65535 (0: any free port), got {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise OptionValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def limit(text: str) -> float:
    """A positive number, or 0 / "off" to turn the limit off (then 0.0)."""
    if text.strip().lower() in ("off", "none", "0"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"expected a number, or 0/off to disable, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise OptionValueError(f"must be a finite number >= 0 (0: off), got {text!r}")
    return value


# The slow-client limits the command sets (the library's defaults are all off, as the
# stdlib's). Each number is a widely deployed server's default for the same job:
#: nginx's client_body_timeout and send_timeout are 60 s; HAProxy's ``timeout client`` is
#: the same idea (its manual's examples use 30-60 s).
IDLE_TIMEOUT_SECONDS = 60.0
#: nginx's keepalive_time (1.19.10+): a connection is closed after an hour of requests.
CONNECTION_DEADLINE_SECONDS = 3600.0
#: Apache's mod_reqtimeout default, ``header=20-40,MinRate=500 body=20,MinRate=500``.
MIN_TRANSFER_BYTES_PER_SECOND = 500.0
#: nginx's send_timeout: 60 s between two successful writes to the client.
WRITE_TIMEOUT_SECONDS = 60.0


def parse_octal_mode(text: str) -> int:
    try:
        value = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise OptionValueError(f"expected an octal mode such as 0660, got {text!r}") from None
    return _check_mode(value)


def _check_mode(value: int) -> int:
    if not 0 <= value <= 0o777:
        raise OptionValueError(f"a mode is 0-0777, got {value:o}")
    return value


def name(text: str) -> str:
    if not text.strip():
        raise OptionValueError("must not be empty")
    return text.strip()


def metrics_address(text: str) -> Bind:
    """``PORT`` (on loopback), ``HOST:PORT`` or ``[IPv6]:PORT``: where /metrics is served."""
    value = text.strip()
    if value.isdigit():
        return Bind.tcp(LOOPBACK, port(value))
    try:
        where = Bind.parse(value)
    except BindSyntaxError as exc:
        raise OptionValueError(str(exc)) from None
    if where.transport != "tcp":
        raise OptionValueError(f"expected PORT or HOST:PORT (TCP), got {text!r}")
    return where


def bind(text: str) -> Bind:
    try:
        return Bind.parse(text)
    except BindSyntaxError as exc:
        raise OptionValueError(str(exc)) from None


OPTIONS: Sequence[Option] = (
    Option(
        "bind",
        "where to serve; repeat for several (HOST:PORT, tcp://HOST:PORT, udp://HOST:PORT, "
        "unix:/PATH, unix:@NAME, fd://N)",
        bind,
        default=[],
        metavar="ADDRESS",
        many=True,
    ),
    Option("host", "address for one TCP bind, with --port", name, "127.0.0.1", "HOST"),
    Option("port", "port for one TCP bind, with --host (0: any free)", port, 9999, "PORT"),
    Option(
        "unix-mode",
        "permissions of unix:/PATH socket files, octal (e.g. 0660)",
        parse_octal_mode,
        metavar="MODE",
        unset="as the umask leaves them",
    ),
    Option(
        "mode",
        "concurrency: " + ", ".join(MODES) + " (auto: async for an async handler, else threading)",
        choice(*MODES),
        "auto",
        "MODE",
    ),
    Option("workers", "processes, prefork mode", count, None, "N", unset="the usable CPUs"),
    Option(
        "threads",
        "threads per process, pool and prefork modes",
        count,
        None,
        "N",
        unset="64",
    ),
    Option(
        "max-connections",
        "connections served at once per process; more wait in the kernel's backlog",
        count,
        None,
        "N",
        unset="no limit",
    ),
    Option(
        "allow",
        "admit only clients in this network (CIDR, IPv4 or IPv6); repeat for several",
        network,
        default=[],
        metavar="CIDR",
        many=True,
    ),
    Option(
        "deny",
        "refuse clients in this network, even if allowed; repeat for several",
        network,
        default=[],
        metavar="CIDR",
        many=True,
    ),
    Option(
        "max-connections-per-client",
        "connections one client (an IPv4 address, an IPv6 /64) may hold open, per process",
        count,
        None,
        "N",
        unset="no limit",
    ),
    Option(
        "client-rate",
        "new connections (or datagrams) per second per client, after --client-burst",
        per_second,
        None,
        "R",
        unset="no limit",
    ),
    Option(
        "client-burst",
        "connections a client may open at once before --client-rate applies",
        count,
        None,
        "B",
        unset="one second's worth of --client-rate",
    ),
    Option(
        "drain-timeout",
        "on SIGINT/SIGTERM, seconds in-flight connections get before they are aborted",
        seconds,
        30.0,
        "SECONDS",
    ),
    Option(
        "proxy-protocol",
        "every connection starts with a PROXY protocol header: "
        + ", ".join(PROXY_VERSIONS)
        + " (needs --trusted-proxy)",
        choice(*PROXY_VERSIONS),
        None,
        "VERSION",
        unset="off",
    ),
    Option(
        "trusted-proxy",
        "a network (CIDR) whose peers may send PROXY headers; repeat for several",
        network,
        default=[],
        metavar="CIDR",
        many=True,
    ),
    Option(
        "idle-timeout",
        "seconds a connection may stay silent both ways before it is closed (0/off: never)",
        limit,
        IDLE_TIMEOUT_SECONDS,
        "SECONDS",
    ),
    Option(
        "connection-deadline",
        "seconds a connection may live, however busy (0/off: no limit)",
        limit,
        CONNECTION_DEADLINE_SECONDS,
        "SECONDS",
    ),
    Option(
        "min-transfer-rate",
        "bytes/s a sending client must keep up over 10 s while the server waits for it;"
        " slower ones (slowloris) are closed (0/off: no minimum)",
        limit,
        MIN_TRANSFER_BYTES_PER_SECOND,
        "BYTES",
    ),
    Option(
        "write-timeout",
        "seconds replies may wait for a client that reads none of them (0/off: forever)",
        limit,
        WRITE_TIMEOUT_SECONDS,
        "SECONDS",
    ),
    Option("log-level", "one of " + ", ".join(LOG_LEVELS), choice(*LOG_LEVELS), "warning"),
    Option(
        "log-format",
        "text, or json (one object per line); for the process log and the access log",
        choice(*LOG_FORMATS),
        "text",
    ),
    Option(
        "access-log",
        "append a line per connection to PATH (-: standard output); SIGUSR1 reopens it",
        name,
        None,
        "PATH",
        unset="none",
    ),
    Option(
        "metrics",
        "serve /metrics (Prometheus), /stats.json and a live page on [HOST:]PORT "
        "(PORT alone: loopback); needs sockserve[metrics]",
        metrics_address,
        None,
        "[HOST:]PORT",
        unset="off",
    ),
    Option(
        "tls-cert",
        "serve TLS with this PEM certificate chain (full chain); SIGHUP re-reads the files",
        name,
        None,
        "FILE",
        unset="no TLS",
    ),
    Option(
        "tls-key",
        "the certificate's PEM private key, unencrypted",
        name,
        None,
        "FILE",
        unset="in --tls-cert",
    ),
    Option(
        "tls-ca",
        "mutual TLS: PEM CAs that issue client certificates; clients without one are refused",
        name,
        None,
        "FILE",
        unset="no client certificates",
    ),
    Option("user", "after binding, run as this user (needs root)", name, None, "NAME"),
    Option("group", "after binding, run as this group (needs root)", name, None, "NAME"),
)

BY_NAME = {option.name: option for option in OPTIONS}
BY_ENV = {option.env: option for option in OPTIONS}
