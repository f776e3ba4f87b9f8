"""The v2 binary format (section 2.2): a 16-byte fixed part, addresses, then TLVs.

::

    signature (12) | ver<<4|cmd (1) | fam<<4|proto (1) | length (2, big-endian)
    address block (12 / 36 / 216 / 0 bytes for INET / INET6 / UNIX / UNSPEC)
    TLVs: type (1) | length (2, big-endian) | value, up to 16 + length

The bytes of the fixed part are judged as they arrive (version, command, family,
protocol, then the declared length against the cap), so a bad header is refused as
soon as one byte proves it bad, before the rest is awaited. Nothing past the fixed part
is looked at until all ``16 + length`` bytes are there (the spec: "the receiver must not
start to parse an address before the whole address block is received").

Decisions the spec leaves open, and why:

- The address block's size follows the family nibble alone, for PROXY and LOCAL alike,
  and TLVs start after it: one rule, no guessing. Addresses are decoded only for PROXY
  with a specified family and protocol; otherwise they are ignored (section 2.2).
- A TLV type we decode (ALPN, authority, CRC32c, unique ID, SSL, netns) may appear only
  once, and so may an SSL subtype: with two authorities, parsers that keep the first
  and parsers that keep the last would disagree about the same connection.
- Text TLVs must decode (UTF-8 for authority and CN, ASCII for the rest, as section 2.2
  specifies): a name that cannot be read is not one to route or authorise on.
"""

from __future__ import annotations

import os
import socket
import struct

from ..errors import ProxyHeaderError
from .checksum import crc32c
from .header import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_FIXED_BYTES,
    V2_MAX_UNIQUE_ID_BYTES,
    Address,
    Command,
    ProxyHeader,
    SslInfo,
)

#: The low nibble of byte 13 (section 2.2); other values "must" make us drop the link.
COMMANDS: dict[int, Command] = {0x0: "LOCAL", 0x1: "PROXY"}
#: The high nibble of byte 14: the family and the size of its address block.
FAMILIES: dict[int, tuple[socket.AddressFamily, int]] = {
    0x0: (socket.AF_UNSPEC, 0),
    0x1: (socket.AF_INET, 2 * 4 + 2 * 2),
    0x2: (socket.AF_INET6, 2 * 16 + 2 * 2),
    # Where the platform has no AF_UNIX the block is still skipped, just not decoded.
    0x3: (getattr(socket, "AF_UNIX", socket.AF_UNSPEC), 2 * 108),
}
#: The low nibble of byte 14: the transport protocol.
PROTOCOLS: dict[int, int] = {0x0: 0, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}

#: Types that may appear once, and the SSL subtypes likewise (see the module docstring).
_SINGLE_TYPES = frozenset(
    {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID}
    | {PP2_TYPE_SSL, PP2_TYPE_NETNS}
)
_SSL_TEXT = {
    PP2_SUBTYPE_SSL_VERSION: ("version", "ascii"),
    PP2_SUBTYPE_SSL_CN: ("cn", "utf-8"),
    PP2_SUBTYPE_SSL_CIPHER: ("cipher", "ascii"),
    PP2_SUBTYPE_SSL_SIG_ALG: ("sig_alg", "ascii"),
    PP2_SUBTYPE_SSL_KEY_ALG: ("key_alg", "ascii"),
}
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_TLV_HEAD = struct.Struct("!BH")


def _refuse(reason: str, message: str, data: bytes | bytearray | memoryview) -> ProxyHeaderError:
    return ProxyHeaderError(reason, f"PROXY v2: {message}", excerpt=bytes(data[:V2_FIXED_BYTES]))


def parse(data: bytes | bytearray | memoryview, max_bytes: int) -> ProxyHeader | None:
    """Parse a v2 header at the start of ``data`` (whose 12-byte signature matched).

    ``None``: too few bytes yet, and those present are valid so far.
    """
    have = len(data)
    if have > 12:
        version, command_bits = data[12] >> 4, data[12] & 0xF
        if version != 2:
            raise _refuse("v2_bad_version", f"version {version}, expected 2", data)
        if command_bits not in COMMANDS:
            raise _refuse("v2_bad_command", f"unknown command {command_bits:#x}", data)
    if have > 13:
        if data[13] >> 4 not in FAMILIES:
            raise _refuse("v2_bad_family", f"unknown address family {data[13] >> 4:#x}", data)
        if data[13] & 0xF not in PROTOCOLS:
            raise _refuse("v2_bad_family", f"unknown transport protocol {data[13] & 0xF:#x}", data)
    if have < V2_FIXED_BYTES:
        return None
    total = V2_FIXED_BYTES + (data[14] << 8 | data[15])
    if total > max_bytes:
        raise _refuse("v2_too_long", f"{total}-byte header, over the cap of {max_bytes}", data)
    if have < total:
        return None

    header = bytes(data[:total])  # one copy; everything below reads from it
    command = COMMANDS[header[12] & 0xF]
    family, block_bytes = FAMILIES[header[13] >> 4]
    protocol = PROTOCOLS[header[13] & 0xF]
    if V2_FIXED_BYTES + block_bytes > total:
        raise _refuse(
            "v2_truncated_addresses",
            f"{total - V2_FIXED_BYTES} bytes after the fixed part; {family.name} needs "
            f"{block_bytes}",
            header,
        )
    source = destination = None
    if command == "PROXY" and family != socket.AF_UNSPEC and protocol:
        source, destination = _addresses(family, header)
    tlvs, offsets = _split_tlvs(header, V2_FIXED_BYTES + block_bytes, total, "TLV", header)
    known: dict[int, bytes] = {}
    crc_at = 0
    for (tlv_type, value), value_at in zip(tlvs, offsets, strict=True):
        if tlv_type in _SINGLE_TYPES:
            if tlv_type in known:
                raise _refuse("v2_bad_tlv", f"TLV type {tlv_type:#04x} appears twice", header)
            known[tlv_type] = value
            if tlv_type == PP2_TYPE_CRC32C:
                crc_at = value_at
    crc_checked = PP2_TYPE_CRC32C in known
    if crc_checked:
        _check_crc(header, known[PP2_TYPE_CRC32C], crc_at)
    unique_id = known.get(PP2_TYPE_UNIQUE_ID)
    if unique_id is not None and len(unique_id) > V2_MAX_UNIQUE_ID_BYTES:
        raise _refuse("v2_bad_tlv", f"unique ID of {len(unique_id)} bytes (max 128)", header)
    ssl_value = known.get(PP2_TYPE_SSL)
    return ProxyHeader(
        version=2,
        command=command,
        family=family,
        protocol=protocol,
        source=source,
        destination=destination,
        consumed=total,
        tlvs=tuple(tlvs),
        alpn=known.get(PP2_TYPE_ALPN),
        authority=_text(known.get(PP2_TYPE_AUTHORITY), "utf-8", "authority", header),
        unique_id=unique_id,
        netns=_text(known.get(PP2_TYPE_NETNS), "ascii", "netns", header),
        ssl=None if ssl_value is None else _ssl(ssl_value, header),
        crc32c_checked=crc_checked,
    )


def _addresses(family: int, header: bytes) -> tuple[Address, Address]:
    if family == socket.AF_INET:
        src, dst, sport, dport = _INET.unpack_from(header, V2_FIXED_BYTES)
        return (
            (socket.inet_ntop(family, src), sport),
            (socket.inet_ntop(family, dst), dport),
        )
    if family == socket.AF_INET6:
        src, dst, sport, dport = _INET6.unpack_from(header, V2_FIXED_BYTES)
        return (
            (socket.inet_ntop(family, src), sport, 0, 0),
            (socket.inet_ntop(family, dst), dport, 0, 0),
        )
    start = V2_FIXED_BYTES
    return _unix_path(header[start : start + 108]), _unix_path(header[start + 108 : start + 216])


def _unix_path(field: bytes) -> str:
    # sun_path is NUL-terminated, or fills all 108 bytes. A leading NUL names Linux's
    # abstract namespace, whose name then runs to the next NUL (trailing padding is
    # indistinguishable from name bytes in a fixed-size field, so it is dropped).
    if field[:1] == b"\0":
        return "\0" + os.fsdecode(field[1:].split(b"\0", 1)[0]) if field.strip(b"\0") else ""
    return os.fsdecode(field.split(b"\0", 1)[0])


def _split_tlvs(
    buffer: bytes, start: int, end: int, what: str, header: bytes
) -> tuple[list[tuple[int, bytes]], list[int]]:
    """The TLVs in ``buffer[start:end]`` and where each value starts."""
    tlvs: list[tuple[int, bytes]] = []
    offsets: list[int] = []
    at = start
    while at < end:
        if end - at < 3:
            raise _refuse("v2_bad_tlv", f"{end - at} stray bytes where a {what} starts", header)
        tlv_type, length = _TLV_HEAD.unpack_from(buffer, at)
        at += 3
        if at + length > end:
            raise _refuse(
                "v2_bad_tlv",
                f"{what} {tlv_type:#04x} claims {length} bytes, {end - at} remain",
                header,
            )
        tlvs.append((tlv_type, buffer[at : at + length]))
        offsets.append(at)
        at += length
    return tlvs, offsets


def _check_crc(header: bytes, stored: bytes, value_at: int) -> None:
    # Section 2.2.3: the checksum covers the whole header with its own 4 bytes zeroed.
    if len(stored) != 4:
        raise _refuse("v2_bad_tlv", f"CRC32c TLV of {len(stored)} bytes, not 4", header)
    computed = crc32c(header[:value_at] + b"\0\0\0\0" + header[value_at + 4 :])
    if computed != int.from_bytes(stored, "big"):
        raise _refuse(
            "v2_bad_crc",
            f"CRC32c {int.from_bytes(stored, 'big'):#010x} does not match {computed:#010x}",
            header,
        )


def _text(value: bytes | None, encoding: str, what: str, header: bytes) -> str | None:
    if value is None:
        return None
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise _refuse("v2_bad_tlv", f"{what} TLV is not {encoding} text", header) from None


def _ssl(value: bytes, header: bytes) -> SslInfo:
    # Section 2.2.6: client (1 byte), verify (4 bytes), then sub-TLVs to the end.
    if len(value) < 5:
        raise _refuse("v2_bad_tlv", f"SSL TLV of {len(value)} bytes, needs at least 5", header)
    sub_tlvs, _ = _split_tlvs(value, 5, len(value), "SSL sub-TLV", header)
    texts: dict[str, str | None] = {}
    for subtype, sub_value in sub_tlvs:
        if subtype in _SSL_TEXT:
            name, encoding = _SSL_TEXT[subtype]
            if name in texts:
                raise _refuse("v2_bad_tlv", f"SSL sub-TLV {subtype:#04x} appears twice", header)
            texts[name] = _text(sub_value, encoding, f"SSL {name}", header)
    return SslInfo(
        client_flags=value[0],
        verify_result=int.from_bytes(value[1:5], "big"),
        version=texts.get("version"),
        cn=texts.get("cn"),
        cipher=texts.get("cipher"),
        sig_alg=texts.get("sig_alg"),
        key_alg=texts.get("key_alg"),
        sub_tlvs=tuple(sub_tlvs),
    )
