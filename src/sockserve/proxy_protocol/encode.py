"""Build PROXY headers: for tests, test clients and benchmarks, and for relaying.

The family comes from the address shapes, the ones ``ProxyHeader`` reports:
``(host, port)`` is IPv4 (or IPv6 when the host is an IPv6 literal), a 4-tuple is IPv6,
a ``str`` is a Unix path, ``None`` is unspecified. What the parser refuses, the
encoder refuses too (a port out of range, a Unix path over 108 bytes), with the
caller's errors (``AddressError``, ``ConfigurationError``) rather than the peer's.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

from ..errors import AddressError, ConfigurationError, PortOutOfRangeError
from .checksum import crc32c
from .header import (
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    Address,
)

_AF_UNIX = getattr(socket, "AF_UNIX", None)
_FAMILY_NIBBLES = {socket.AF_UNSPEC: 0x0, socket.AF_INET: 0x1, socket.AF_INET6: 0x2}
_PROTOCOL_NIBBLES = {0: 0x0, socket.SOCK_STREAM: 0x1, socket.SOCK_DGRAM: 0x2}
_COMMAND_NIBBLES = {"LOCAL": 0x0, "PROXY": 0x1}
_UNIX_PATH_BYTES = 108  # section 2.2: "The addresses are exactly 108 bytes each"


def encode_v1(source: Address, destination: Address) -> bytes:
    """A v1 ``PROXY TCP4``/``TCP6`` line for two IP addresses of one family."""
    family = _family_of(source, destination)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise AddressError(f"PROXY v1 carries only TCP over IPv4 or IPv6, not {family.name}")
    src_host, src_port = _ip_and_port(family, source)
    dst_host, dst_port = _ip_and_port(family, destination)
    keyword = "TCP4" if family == socket.AF_INET else "TCP6"
    line = f"PROXY {keyword} {src_host} {dst_host} {src_port} {dst_port}\r\n"
    return line.encode("ascii")


def encode_v1_unknown() -> bytes:
    """The short v1 ``UNKNOWN`` line (section 2.1): "use the real endpoints"."""
    return b"PROXY UNKNOWN\r\n"


def encode_v2(
    source: Address | None,
    destination: Address | None,
    *,
    command: str = "PROXY",
    protocol: int = socket.SOCK_STREAM,
    tlvs: Iterable[tuple[int, bytes]] = (),
    with_crc32c: bool = False,
) -> bytes:
    """A v2 header; ``tlvs`` in order, then a CRC32c TLV when ``with_crc32c``.

    ``None`` for both addresses gives the unspecified family with no address block.
    """
    if command not in _COMMAND_NIBBLES:
        raise ConfigurationError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    if protocol not in _PROTOCOL_NIBBLES:
        raise ConfigurationError(f"protocol must be SOCK_STREAM, SOCK_DGRAM or 0: {protocol}")
    family = _family_of(source, destination)
    if family == socket.AF_UNSPEC:
        block = b""
        nibble = 0x0
    elif family == _AF_UNIX:
        block = _unix_field(source) + _unix_field(destination)
        nibble = 0x3
    else:
        (src_host, src_port), (dst_host, dst_port) = (
            _ip_and_port(family, source),
            _ip_and_port(family, destination),
        )
        block = (
            socket.inet_pton(family, src_host)
            + socket.inet_pton(family, dst_host)
            + struct.pack("!HH", src_port, dst_port)
        )
        nibble = _FAMILY_NIBBLES[family]
    parts = [block]
    for tlv_type, value in tlvs:
        parts.append(_tlv(tlv_type, value))
    if with_crc32c:
        parts.append(_tlv(PP2_TYPE_CRC32C, b"\0\0\0\0"))
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise ConfigurationError(f"v2 header body of {len(body)} bytes exceeds 65535")
    ver_cmd = 0x20 | _COMMAND_NIBBLES[command]
    fam = nibble << 4 | _PROTOCOL_NIBBLES[protocol]
    header = V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body
    if with_crc32c:  # section 2.2.3: computed with the field zeroed, then filled in
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def encode_v2_local(*, tlvs: Iterable[tuple[int, bytes]] = (), with_crc32c: bool = False) -> bytes:
    """A v2 LOCAL header, as a proxy sends for its own health checks."""
    return encode_v2(None, None, command="LOCAL", protocol=0, tlvs=tlvs, with_crc32c=with_crc32c)


def encode_ssl_tlv(
    *,
    client_flags: int = PP2_CLIENT_SSL,
    verify_result: int = 0,
    version: str | None = None,
    cn: str | None = None,
    cipher: str | None = None,
    sig_alg: str | None = None,
    key_alg: str | None = None,
) -> tuple[int, bytes]:
    """A ``(PP2_TYPE_SSL, value)`` pair for ``encode_v2(tlvs=...)`` (section 2.2.6)."""
    value = struct.pack("!BI", client_flags, verify_result)
    for subtype, text, encoding in (
        (PP2_SUBTYPE_SSL_VERSION, version, "ascii"),
        (PP2_SUBTYPE_SSL_CN, cn, "utf-8"),
        (PP2_SUBTYPE_SSL_CIPHER, cipher, "ascii"),
        (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg, "ascii"),
        (PP2_SUBTYPE_SSL_KEY_ALG, key_alg, "ascii"),
    ):
        if text is not None:
            value += _tlv(subtype, text.encode(encoding))
    return (PP2_TYPE_SSL, value)


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if not 0 <= tlv_type <= 0xFF or len(value) > 0xFFFF:
        raise ConfigurationError(f"TLV type {tlv_type} with {len(value)} bytes does not fit")
    return struct.pack("!BH", tlv_type, len(value)) + bytes(value)


def _family_of(source: Address | None, destination: Address | None) -> socket.AddressFamily:
    families = {_one_family(source), _one_family(destination)}
    if len(families) != 1:
        raise AddressError(f"source {source!r} and destination {destination!r} differ in family")
    return families.pop()


def _one_family(address: Address | None) -> socket.AddressFamily:
    if address is None:
        return socket.AF_UNSPEC
    if isinstance(address, str):
        if _AF_UNIX is None:
            raise AddressError("this platform has no Unix sockets")
        return socket.AddressFamily(_AF_UNIX)
    if len(address) == 4 or ":" in address[0]:
        return socket.AF_INET6
    return socket.AF_INET


def _ip_and_port(family: int, address: Address | None) -> tuple[str, int]:
    if not isinstance(address, tuple):
        raise AddressError(f"not an IP address and port: {address!r}")
    host, port = address[0], address[1]
    try:
        text = socket.inet_ntop(family, socket.inet_pton(family, host))
    except OSError:
        raise AddressError(f"not an IP address literal: {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise PortOutOfRangeError(f"port must be 0-65535, not {port}")
    return text, port


def _unix_field(path: Address | None) -> bytes:
    if not isinstance(path, str):
        raise AddressError(f"not a Unix socket path: {path!r}")
    raw = os.fsencode(path)
    if len(raw) > _UNIX_PATH_BYTES:
        raise AddressError(f"Unix path of {len(raw)} bytes exceeds {_UNIX_PATH_BYTES}")
    return raw.ljust(_UNIX_PATH_BYTES, b"\0")
