"""The PROXY protocol at the edge: who may send a header, and reading it exactly.

A server with ``proxy_protocol`` set gets two pieces from ``proxy_protocol_setup``:

* ``TrustedProxies``, a peer check: a peer outside ``trusted_proxies`` is refused
  (``"proxy_untrusted"``) before it sends a byte. Section 5 of HAProxy's
  ``proxy-protocol.txt``: a listener that takes headers from anyone lets any client
  claim any address. Unix-socket peers are admitted: IP lists do not apply to them
  (``access.py`` rule 3), the socket file's permissions say who may connect.
* ``ProxyHeaderPrelude``, the first prelude (``ORDER_FIRST``: the header precedes
  everything else on the wire, a TLS ClientHello included). It reads the whole header,
  across any number of segments, and nothing after it; the handler then sees the real
  client as ``client_address`` and the header as ``self.proxy``. A LOCAL header (a
  proxy's health check) or a v1 ``UNKNOWN`` line keeps the peer's own address.

How a run reads without over-reading, and without spinning: it peeks at what is
buffered, at most what could still be header (107 bytes for a v1 line, the exact rest
of a v2 header once its length field is known, per ``header_bytes_needed``), then
receives exactly the part that is header: up to the CRLF, or everything peeked when no
CRLF is there yet (all of it is header then). So a v1 line costs two system calls
instead of one per byte, the bytes after the header stay in the socket for the handler
or the TLS prelude, and the run only answers ``WANT_READ`` when the socket had nothing
to peek at: a level-triggered selector is never woken by bytes the run left behind.

Bounded in size (a v1 line at 107 bytes, a v2 header at ``proxy_header_max``; the
parser refuses a longer declared length before its body is read) and in time
(``proxy_header_timeout``, refused as ``"proxy_timeout"``). A header the parser refuses
becomes ``Refused("proxy_" + reason)``: ``proxy_bad_signature``, ``proxy_v2_bad_crc``...
The end of the stream before the header's end is ``"proxy_truncated"``, a reset
``"proxy_reset"``.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable
from typing import Any

from ..access import NetworkList, is_ip_client
from ..errors import ConfigurationError, ProxyHeaderError
from ..proxy_protocol import (
    V1_MAX_LINE_BYTES,
    V2_FIXED_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    header_bytes_needed,
    parse_proxy_header,
)
from .checks import Judged, Refused
from .preludes import ORDER_FIRST, WANT_READ, PreludeDone

#: The server attributes (and constructor keywords) that configure the PROXY protocol.
PROXY_SETTINGS = ("proxy_protocol", "trusted_proxies", "proxy_header_timeout", "proxy_header_max")
#: What ``proxy_protocol`` may be: the header versions a server takes (None: no header).
PROXY_PROTOCOL_CHOICES = ("v1", "v2", "any")
#: Seconds a peer gets to send its whole header. A proxy writes the header the moment it
#: connects, in the first segment, so a header that is late is a stall, not a slow
#: proxy; each stalled connection holds a descriptor and a pending-prelude slot until
#: then. nginx waits 30 s by default (``proxy_protocol_timeout``); HAProxy bounds the
#: wait for ``accept-proxy`` with ``timeout client``, which it asks every config to set
#: and which its examples set between 5 s and 50 s. 5 s is the low end of those.
DEFAULT_PROXY_HEADER_TIMEOUT = 5.0
#: The largest v2 length field allows (section 2.2).
_V2_LARGEST = V2_FIXED_BYTES + 0xFFFF


class TrustedProxies:
    """A peer check: only the listed networks may connect (and so send a header)."""

    judges: Judged = "peer"

    def __init__(self, networks: NetworkList) -> None:
        self.networks = networks

    def __call__(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        if is_ip_client(client_address) and not self.networks.contains(client_address):
            raise Refused("proxy_untrusted", "not in trusted_proxies, so no PROXY header is taken")
        return request, client_address

    def __repr__(self) -> str:
        return f"TrustedProxies({list(self.networks.specs)!r})"


class ProxyHeaderPrelude:
    """Reads one PROXY header per connection (see the module docstring)."""

    name = "proxy"
    order = ORDER_FIRST

    def __init__(self, accept: str, *, timeout: float, max_v2_bytes: int) -> None:
        self.accept = accept
        self.timeout = timeout
        self.max_v2_bytes = max_v2_bytes
        #: A v2-only listener never peeks further than a v2 fixed part to begin with.
        self.first_peek = V2_FIXED_BYTES if accept == "v2" else V1_MAX_LINE_BYTES

    def start(self, request: Any, client_address: Any) -> ProxyHeaderRun:
        return ProxyHeaderRun(self, request, client_address)

    def __repr__(self) -> str:
        return (
            f"ProxyHeaderPrelude({self.accept!r}, timeout={self.timeout!r}, "
            f"max_v2_bytes={self.max_v2_bytes!r})"
        )


class ProxyHeaderRun:
    """The header of one connection, read as far as the socket allows each time."""

    __slots__ = ("_prelude", "_sock", "_peer", "_buffer")

    def __init__(self, prelude: ProxyHeaderPrelude, sock: Any, peer: Any) -> None:
        self._prelude = prelude
        self._sock = sock
        self._peer = peer
        self._buffer = bytearray()

    def advance(self) -> str | PreludeDone:
        sock, buffer = self._sock, self._buffer
        while True:
            try:
                peeked = sock.recv(self._peek_size(), socket.MSG_PEEK)
                if not peeked:
                    raise Refused(
                        "proxy_truncated",
                        f"closed after {len(buffer)} bytes of a PROXY header",
                    )
                take = self._header_part(peeked)
                if take <= 0:  # the parser's contract says never; a loop here would spin
                    raise Refused("proxy_bad_header", "no progress reading a PROXY header")
                buffer += sock.recv(take)
            except BlockingIOError:
                return WANT_READ
            except OSError as exc:
                raise Refused("proxy_reset", f"lost while sending a PROXY header: {exc}") from None
            header = self._parse()
            if header is not None:
                return self._done(header)

    def _peek_size(self) -> int:
        buffer = self._buffer
        if not buffer:
            return self._prelude.first_peek
        if buffer[0] == V2_SIGNATURE[0]:
            # Exact once the length field is in; until then the rest of the fixed part.
            return header_bytes_needed(buffer) - len(buffer)
        return V1_MAX_LINE_BYTES - len(buffer)

    def _header_part(self, peeked: bytes) -> int:
        """How many of the peeked bytes belong to the header."""
        held = len(self._buffer)
        seen = self._buffer + peeked
        # Exact once known (a v2 length, a v1 CRLF); before that a lower bound beyond
        # what was seen, or the v1 maximum: every peeked byte is header then.
        return min(len(seen), header_bytes_needed(seen)) - held

    def _parse(self) -> ProxyHeader | None:
        prelude = self._prelude
        try:
            return parse_proxy_header(
                self._buffer, accept=prelude.accept, max_v2_bytes=prelude.max_v2_bytes
            )
        except ProxyHeaderError as exc:
            raise Refused("proxy_" + exc.reason, str(exc)) from None

    def _done(self, header: ProxyHeader) -> PreludeDone:
        client = self._peer if header.is_local or header.source is None else header.source
        return PreludeDone(self._sock, client, {"proxy": header})


def proxy_protocol_setup(
    server: Any, **keywords: Any
) -> tuple[TrustedProxies, ProxyHeaderPrelude] | None:
    """The check and the prelude ``server``'s PROXY settings ask for (None: PROXY off).

    ``keywords`` (the constructor's ``PROXY_SETTINGS``; None keeps the class attribute)
    are set on the server first. Reads those settings back from the server, and its
    ``socket_type`` and ``address_family``; raises ``ConfigurationError`` for settings
    that make no sense.
    """
    for name, value in keywords.items():
        if name not in PROXY_SETTINGS:
            raise TypeError(f"not a PROXY protocol setting: {name!r}")
        if value is not None:
            setattr(server, name, value)
    version = server.proxy_protocol
    if version is None:
        return None
    if version not in PROXY_PROTOCOL_CHOICES:
        raise ConfigurationError(
            f"proxy_protocol must be None, 'v1', 'v2' or 'any', got {version!r}"
        )
    if getattr(server, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
        raise ConfigurationError(
            f"proxy_protocol applies to stream servers only; {type(server).__name__} serves "
            "datagrams (a PROXY header comes once per connection)"
        )
    timeout = server.proxy_header_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigurationError(f"proxy_header_timeout must be a number, got {timeout!r}")
    if not 0 < timeout < math.inf:
        raise ConfigurationError(f"proxy_header_timeout must be > 0 s and finite, got {timeout}")
    cap = server.proxy_header_max
    if (
        isinstance(cap, bool)
        or not isinstance(cap, int)
        or not V2_FIXED_BYTES <= cap <= _V2_LARGEST
    ):
        raise ConfigurationError(
            f"proxy_header_max must be an int from {V2_FIXED_BYTES} to {_V2_LARGEST}, got {cap!r}"
        )
    is_unix = getattr(server, "address_family", None) == getattr(socket, "AF_UNIX", None)
    networks = trusted_networks(server.trusted_proxies, required=not is_unix)
    prelude = ProxyHeaderPrelude(version, timeout=float(timeout), max_v2_bytes=cap)
    return TrustedProxies(networks), prelude


def trusted_networks(specs: NetworkList | Iterable[str] | None, *, required: bool) -> NetworkList:
    """``trusted_proxies`` as a ``NetworkList``; required (and non-empty) for IP servers."""
    if specs is None:
        if required:
            raise ConfigurationError(
                "proxy_protocol needs trusted_proxies: the networks of the proxies allowed "
                "to send a PROXY header (e.g. ['10.0.0.0/8']); from anyone else a header "
                "would let a client choose the address the server sees"
            )
        return NetworkList(())
    networks = (
        specs
        if isinstance(specs, NetworkList)
        else NetworkList.parse(specs, setting="trusted_proxies")
    )
    if required and len(networks) == 0:
        raise ConfigurationError("trusted_proxies is empty, so every connection would be refused")
    return networks


__all__ = [
    "DEFAULT_PROXY_HEADER_TIMEOUT",
    "PROXY_PROTOCOL_CHOICES",
    "PROXY_SETTINGS",
    "ProxyHeaderPrelude",
    "ProxyHeaderRun",
    "TrustedProxies",
    "proxy_protocol_setup",
    "trusted_networks",
]
