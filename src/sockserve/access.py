"""Who may connect: CIDR allow and deny lists, and the identity per-client limits count by.

Pure decisions on a ``client_address``, meant to run in the accept loop of every mode: no
socket, clock, lock or I/O, and each call costs O(number of distinct prefix lengths in a
list), not O(number of rules). Wiring them in is ``admission/client_checks.py``'s job
(``AccessCheck`` turns a refusal into ``Refused(reason)``, which the serving core counts);
the per-client tables live in ``client_limits.py``.

Addresses come in the shapes ``socketserver`` hands out: ``(host, port)``,
``(host, port, flowinfo, scope_id)``, a bare host string, or a Unix socket's path (``""``
for an unnamed peer; ``bytes`` for Linux's abstract namespace).

Rules for every function here:

1. IPv4 is IPv4 however it arrives. A dual-stack socket reports an IPv4 peer as
   ``::ffff:192.0.2.1``; it is judged, and counted, exactly as ``192.0.2.1``. A rule
   written inside ``::ffff:0:0/96`` is an IPv4 rule in disguise and is stored as one.
   Every other IPv6 rule (``::/0`` included) never matches an IPv4 client.
2. A zone (``fe80::1%eth0``) is ignored when matching a client: rules name addresses,
   and a link-local rule such as ``fe80::/10`` should match on every link. Rules
   themselves may not carry a zone (see ``NetworkList.parse``).
3. IP lists do not apply to Unix-socket clients: they have no IP address. The socket
   file's permissions are their access control.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from .errors import ConfigurationError

IPV4_BITS = 32
IPV6_BITS = 128
_IPV4_ALL = (1 << IPV4_BITS) - 1
#: ``::ffff:0:0/96`` shifted right by 32: the top 96 bits of every IPv4-mapped address
#: (RFC 4291 section 2.5.5.2).
_MAPPED_TOP = 0xFFFF

#: Default prefix per-client limits group IPv6 clients by. RFC 4291 section 2.5.1 gives
#: unicast addresses 64-bit interface identifiers, so a single LAN (and SLAAC) always owns
#: a whole /64, and its host can pick any of 2**64 source addresses. ISPs usually hand a
#: home a /56 or a /48 (RIPE-690 section 4.2 recommends one of those), so /56 is the
#: stricter setting when a neighbour's share is an acceptable casualty.
DEFAULT_IPV6_PREFIX = 64

#: A client's identity for per-client limits: an ``int`` for an IP client (see
#: ``client_key``), the address as text for anything else.
ClientKey = int | str


def parse_ip(host: str) -> tuple[int, int] | None:
    """``(4, n)`` or ``(6, n)`` for an IP literal, with IPv4-mapped IPv6 as ``(4, n)``.

    None for anything else (a hostname, a Unix path). A ``%zone`` is dropped.
    ``inet_pton`` rather than ``ipaddress.ip_address``: about six times faster for an IPv4
    host (0.25 vs 1.6 µs, bench/access_lookup.py), and this runs for every connection.
    """
    try:
        if ":" in host:
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        else:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host))
    except (OSError, ValueError):  # ValueError: an embedded NUL (an abstract Unix name)
        return None
    value = int.from_bytes(packed)
    if value >> IPV4_BITS == _MAPPED_TOP:
        return 4, value & _IPV4_ALL
    return 6, value


def ip_of(address: Any) -> tuple[int, int] | None:
    """``parse_ip`` on a client_address of any shape; None for a non-IP client."""
    if isinstance(address, tuple):
        address = address[0] if address else None
    if isinstance(address, str):
        return parse_ip(address)
    return None


def is_ip_client(address: Any) -> bool:
    """True for an ``AF_INET``/``AF_INET6``-shaped address: a tuple whose host is text.

    Such a client is judged by IP lists even when its host fails to parse, so that an
    allow list fails closed; a Unix peer (a path, ``""``, bytes) is not.
    """
    return isinstance(address, tuple) and bool(address) and isinstance(address[0], str)


class NetworkList:
    """A set of IPv4 and IPv6 networks, built once and asked ``contains`` per client.

    Build it with ``NetworkList.parse(specs, setting=...)``; it is immutable afterwards and
    safe to share between threads and (after fork) processes.

    Lookup: the networks are collapsed (``ipaddress.collapse_addresses``: overlapping and
    adjacent ones merge), then grouped by prefix length, one ``frozenset`` of network
    integers per length. A client's integer, masked to each length in turn, is looked up in
    that set: at most 33 (IPv4) or 129 (IPv6) set lookups, and in practice a handful, however
    many rules there are. Measured (bench/access_lookup.py, a miss, parsing included): about
    0.6 µs with 1 or 10 rules, 1 µs with 1,000 random rules (13 lengths), 2 µs (IPv4) and
    6 µs (IPv6) in the worst case of one rule per possible length; a loop over 1,000
    ``ipaddress`` networks takes about 180 µs.
    """

    __slots__ = ("_tables", "specs")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        for network in networks:
            if isinstance(network, ipaddress.IPv6Network):
                mapped = _as_ipv4(network)
                if mapped is None:
                    v6.append(network)
                else:
                    v4.append(mapped)
            else:
                v4.append(network)
        collapsed_v4 = list(ipaddress.collapse_addresses(v4))
        collapsed_v6 = list(ipaddress.collapse_addresses(v6))
        self._tables: dict[int, tuple[tuple[int, frozenset[int]], ...]] = {
            4: _by_prefix_length(collapsed_v4, IPV4_BITS),
            6: _by_prefix_length(collapsed_v6, IPV6_BITS),
        }
        #: The networks after collapsing, for messages and ``repr``.
        self.specs: tuple[str, ...] = tuple(str(n) for n in (*collapsed_v4, *collapsed_v6))

    @classmethod
    def parse(cls, specs: Iterable[str], *, setting: str) -> NetworkList:
        """Parse ``"10.0.0.0/8"``, ``"127.0.0.1"`` (a /32), ``"2001:db8::/32"``, ``"::1"``.

        A bad spec raises ``ConfigurationError`` naming ``setting`` and the spec. Two kinds
        are refused on purpose, because accepting them would match something other than
        what was written: host bits set below the prefix (``10.1.2.3/8``: which network
        was meant?), and a zone (``fe80::1%eth0``: a rule matches on every link, so the
        zone would silently widen it).
        """
        if isinstance(specs, str):
            raise ConfigurationError(
                f"{setting} must be a list of networks, not the single string {specs!r}"
            )
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for spec in specs:
            try:
                networks.append(parse_network(spec))
            except ValueError as exc:
                raise ConfigurationError(f"{setting}: {exc}") from None
        return cls(networks)

    def contains(self, address: Any) -> bool:
        """True when the client's IP is in one of the networks; never for a Unix client."""
        ip = ip_of(address)
        return ip is not None and self.contains_ip(*ip)

    def contains_ip(self, version: int, value: int) -> bool:
        """``contains`` for an address already parsed by ``parse_ip``."""
        # A plain loop, not any(...): the generator doubles the cost of a 4-length miss
        # (0.21 vs 0.45 µs, measured with timeit on CPython 3.11).
        for mask, networks in self._tables[version]:  # noqa: SIM110
            if value & mask in networks:
                return True
        return False

    def __len__(self) -> int:
        """How many networks remain after collapsing."""
        return len(self.specs)

    def __repr__(self) -> str:
        return f"NetworkList({list(self.specs)!r})"


def parse_network(spec: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One rule of ``NetworkList.parse``; ``ValueError`` naming the spec if it is not one.

    The command line checks each ``--allow``/``--deny`` with it as it reads them.
    """
    if not isinstance(spec, str):
        raise ValueError(f"{spec!r} is not a network (expected text)")
    text = spec.strip()
    if "%" in text:
        raise ValueError(f"{spec!r} has a zone; rules match on every link, write it without")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            pass  # not a network at all: the first message says why
        raise ValueError(f"{spec!r} is not a network: {exc}{hint}") from None


def _as_ipv4(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 network a rule inside ``::ffff:0:0/96`` stands for; None for any other."""
    prefix = network.prefixlen - (IPV6_BITS - IPV4_BITS)
    value = int(network.network_address)
    if prefix < 0 or value >> IPV4_BITS != _MAPPED_TOP:
        return None
    return ipaddress.IPv4Network((value & _IPV4_ALL, prefix))


def _by_prefix_length(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], bits: int
) -> tuple[tuple[int, frozenset[int]], ...]:
    """``((mask, {network ints}), ...)``, one entry per prefix length, longest prefix last.

    Shortest first: a broad rule (``0.0.0.0/0``, ``10.0.0.0/8``) tends to be the one that
    matches, and the loop stops at the first hit.
    """
    grouped: dict[int, set[int]] = {}
    for network in networks:
        grouped.setdefault(network.prefixlen, set()).add(int(network.network_address))
    all_ones = (1 << bits) - 1
    return tuple(
        (all_ones ^ (all_ones >> length), frozenset(grouped[length])) for length in sorted(grouped)
    )


class AccessPolicy:
    """Allow and deny lists applied to a client address.

    Methods for the caller: ``judge(client_address)`` returns None to admit, or the
    refusal reason to count in ``server.stats().rejected``: ``"denied"`` or
    ``"not_allowed"``.

    Order: **deny wins.** A client on the deny list is refused even when the allow list
    also names it; otherwise, when there is an allow list, a client not on it is refused.
    Why: the lists are sets, not ordered rule files, so no reading of either depends on
    where a line sits, and adding a network to ``allow`` can never reopen a hole that
    ``deny`` closed. The usual shape reads naturally: allow ``10.0.0.0/8``, deny the one
    ``10.6.6.0/24`` inside it. What it cannot say is "deny a range except a hole in it";
    write that as an allow list of what remains.

    Which clients it judges: IP clients (tuples with a text host), IPv4-mapped IPv6
    judged as IPv4. Unix-socket clients are admitted (module rule 3). An IP-shaped
    address whose host does not parse (which the kernel never reports) matches no rule:
    with an allow list it is refused, so the allow list fails closed.

    ``allow=None`` means no allow list. An empty allow list is refused at construction:
    it would refuse every IP client, which is more likely a configuration mistake than
    intent (stop the server instead).
    """

    __slots__ = ("allow", "deny")

    def __init__(
        self,
        *,
        allow: NetworkList | Iterable[str] | None = None,
        deny: NetworkList | Iterable[str] | None = None,
    ) -> None:
        self.allow = _as_list(allow, "allow")
        self.deny = _as_list(deny, "deny")
        if self.allow is not None and len(self.allow) == 0:
            raise ConfigurationError(
                "allow is empty, so every IP client would be refused; pass None for no allow list"
            )

    def judge(self, address: Any) -> str | None:
        """None to admit the client; else ``"denied"`` or ``"not_allowed"``."""
        ip = ip_of(address)
        if ip is None:
            if self.allow is not None and is_ip_client(address):
                return "not_allowed"
            return None
        if self.deny is not None and self.deny.contains_ip(*ip):
            return "denied"
        if self.allow is not None and not self.allow.contains_ip(*ip):
            return "not_allowed"
        return None

    def __repr__(self) -> str:
        return f"AccessPolicy(allow={self.allow!r}, deny={self.deny!r})"


def _as_list(value: NetworkList | Iterable[str] | None, setting: str) -> NetworkList | None:
    if value is None or isinstance(value, NetworkList):
        return value
    return NetworkList.parse(value, setting=setting)


def client_key(address: Any, *, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> ClientKey:
    """The identity per-client limits count by.

    An IPv4 client is itself; an IPv6 client is its ``/ipv6_prefix`` network (see
    ``DEFAULT_IPV6_PREFIX`` for why a single IPv6 address identifies nobody). Both come back
    as one ``int`` in IPv6 space: IPv4 as its IPv4-mapped address, IPv6 with the bits below
    the prefix cleared, so the two can never collide (a masked IPv6 key has its low
    ``128 - ipv6_prefix`` bits clear; a mapped key has bits 32-47 set) and a dual-stack
    peer counts as the same IPv4 client as on an IPv4 socket.

    Anything else (a Unix peer, a host that is not an IP) is keyed by its text: note that
    every unnamed Unix client is ``""``, so they all share one count. Callers that do not
    want that should skip ``str`` keys.
    """
    if not 0 <= ipv6_prefix <= IPV6_BITS:
        raise ConfigurationError(f"ipv6_prefix must be 0-128, not {ipv6_prefix!r}")
    ip = ip_of(address)
    if ip is None:
        if isinstance(address, tuple):
            address = address[0] if address else ""
        if isinstance(address, bytes):
            return address.decode("utf-8", "backslashreplace")
        return address if isinstance(address, str) else repr(address)
    version, value = ip
    if version == 4:
        return value | (_MAPPED_TOP << IPV4_BITS)
    host_bits = IPV6_BITS - ipv6_prefix
    return value >> host_bits << host_bits
