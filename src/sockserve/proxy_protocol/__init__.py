"""PROXY protocol v1 and v2 (HAProxy's ``proxy-protocol.txt``), sans-IO.

A proxy in front of the server prepends one header to each connection saying who the
client really is. This package turns the first bytes of a connection into a
``ProxyHeader``, or refuses them: bytes in, a result or a ``ProxyHeaderError`` out. It
opens no socket, reads no clock and starts no thread, so property tests and fuzzers
drive it directly; the connection stage owns the socket and the deadline.

How it works: ``parse_proxy_header(data)`` looks at the first byte to pick the format
(``P`` for the v1 text line, CR for the v2 binary signature; they were designed to
differ there), checks each byte against the signature and, for v2, the fixed fields as
they arrive, and returns ``None`` while what it has could still become a valid header.
So a TLS ClientHello (0x16) or an HTTP request is refused after one byte, never after a
timeout, and a header split across reads gives ``None`` until the last byte arrives.
Bytes after the header belong to the application and are never looked at:
``result.consumed`` says where they start.

A reader that must not over-read (the header precedes the TLS handshake or the
application protocol on the same socket) peeks, then consumes exactly the header::

    while (header := parse_proxy_header(peeked := sock.recv(need, socket.MSG_PEEK))) is None:
        need = header_bytes_needed(peeked)        # plus a deadline and an EOF check
    sock.recv(header.consumed)                    # take the header, leave the rest

Only accept headers from trusted proxies: section 5 of the spec warns that a listener
that guesses whether a header is present lets any client spoof its address, so the
server is configured for PROXY (``accept`` picks the versions) or not at all.

Where code belongs: ``header`` holds the result types, wire constants and limits (with
their spec sections); ``v1`` and ``v2`` parse one format each and decide nothing about
the other; ``checksum`` is CRC32c; ``encode`` builds headers for tests, clients and
benchmarks. This module only picks the format.
"""

from __future__ import annotations

from .. import errors
from ..errors import ProxyHeaderError
from . import v1, v2
from .checksum import crc32c
from .encode import encode_ssl_tlv, encode_v1, encode_v1_unknown, encode_v2, encode_v2_local
from .header import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LINE_BYTES,
    V1_MIN_LINE_BYTES,
    V1_SIGNATURE,
    V2_DEFAULT_MAX_BYTES,
    V2_FIXED_BYTES,
    V2_SIGNATURE,
    Address,
    ProxyHeader,
    SslInfo,
)

__all__ = [
    "parse_proxy_header",
    "header_bytes_needed",
    "ProxyHeader",
    "SslInfo",
    "Address",
    "ProxyHeaderError",
    "encode_v1",
    "encode_v1_unknown",
    "encode_v2",
    "encode_v2_local",
    "encode_ssl_tlv",
    "crc32c",
    "V1_MAX_LINE_BYTES",
    "V1_MIN_LINE_BYTES",
    "V2_FIXED_BYTES",
    "V2_DEFAULT_MAX_BYTES",
    "V1_SIGNATURE",
    "V2_SIGNATURE",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "PP2_TYPE_SSL",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_TYPE_NETNS",
    "PP2_CLIENT_SSL",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
]

#: ``accept=`` → the versions a listener takes. Section 2: v2 receivers should also
#: take v1 "for better interoperability", hence the default "any".
ACCEPT_VERSIONS: dict[str, tuple[int, ...]] = {"v1": (1,), "v2": (2,), "any": (1, 2)}
#: The first byte of each format; the two were designed to differ there.
_SIGNATURES = {V1_SIGNATURE[0]: (1, V1_SIGNATURE), V2_SIGNATURE[0]: (2, V2_SIGNATURE)}


def parse_proxy_header(
    data: bytes | bytearray | memoryview,
    *,
    accept: str = "any",
    max_v2_bytes: int = V2_DEFAULT_MAX_BYTES,
) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, or ``None`` if more bytes are needed.

    ``accept`` is ``"v1"``, ``"v2"`` or ``"any"``; ``max_v2_bytes`` caps a whole v2
    header (fixed part included). Raises ``ProxyHeaderError`` as soon as ``data`` cannot
    be the start of an acceptable header; its ``reason`` names the rule broken.
    """
    versions = ACCEPT_VERSIONS.get(accept)
    if versions is None:
        raise errors.ConfigurationError(f"accept must be 'v1', 'v2' or 'any', not {accept!r}")
    if max_v2_bytes < V2_FIXED_BYTES:
        raise errors.ConfigurationError(f"max_v2_bytes must be at least {V2_FIXED_BYTES}")
    if not data:
        return None
    version, signature = _SIGNATURES.get(data[0], (0, b""))
    seen = bytes(data[: len(signature)])
    if not version or not signature.startswith(seen):
        raise ProxyHeaderError(
            "bad_signature", "not a PROXY protocol header", excerpt=bytes(data[:12])
        )
    if version not in versions:
        raise ProxyHeaderError(
            "version_not_accepted",
            f"a PROXY v{version} header, but this listener accepts {accept} only",
        )
    if len(seen) < len(signature):
        return None
    if version == 1:
        return v1.parse(data)
    return v2.parse(data, max_v2_bytes)


def header_bytes_needed(data: bytes | bytearray | memoryview, *, accept: str = "any") -> int:
    """How many bytes, at least, the header starting ``data`` needs in total.

    Never more than the header really has, so a reader that waits for this many bytes
    cannot wait for bytes that will not come. Exact once it is known: for v2 when the
    16-byte fixed part is there (16 + its length), for v1 when the CRLF is (v1 has no
    length field, so until then: one more byte than seen, at least the shortest v1
    line, at most 107). Meaningful while ``parse_proxy_header`` returns ``None`` or a
    header; it does not validate.
    """
    if not data:
        return V1_MIN_LINE_BYTES if 1 in ACCEPT_VERSIONS.get(accept, (1,)) else V2_FIXED_BYTES
    if data[0] == V2_SIGNATURE[0]:
        if len(data) < V2_FIXED_BYTES:
            return V2_FIXED_BYTES
        return V2_FIXED_BYTES + (data[14] << 8 | data[15])
    end = bytes(data[:V1_MAX_LINE_BYTES]).find(b"\r\n")
    if end >= 0:
        return end + 2
    return min(max(len(data) + 1, V1_MIN_LINE_BYTES), V1_MAX_LINE_BYTES)
