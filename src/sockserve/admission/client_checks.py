"""Allow/deny lists and per-client limits as admission checks, and the settings that build them.

How it works: three client checks (``judges = "client"``: behind a PROXY header they judge
the real client, not the proxy), each a thin shell over a pure table from ``access.py`` or
``client_limits.py`` that adds the key, the clock and the refusal:

* ``AccessCheck``: ``AccessPolicy.judge`` (deny wins) → ``Refused("denied")`` or
  ``Refused("not_allowed")``.
* ``RatePerClient``: a token bucket per client (``ClientRateLimiter``), read at admission
  with ``time.monotonic()`` → ``Refused("client_rate")``.
* ``ConnectionsPerClient``: open connections per client (``ClientConnectionCounter``) →
  ``Refused("client_connections")``; its ``release`` runs when the connection's work
  ends (the serving core calls it from the request's ticket, in every mode).

Servers build them from their settings (class attributes, also constructor keywords):
``allow``, ``deny``, ``max_connections_per_client``, ``client_rate``, ``client_burst``,
``client_ipv6_prefix``, ``client_rate_max_clients``; ``ClientLimits.for_server`` returns
them in the order access, rate, connections, ahead of any check a user adds. Why that
order: a client that may not connect at all touches no table (a denied flood cannot
fill the rate table), and a connection refused for its rate never holds a count.

Trade-offs, each written where it is decided:

* Tables are per process: the process that accepts keeps them. Forking mode admits in
  the parent, so its limits are exact; each pre-fork worker keeps its own, so there a
  limit is per worker (a client may hold up to ``workers`` times as many connections).
* Only IP clients are counted and rate-limited. Unix-socket clients have no address to
  key by (every unnamed one reports ``""``, so one count would make the per-client limit
  a global one); their socket file's permissions are their access control. A Unix
  socket behind a PROXY header does serve IP clients, and those are counted.
* Datagram servers judge every datagram (access lists, rate); a refused one is dropped
  and counted. ``max_connections_per_client`` is refused for them: a datagram holds no
  connection.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from ..access import DEFAULT_IPV6_PREFIX, IPV6_BITS, AccessPolicy, NetworkList, client_key
from ..client_limits import DEFAULT_MAX_CLIENTS, ClientConnectionCounter, ClientRateLimiter
from ..episodes import EpisodeLog
from ..errors import ConfigurationError
from .checks import AdmissionCheck, Judged, Refused

log = logging.getLogger("sockserve.admission")

_ACCESS_MESSAGES = {"denied": "on the deny list", "not_allowed": "not on the allow list"}


class AccessCheck:
    """Refuses clients by CIDR lists: ``AccessCheck(allow=[...], deny=[...])``.

    Reasons counted in ``stats().rejected``: ``"denied"`` (on the deny list; deny wins)
    and ``"not_allowed"`` (an allow list exists and the client is not on it). See
    ``access.AccessPolicy`` for IPv4-mapped addresses, zones and Unix clients (admitted).
    """

    judges: Judged = "client"

    def __init__(
        self,
        policy: AccessPolicy | None = None,
        *,
        allow: NetworkList | Iterable[str] | None = None,
        deny: NetworkList | Iterable[str] | None = None,
    ) -> None:
        if policy is None:
            policy = AccessPolicy(allow=allow, deny=deny)
        elif allow is not None or deny is not None:
            raise ConfigurationError("give AccessCheck a policy or allow/deny lists, not both")
        self.policy = policy

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        reason = self.policy.judge(client_address)
        if reason is not None:
            raise Refused(reason, _ACCESS_MESSAGES[reason])
        return request, client_address

    def __repr__(self) -> str:
        return f"AccessCheck({self.policy!r})"


def default_burst(rate: float) -> int:
    """A second's worth of connections, at least one: what ``client_burst`` None means."""
    return max(1, math.ceil(rate))


class RatePerClient:
    """Refuses a client's new connections (or datagrams) beyond ``rate`` per second.

    A token bucket per client (``client_limits.ClientRateLimiter``): ``burst`` at once
    (default ``default_burst(rate)``), then one per ``1 / rate`` s. Reason counted:
    ``"client_rate"``. Clients are keyed by ``access.client_key``: an IPv4 address, an
    IPv6 ``/ipv6_prefix`` network.

    Memory: at most ``max_clients`` buckets (about 170 bytes each); past that the least
    recently seen client is forgotten and ``evictions`` counts it, with one WARNING per
    episode, since a forgotten client comes back with a fresh burst.

    Counters: ``clients`` (buckets held), ``evictions``, ``refused``.
    """

    judges: Judged = "client"

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ipv6_prefix = _checked_prefix(ipv6_prefix)
        self.limiter = ClientRateLimiter(
            rate, default_burst(rate) if burst is None else burst, max_clients=max_clients
        )
        self._clock = clock
        self._evictions_logged = 0
        self._eviction_log = EpisodeLog(log, "client rate table full", level=logging.WARNING)

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        key = client_key(client_address, ipv6_prefix=self.ipv6_prefix)
        if isinstance(key, str):
            return request, client_address  # not an IP client: see the module docstring
        limiter = self.limiter
        if not limiter.allow(key, self._clock()):
            raise Refused(
                "client_rate", f"over {limiter.rate:g} per second after a burst of {limiter.burst}"
            )
        if limiter.evictions != self._evictions_logged:
            self._evictions_logged = limiter.evictions
            self._eviction_log.note(
                "evicted",
                f"{limiter.max_clients} clients remembered, so the least recently seen one "
                "was forgotten (it starts again with a full burst); raise "
                "client_rate_max_clients if this repeats",
            )
        return request, client_address

    @property
    def clients(self) -> int:
        return len(self.limiter)

    @property
    def evictions(self) -> int:
        return self.limiter.evictions

    @property
    def refused(self) -> int:
        return self.limiter.refused

    def __repr__(self) -> str:
        rate = self.limiter
        return f"RatePerClient({rate.rate:g}, {rate.burst}, max_clients={rate.max_clients})"


class ConnectionsPerClient:
    """Refuses a client holding ``limit`` open connections already.

    Reason counted: ``"client_connections"``. A connection counts from its admission until
    its work ends: the handler returned and the request was closed (a thread, a pool
    worker or a task ended; a forked child was reaped). Clients are keyed as for
    ``RatePerClient``. Memory: an entry per client with a connection open, no more.

    Counters: ``clients`` (clients holding connections now), ``refused``.
    """

    judges: Judged = "client"

    def __init__(self, limit: int, *, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> None:
        self.ipv6_prefix = _checked_prefix(ipv6_prefix)
        self.counter = ClientConnectionCounter(limit)

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        key = client_key(client_address, ipv6_prefix=self.ipv6_prefix)
        if isinstance(key, str):
            return request, client_address  # not an IP client: see the module docstring
        if not self.counter.try_acquire(key):
            raise Refused("client_connections", f"{self.counter.limit} connections open already")
        return request, client_address

    def release(self, client_address: Any) -> None:
        """The connection admitted for ``client_address`` is over (the core calls this)."""
        key = client_key(client_address, ipv6_prefix=self.ipv6_prefix)
        if not isinstance(key, str):
            self.counter.release(key)

    def held(self, client_address: Any) -> int:
        """Connections the client of ``client_address`` holds now."""
        return self.counter.held(client_key(client_address, ipv6_prefix=self.ipv6_prefix))

    @property
    def clients(self) -> int:
        return len(self.counter)

    @property
    def refused(self) -> int:
        return self.counter.refused

    def __repr__(self) -> str:
        return f"ConnectionsPerClient({self.counter.limit})"


def _checked_prefix(prefix: object) -> int:
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= IPV6_BITS:
        raise ConfigurationError(f"client_ipv6_prefix must be an int 0-128, got {prefix!r}")
    return prefix


# -- the server settings -------------------------------------------------------------------


class ClientLimitSettings(TypedDict, total=False):
    """The constructor keywords of every server; None (or absent) keeps the class attribute."""

    allow: Iterable[str] | None
    deny: Iterable[str] | None
    max_connections_per_client: int | None
    client_rate: float | None
    client_burst: int | None
    client_ipv6_prefix: int | None
    client_rate_max_clients: int | None


@dataclass(frozen=True)
class ClientLimits:
    """The checks a server's settings built (None where a setting is off): ``server.client_limits``.

    ``checks`` is what the server added to its admission checks; ``tables()`` reads the
    per-client tables' sizes and evictions, which are not ``ServerStats`` fields (they
    belong to this process: in pre-fork mode, to each worker).
    """

    access: AccessCheck | None = None
    rate: RatePerClient | None = None
    connections: ConnectionsPerClient | None = None

    @property
    def checks(self) -> tuple[AdmissionCheck, ...]:
        return tuple(c for c in (self.access, self.rate, self.connections) if c is not None)

    def tables(self) -> dict[str, int]:
        """``rate_clients``, ``rate_evictions``, ``connection_clients`` (0 when off)."""
        rate, connections = self.rate, self.connections
        return {
            "rate_clients": 0 if rate is None else rate.clients,
            "rate_evictions": 0 if rate is None else rate.evictions,
            "connection_clients": 0 if connections is None else connections.clients,
        }

    @classmethod
    def for_server(cls, server: Any, keywords: ClientLimitSettings) -> ClientLimits:
        """Apply the given keywords to ``server``'s attributes, then build its checks.

        Raises ``ConfigurationError`` naming the setting for a value that cannot work;
        called before the server opens its socket, so nothing leaks.
        """
        for name, value in keywords.items():
            if name not in ClientLimitSettings.__annotations__:
                raise TypeError(f"unexpected keyword argument {name!r}")
            if value is not None:
                setattr(server, name, value)
        prefix = _checked_prefix(getattr(server, "client_ipv6_prefix", DEFAULT_IPV6_PREFIX))
        allow = _network_list(server, "allow")
        deny = _network_list(server, "deny")
        access = None
        if allow is not None or deny is not None:
            access = AccessCheck(allow=allow, deny=deny)
        return cls(access, _rate_check(server, prefix), _connections_check(server, prefix))


def _network_list(server: Any, setting: str) -> NetworkList | None:
    value = getattr(server, setting, None)
    if value is None or isinstance(value, NetworkList):
        return value
    return NetworkList.parse(value, setting=setting)


def _rate_check(server: Any, prefix: int) -> RatePerClient | None:
    rate = getattr(server, "client_rate", None)
    burst = getattr(server, "client_burst", None)
    if rate is None:
        if burst is not None:
            raise ConfigurationError("client_burst needs client_rate (connections per second)")
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        raise ConfigurationError(f"client_rate must be a positive number, got {rate!r}")
    if burst is not None:
        _check_count("client_burst", burst)
    max_clients = getattr(server, "client_rate_max_clients", DEFAULT_MAX_CLIENTS)
    _check_count("client_rate_max_clients", max_clients)
    return RatePerClient(rate, burst, ipv6_prefix=prefix, max_clients=max_clients)


def _connections_check(server: Any, prefix: int) -> ConnectionsPerClient | None:
    limit = getattr(server, "max_connections_per_client", None)
    if limit is None:
        return None
    _check_count("max_connections_per_client", limit)
    if getattr(server, "socket_type", socket.SOCK_STREAM) == socket.SOCK_DGRAM:
        raise ConfigurationError(
            "max_connections_per_client applies to stream servers (a datagram holds no "
            "connection); limit datagram clients with client_rate"
        )
    return ConnectionsPerClient(limit, ipv6_prefix=prefix)


def _check_count(setting: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{setting} must be an int >= 1, got {value!r}")
