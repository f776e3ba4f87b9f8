"""The PROXY protocol parser: every valid header round-trips, every bad one is refused.

Sans-IO, so no sockets here: headers come from the encoder, from HAProxy itself (bytes
captured with ``tests/haproxy_capture.py``) and from hypothesis. The properties: a
header split anywhere gives ``None`` until its last byte and then the same result;
bytes after it are never consumed; random and mutated input only ever gives ``None``, a
``ProxyHeader`` or ``ProxyHeaderError``; ``header_bytes_needed`` never asks for more
than the header has. The corpus pins one reason per rule of the spec.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve.errors import (
    AddressError,
    ConfigurationError,
    PeerProtocolError,
    PortOutOfRangeError,
    ProxyHeaderError,
    SockserveError,
)
from sockserve.proxy_protocol import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LINE_BYTES,
    V2_DEFAULT_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    crc32c,
    encode_ssl_tlv,
    encode_v1,
    encode_v1_unknown,
    encode_v2,
    encode_v2_local,
    header_bytes_needed,
    parse_proxy_header,
)

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")

# -- what HAProxy 2.6.12 really sends (tests/haproxy_capture.py, loopback) --------------

#: Each capture is the header followed by what the client sent through the proxy.
HAPROXY_PAYLOAD = b"hello through haproxy\n"
#: ``check send-proxy-v2 check-send-proxy``: a health check's LOCAL header, nothing after.
HAPROXY_HEALTH_CHECK = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")
#: ``send-proxy``: v1, TCP4.
HAPROXY_V1 = (
    bytes.fromhex(
        "50524f58592054435034203132372e302e302e31203132372e302e302e312035383336362034313934330d0a"
    )
    + HAPROXY_PAYLOAD
)
#: ``send-proxy-v2``: TCP over IPv4, no TLVs.
HAPROXY_V2 = (
    bytes.fromhex("0d0a0d0a000d0a515549540a2111000c7f0000017f0000019e5cada5") + HAPROXY_PAYLOAD
)
#: ``send-proxy-v2 proxy-v2-options crc32c,unique-id``: HAProxy puts the CRC32c first.
HAPROXY_V2_CRC_UNIQUE_ID = (
    bytes.fromhex(
        "0d0a0d0a000d0a515549540a2111002f7f0000017f000001c7d28785"
        "03000452ad35b4"
        "050019736f636b73657276652d3132372e302e302e312d3531313534"
    )
    + HAPROXY_PAYLOAD
)

#: The start of a TLS 1.2+ ClientHello record: what follows a header on a TLS listener.
CLIENT_HELLO = bytes.fromhex("160301020001000 1fc0303".replace(" ", "")) + bytes(range(32))
IPV4 = socket.AF_INET
IPV6 = socket.AF_INET6
STREAM = socket.SOCK_STREAM
DGRAM = socket.SOCK_DGRAM
#: Every reason the parser may give; the robustness property checks against it.
REASONS = {
    "bad_signature",
    "version_not_accepted",
    "v1_too_long",
    "v1_bad_field",
    "v2_bad_version",
    "v2_bad_command",
    "v2_bad_family",
    "v2_too_long",
    "v2_truncated_addresses",
    "v2_bad_tlv",
    "v2_bad_crc",
}


def parse(data: bytes, **options: Any) -> ProxyHeader:
    header = parse_proxy_header(data, **options)
    assert header is not None, f"incomplete: {data!r}"
    return header


def reason_of(data: bytes, **options: Any) -> str:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(data, **options)
    return caught.value.reason


def v2_raw(ver_cmd: int, fam: int, body: bytes, *, length: int | None = None) -> bytes:
    """A v2 header from raw parts, for the headers the encoder refuses to build."""
    declared = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, declared) + body


def tlv(tlv_type: int, value: bytes, *, length: int | None = None) -> bytes:
    return struct.pack("!BH", tlv_type, len(value) if length is None else length) + value


INET_BLOCK = socket.inet_pton(IPV4, "192.0.2.1") + socket.inet_pton(IPV4, "198.51.100.7")
INET_BLOCK += struct.pack("!HH", 56324, 443)
#: An SSL TLV's fixed part: client flags (TLS), verify result 0.
SSL_HEAD = b"\x01\0\0\0\0"


def inet_with(tlvs: bytes) -> bytes:
    """A TCP-over-IPv4 PROXY header whose TLV area is ``tlvs``, however malformed."""
    return v2_raw(0x21, 0x11, INET_BLOCK + tlvs)


# -- CRC32c ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),  # the catalogue check value for CRC-32C
        (b"", 0x00000000),
        (bytes(32), 0x8A9136AA),  # RFC 3720 appendix B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
    ids=["check", "empty", "zeros", "ones", "ascending", "descending"],
)
def test_crc32c_matches_published_values(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_crc32c_continues_across_chunks(first: bytes, second: bytes) -> None:
    assert crc32c(second, crc32c(first)) == crc32c(first + second)


# -- round trips through the encoder -----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "family"),
    [
        (("192.0.2.1", 56324), ("198.51.100.7", 443), IPV4),
        (("2001:db8::1", 56324, 0, 0), ("2001:db8::2", 443, 0, 0), IPV6),
        (("::ffff:192.0.2.1", 1, 0, 0), ("::", 0, 0, 0), IPV6),
    ],
    ids=["ipv4", "ipv6", "ipv6-mapped"],
)
@pytest.mark.parametrize(
    ("version", "protocol"), [(1, STREAM), (2, STREAM), (2, DGRAM)], ids=["v1", "v2", "v2-dgram"]
)
def test_ip_headers_round_trip(
    source: Any, destination: Any, family: int, version: int, protocol: int
) -> None:
    if version == 1:
        data = encode_v1(source, destination)  # v1 carries TCP only
    else:
        data = encode_v2(source, destination, protocol=protocol)
    header = parse(data)
    assert (header.version, header.command, header.family, header.protocol) == (
        version,
        "PROXY",
        family,
        protocol,
    )
    assert (header.source, header.destination) == (source, destination)
    assert header.consumed == len(data)
    assert not header.is_local
    assert header.tlvs == ()
    assert header.crc32c_checked is False


@needs_unix
@pytest.mark.parametrize("protocol", [STREAM, DGRAM], ids=["stream", "dgram"])
@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ("/run/app/client.sock", "/run/app/server.sock"),
        ("\0abstract-client", "\0abstract-server"),
        ("", "x" * 108),  # unnamed, and a path filling sun_path with no terminator
    ],
    ids=["paths", "abstract", "edges"],
)
def test_unix_headers_round_trip(source: str, destination: str, protocol: int) -> None:
    data = encode_v2(source, destination, protocol=protocol)
    assert len(data) == 16 + 216
    header = parse(data)
    assert (header.family, header.protocol) == (socket.AF_UNIX, protocol)
    assert (header.source, header.destination) == (source, destination)


def test_unspecified_family_round_trips_without_addresses() -> None:
    header = parse(encode_v2(None, None, protocol=0))
    assert (header.command, header.family, header.protocol) == ("PROXY", socket.AF_UNSPEC, 0)
    assert header.source is header.destination is None
    assert header.consumed == 16


def test_local_header_means_use_the_real_endpoints() -> None:
    header = parse(encode_v2_local())
    assert header.command == "LOCAL"
    assert header.is_local
    assert header.source is header.destination is None


def test_local_header_with_addresses_ignores_them_but_keeps_the_tlvs() -> None:
    data = encode_v2(
        ("192.0.2.1", 1), ("192.0.2.2", 2), command="LOCAL", tlvs=[(PP2_TYPE_ALPN, b"h2")]
    )
    header = parse(data)
    assert (header.command, header.family) == ("LOCAL", IPV4)
    assert header.source is header.destination is None
    assert header.alpn == b"h2"


def test_v1_unknown_is_local() -> None:
    for line in (encode_v1_unknown(), b"PROXY UNKNOWN 192.0.2.1 anything at all\r\n"):
        header = parse(line + b"EHLO")
        assert (header.version, header.command, header.family) == (1, "LOCAL", socket.AF_UNSPEC)
        assert header.source is header.destination is None
        assert header.consumed == len(line)


def test_v1_ipv6_reports_the_canonical_text() -> None:
    header = parse(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 0000::1 1 2\r\n")
    assert header.source == ("2001:db8::1", 1, 0, 0)
    assert header.destination == ("::1", 2, 0, 0)


def test_v1_longest_line_of_107_bytes_is_accepted() -> None:
    line = b"PROXY UNKNOWN " + b"f" * (V1_MAX_LINE_BYTES - 16) + b"\r\n"
    assert len(line) == V1_MAX_LINE_BYTES
    assert parse(line).consumed == V1_MAX_LINE_BYTES
    longest_tcp6 = b"PROXY TCP6 " + b":".join([b"ffff"] * 8) * 1 + b" "
    longest_tcp6 += b":".join([b"ffff"] * 8) + b" 65535 65535\r\n"
    assert len(longest_tcp6) == 104  # section 2.1's figure
    assert parse(longest_tcp6).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 0, 0)


def test_known_tlvs_are_decoded_and_all_are_kept_raw_in_order() -> None:
    ssl = encode_ssl_tlv(
        client_flags=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        verify_result=0,
        version="TLSv1.3",
        cn="client.example — ünïcode",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="RSA-SHA256",
        key_alg="RSA2048",
    )
    tlvs = [
        (PP2_TYPE_NOOP, b""),
        (PP2_TYPE_ALPN, b"\x02h2"),
        (PP2_TYPE_AUTHORITY, "bücher.example".encode()),
        (PP2_TYPE_UNIQUE_ID, bytes(range(128))),
        ssl,
        (PP2_TYPE_NETNS, b"blue"),
        (0xE0, b"custom"),
        (PP2_TYPE_NOOP, b"\0\0\0"),
    ]
    data = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs, with_crc32c=True)
    header = parse(data)
    assert header.tlvs[:-1] == tuple(tlvs)
    assert header.tlvs[-1][0] == PP2_TYPE_CRC32C
    assert header.crc32c_checked
    assert header.alpn == b"\x02h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == bytes(range(128))
    assert header.netns == "blue"
    assert header.ssl is not None
    assert header.ssl.is_tls
    assert header.ssl.has_verified_cert
    assert (header.ssl.version, header.ssl.cn) == ("TLSv1.3", "client.example — ünïcode")
    assert (header.ssl.cipher, header.ssl.sig_alg, header.ssl.key_alg) == (
        "TLS_AES_128_GCM_SHA256",
        "RSA-SHA256",
        "RSA2048",
    )
    assert [subtype for subtype, _ in header.ssl.sub_tlvs] == [0x21, 0x22, 0x23, 0x24, 0x25]


def test_ssl_without_a_verified_certificate() -> None:
    tlvs = [encode_ssl_tlv(client_flags=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify_result=9)]
    ssl = parse(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs)).ssl
    assert ssl is not None
    assert ssl.is_tls
    assert not ssl.has_verified_cert
    assert ssl.version is ssl.cn is None


def test_proxy_header_is_frozen_and_slotted() -> None:
    header = parse(encode_v2_local())
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.command = "PROXY"  # type: ignore[misc]
    assert not hasattr(header, "__dict__")


# -- HAProxy's own bytes -----------------------------------------------------------------


def test_haproxy_v1() -> None:
    header = parse(HAPROXY_V1)
    assert (header.source, header.destination) == (("127.0.0.1", 58366), ("127.0.0.1", 41943))
    assert HAPROXY_V1[header.consumed :] == HAPROXY_PAYLOAD
    assert encode_v1(header.source, header.destination) == HAPROXY_V1[: header.consumed]


def test_haproxy_v2() -> None:
    header = parse(HAPROXY_V2)
    assert (header.version, header.command, header.protocol) == (2, "PROXY", STREAM)
    assert (header.source, header.destination) == (("127.0.0.1", 40540), ("127.0.0.1", 44453))
    assert HAPROXY_V2[header.consumed :] == HAPROXY_PAYLOAD
    assert encode_v2(header.source, header.destination) == HAPROXY_V2[: header.consumed]


def test_haproxy_crc32c_and_unique_id() -> None:
    header = parse(HAPROXY_V2_CRC_UNIQUE_ID)
    assert header.crc32c_checked  # our CRC32c agrees with HAProxy's
    assert header.unique_id == b"sockserve-127.0.0.1-51154"
    assert [tlv_type for tlv_type, _ in header.tlvs] == [PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID]
    assert HAPROXY_V2_CRC_UNIQUE_ID[header.consumed :] == HAPROXY_PAYLOAD
    corrupted = bytearray(HAPROXY_V2_CRC_UNIQUE_ID)
    corrupted[-len(HAPROXY_PAYLOAD) - 1] ^= 0x01  # the unique ID's last byte
    assert reason_of(bytes(corrupted)) == "v2_bad_crc"


def test_haproxy_health_check_is_local() -> None:
    header = parse(HAPROXY_HEALTH_CHECK)
    assert (header.command, header.family, header.consumed) == ("LOCAL", socket.AF_UNSPEC, 16)


# -- hypothesis: valid headers -----------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.tuples(st.ip_addresses(v=4).map(str), ports)
ipv6 = st.tuples(
    st.ip_addresses(v=6).map(lambda ip: socket.inet_ntop(IPV6, ip.packed)),
    ports,
    st.just(0),
    st.just(0),
)
path_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=60)
unix_paths = path_text.filter(lambda p: len(os.fsencode(p)) <= 108) | path_text.filter(
    lambda p: 0 < len(os.fsencode(p)) <= 107
).map(lambda p: "\0" + p)
#: TLV types the parser decodes and allows once; the others may repeat.
SINGLE_TYPES = {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID}
SINGLE_TYPES |= {PP2_TYPE_SSL, PP2_TYPE_NETNS}
free_tlvs = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t not in SINGLE_TYPES), st.binary(max_size=24)),
    max_size=4,
)
ascii_text = st.text(st.characters(codec="ascii"), max_size=16)


@st.composite
def known_tlvs(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    chosen: list[tuple[int, bytes]] = []
    if draw(st.booleans()):
        chosen.append((PP2_TYPE_ALPN, draw(st.binary(max_size=16))))
    if draw(st.booleans()):
        chosen.append((PP2_TYPE_AUTHORITY, draw(st.text(max_size=16)).encode()))
    if draw(st.booleans()):
        chosen.append((PP2_TYPE_UNIQUE_ID, draw(st.binary(max_size=128))))
    if draw(st.booleans()):
        chosen.append((PP2_TYPE_NETNS, draw(ascii_text).encode()))
    if draw(st.booleans()):
        chosen.append(
            encode_ssl_tlv(
                client_flags=draw(st.integers(0, 7)),
                verify_result=draw(st.integers(0, 2**32 - 1)),
                version=draw(st.none() | ascii_text),
                cn=draw(st.none() | st.text(max_size=16)),
                cipher=draw(st.none() | ascii_text),
            )
        )
    return chosen


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from(["inet", "inet6", "unix", "unspec"]))
    if family == "unix" and not hasattr(socket, "AF_UNIX"):
        family = "unspec"
    pair: tuple[Any, Any] = {
        "inet": lambda: (draw(ipv4), draw(ipv4)),
        "inet6": lambda: (draw(ipv6), draw(ipv6)),
        "unix": lambda: (draw(unix_paths), draw(unix_paths)),
        "unspec": lambda: (None, None),
    }[family]()
    tlvs = draw(st.permutations(draw(known_tlvs()) + draw(free_tlvs)))
    return encode_v2(
        *pair,
        command=draw(st.sampled_from(["PROXY", "LOCAL"])),
        protocol=draw(st.sampled_from([STREAM, DGRAM, 0])),
        tlvs=tlvs,
        with_crc32c=draw(st.booleans()),
    )


v1_headers = (
    st.builds(encode_v1, ipv4, ipv4)
    | st.builds(encode_v1, ipv6, ipv6)
    | st.just(encode_v1_unknown())
)
valid_headers = v1_headers | v2_headers()
trailers = st.sampled_from([b"", CLIENT_HELLO, b"GET / HTTP/1.1\r\n\r\n", b"\r\n"]) | st.binary()
buffer_types = st.sampled_from([bytes, bytearray, memoryview])


@settings(deadline=None)
@given(valid_headers, trailers, buffer_types)
def test_every_split_waits_then_gives_the_same_header(
    data: bytes, trailer: bytes, buffer_type: Any
) -> None:
    whole = parse(data)
    assert whole.consumed == len(data)
    for cut in range(len(data)):
        prefix = data[:cut]
        assert parse_proxy_header(buffer_type(prefix)) is None, f"cut at {cut}"
        needed = header_bytes_needed(buffer_type(prefix))
        assert cut < needed <= len(data), f"cut at {cut}: needs {needed} of {len(data)}"
    assert parse(buffer_type(data + trailer)) == whole
    assert header_bytes_needed(buffer_type(data + trailer)) == len(data)


@settings(deadline=None)
@given(v1_headers | v2_headers(), st.data())
def test_the_accepted_versions_decide(data: bytes, choice: st.DataObject) -> None:
    version = parse(data).version
    other = "v2" if version == 1 else "v1"
    assert parse(data, accept=f"v{version}").version == version
    assert reason_of(data, accept=other) == "version_not_accepted"
    cut = choice.draw(st.integers(1, len(data)), label="cut")
    assert reason_of(data[:cut], accept=other) == "version_not_accepted"  # at the first byte


# -- hypothesis: hostile input -----------------------------------------------------------


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_headers))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


hostile = (
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda tail: V2_SIGNATURE + tail)
    | st.binary(max_size=120).map(lambda tail: b"PROXY " + tail)
    | mutated_headers()
)


@settings(deadline=None, max_examples=500)
@given(hostile, st.sampled_from(["any", "v1", "v2"]), st.sampled_from([16, 64, 300, 4096]))
def test_hostile_input_gives_none_a_header_or_a_proxy_header_error(
    data: bytes, accept: str, max_v2_bytes: int
) -> None:
    refused: ProxyHeaderError | None = None
    try:
        header = parse_proxy_header(data, accept=accept, max_v2_bytes=max_v2_bytes)
    except ProxyHeaderError as exc:
        refused = exc
    if refused is not None:
        assert refused.reason in REASONS
        assert len(str(refused)) < 400  # at most 40 bytes of peer data, escaped
        return
    if header is None:
        assert len(data) < max(max_v2_bytes, V1_MAX_LINE_BYTES)
        needed = header_bytes_needed(data, accept=accept)
        assert needed > len(data)
        return
    assert 0 < header.consumed <= len(data)
    cap = V1_MAX_LINE_BYTES if header.version == 1 else max_v2_bytes
    assert header.consumed <= cap
    assert header_bytes_needed(data) == header.consumed
    if header.command == "LOCAL" or header.family == socket.AF_UNSPEC:
        assert header.source is header.destination is None


# -- the corpus: one rule each -----------------------------------------------------------

V1_OK = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
BAD_HEADERS: dict[str, tuple[bytes, str]] = {
    # Signatures: refused at the first byte that differs.
    "tls-client-hello": (CLIENT_HELLO, "bad_signature"),
    "http-request": (b"GET / HTTP/1.1\r\n", "bad_signature"),
    "ssh-banner": (b"SSH-2.0-OpenSSH_9.2\r\n", "bad_signature"),
    "lowercase-proxy": (V1_OK.lower(), "bad_signature"),
    "proxy-without-space": (b"PROXY\tTCP4", "bad_signature"),
    "v2-signature-typo": (V2_SIGNATURE[:-1] + b"X", "bad_signature"),
    # v1 (section 2.1).
    "v1-never-ending": (b"PROXY UNKNOWN " + b"x" * 1000, "v1_too_long"),
    "v1-108-bytes": (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "v1_too_long"),
    "v1-tcp4-never-ending": (b"PROXY TCP4 " + b"1" * 200, "v1_too_long"),
    "v1-lowercase-keyword": (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-unknown-protocol": (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-unknownx": (b"PROXY UNKNOWNX\r\n", "v1_bad_field"),
    "v1-port-65536": (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1_bad_field"),
    "v1-port-999999": (b"PROXY TCP4 1.2.3.4 5.6.7.8 999999 2\r\n", "v1_bad_field"),
    "v1-port-leading-zero": (b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 2\r\n", "v1_bad_field"),
    "v1-port-negative": (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "v1_bad_field"),
    "v1-port-plus": (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1_bad_field"),
    "v1-port-hex": (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", "v1_bad_field"),
    "v1-port-empty": (b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n", "v1_bad_field"),
    "v1-octet-leading-zero": (b"PROXY TCP4 192.168.001.1 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-octet-256": (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-three-octets": (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-five-octets": (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-ipv6-in-tcp4": (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-ipv4-in-tcp6": (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1_bad_field"),
    "v1-ipv6-two-double-colons": (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "v1_bad_field"),
    "v1-ipv6-scope": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1_bad_field"),
    "v1-hostname": (b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-double-space": (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-double-space-after-proxy": (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-trailing-space": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1_bad_field"),
    "v1-extra-field": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "v1_bad_field"),
    "v1-missing-field": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1_bad_field"),
    "v1-tab": (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "v1_bad_field"),
    "v1-bare-lf": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET / HTTP/1.1\r\n", "v1_bad_field"),
    "v1-bare-cr": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET / HTTP/1.1\r\n", "v1_bad_field"),
    "v1-unknown-bare-lf": (b"PROXY UNKNOWN\nGET / HTTP/1.1\r\n", "v1_bad_field"),
    "v1-non-ascii-digit": ("PROXY TCP4 1.2.3.4 5.6.7.8 ١ 2\r\n".encode(), "v1_bad_field"),
    "v1-nul": (b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "v1_bad_field"),
    # v2 fixed part (section 2.2).
    "v2-version-1": (v2_raw(0x11, 0x11, INET_BLOCK), "v2_bad_version"),
    "v2-version-3": (v2_raw(0x31, 0x11, INET_BLOCK), "v2_bad_version"),
    "v2-command-2": (v2_raw(0x22, 0x11, INET_BLOCK), "v2_bad_command"),
    "v2-command-f": (v2_raw(0x2F, 0x11, INET_BLOCK), "v2_bad_command"),
    "v2-family-4": (v2_raw(0x21, 0x41, INET_BLOCK), "v2_bad_family"),
    "v2-protocol-3": (v2_raw(0x21, 0x13, INET_BLOCK), "v2_bad_family"),
    "v2-length-65535": (v2_raw(0x21, 0x11, INET_BLOCK, length=0xFFFF), "v2_too_long"),
    "v2-length-over-cap": (
        v2_raw(0x21, 0x11, INET_BLOCK, length=V2_DEFAULT_MAX_BYTES - 15),
        "v2_too_long",
    ),
    # v2 address blocks.
    "v2-inet-11-bytes": (v2_raw(0x21, 0x11, INET_BLOCK[:11]), "v2_truncated_addresses"),
    "v2-inet-empty": (v2_raw(0x21, 0x12, b""), "v2_truncated_addresses"),
    "v2-inet6-35-bytes": (v2_raw(0x21, 0x21, bytes(35)), "v2_truncated_addresses"),
    "v2-unix-215-bytes": (v2_raw(0x21, 0x31, bytes(215)), "v2_truncated_addresses"),
    # v2 TLVs.
    "tlv-overruns-header": (inet_with(tlv(0xE0, b"abc", length=4)), "v2_bad_tlv"),
    "tlv-length-65535": (inet_with(tlv(0xE0, b"", length=0xFFFF)), "v2_bad_tlv"),
    "tlv-two-stray-bytes": (inet_with(b"\x01\x00"), "v2_bad_tlv"),
    "tlv-one-stray-byte": (inet_with(b"\x04"), "v2_bad_tlv"),
    "ssl-sub-tlv-overrun": (
        inet_with(tlv(PP2_TYPE_SSL, SSL_HEAD + tlv(0x21, b"TLS", length=9))),
        "v2_bad_tlv",
    ),
    "ssl-sub-tlv-stray-byte": (inet_with(tlv(PP2_TYPE_SSL, SSL_HEAD + b"\x21")), "v2_bad_tlv"),
    "ssl-shorter-than-5": (inet_with(tlv(PP2_TYPE_SSL, SSL_HEAD[:4])), "v2_bad_tlv"),
    "ssl-duplicate-cn": (
        inet_with(tlv(PP2_TYPE_SSL, SSL_HEAD + tlv(0x22, b"a") + tlv(0x22, b"b"))),
        "v2_bad_tlv",
    ),
    "ssl-cipher-not-ascii": (
        inet_with(tlv(PP2_TYPE_SSL, SSL_HEAD + tlv(0x23, b"\xe9"))),
        "v2_bad_tlv",
    ),
    "duplicate-authority": (
        inet_with(tlv(2, b"good.example") + tlv(2, b"evil.example")),
        "v2_bad_tlv",
    ),
    "duplicate-crc": (inet_with(tlv(3, bytes(4)) + tlv(3, bytes(4))), "v2_bad_tlv"),
    "authority-not-utf8": (inet_with(tlv(2, b"\xff\xfe")), "v2_bad_tlv"),
    "netns-not-ascii": (inet_with(tlv(0x30, "ñ".encode())), "v2_bad_tlv"),
    "unique-id-129-bytes": (inet_with(tlv(5, bytes(129))), "v2_bad_tlv"),
    "crc-of-3-bytes": (inet_with(tlv(3, b"\0\0\0")), "v2_bad_tlv"),
    "crc-wrong": (inet_with(tlv(3, b"\xde\xad\xbe\xef")), "v2_bad_crc"),
    "crc-zero": (inet_with(tlv(3, b"\0\0\0\0")), "v2_bad_crc"),
}


@pytest.mark.parametrize(("data", "reason"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_known_bad_header_is_refused(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_a_corrupted_crc_header_is_refused() -> None:
    data = bytearray(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), with_crc32c=True))
    data[16] ^= 0x80  # the source address: the CRC no longer matches
    assert reason_of(bytes(data)) == "v2_bad_crc"


@pytest.mark.parametrize(
    ("data", "refused_after"),
    [
        (CLIENT_HELLO, 1),
        (b"GET / HTTP/1.1\r\n", 1),
        (b"PRI * HTTP/2.0\r\n", 3),
        (b"\r\n\r\n\x00\r\nQUIX\n", 11),
        (b"PROXY tcp4", 7),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31),
        (v2_raw(0x11, 0x11, INET_BLOCK), 13),
        (v2_raw(0x21, 0x41, INET_BLOCK), 14),
        (v2_raw(0x21, 0x11, INET_BLOCK, length=0xFFFF), 16),
    ],
    ids=[
        "tls",
        "http1",
        "http2",
        "v2-signature",
        "v1-keyword",
        "v1-bare-lf",
        "v2-version",
        "v2-family",
        "v2-length",
    ],
)
def test_refused_at_the_first_byte_that_proves_it(data: bytes, refused_after: int) -> None:
    assert parse_proxy_header(data[: refused_after - 1]) is None
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data[:refused_after])


def test_declared_length_beyond_the_data_waits_for_it() -> None:
    data = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(0xE0, bytes(1000))])
    assert parse_proxy_header(data[:100]) is None
    assert header_bytes_needed(data[:16]) == len(data)
    assert reason_of(data, max_v2_bytes=len(data) - 1) == "v2_too_long"
    assert parse(data, max_v2_bytes=len(data)).consumed == len(data)


# -- header_bytes_needed -----------------------------------------------------------------


def test_header_bytes_needed_before_the_format_is_known() -> None:
    assert header_bytes_needed(b"") == 15  # "PROXY UNKNOWN\r\n", the shortest header
    assert header_bytes_needed(b"", accept="v2") == 16
    assert header_bytes_needed(b"PROX") == 15
    assert header_bytes_needed(b"\r\n") == 16


def test_header_bytes_needed_for_v1_grows_until_the_crlf() -> None:
    assert header_bytes_needed(b"PROXY TCP4 1.2.3.4 ") == 20
    assert header_bytes_needed(V1_OK[:-1]) == len(V1_OK)
    assert header_bytes_needed(V1_OK + b"GET") == len(V1_OK)
    assert header_bytes_needed(b"PROXY UNKNOWN " + b"f" * 200) == V1_MAX_LINE_BYTES


# -- errors and arguments ----------------------------------------------------------------


def test_proxy_header_error_is_the_peers_fault_and_pickles() -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(b"PROXY UNKNOWN " + b"\x1b[31m" * 100)
    exc = caught.value
    assert isinstance(exc, PeerProtocolError)
    assert isinstance(exc, SockserveError)
    assert isinstance(exc, ValueError)
    assert exc.reply == b""
    assert "\x1b" not in str(exc)  # escaped, so no terminal control codes in a log line
    assert len(str(exc)) < 250
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), copy.reason, str(copy)) == (ProxyHeaderError, exc.reason, str(exc))


@pytest.mark.parametrize("options", [{"accept": "v3"}, {"accept": "V1"}, {"max_v2_bytes": 15}])
def test_bad_arguments_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        parse_proxy_header(V1_OK, **options)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: encode_v1(("192.0.2.1", 1), ("::1", 2, 0, 0)), AddressError),
        (lambda: encode_v1(("192.0.2.1", 65536), ("192.0.2.2", 2)), PortOutOfRangeError),
        (lambda: encode_v1(("example.com", 1), ("192.0.2.2", 2)), AddressError),
        (lambda: encode_v1(None, None), AddressError),  # type: ignore[arg-type]
        (lambda: encode_v2(("192.0.2.1", 1), None), AddressError),
        (lambda: encode_v2("/" + "x" * 108, "/y"), AddressError),
        (lambda: encode_v2(None, None, command="HEALTH"), ConfigurationError),
        (lambda: encode_v2(None, None, protocol=socket.SOCK_RAW), ConfigurationError),
        (lambda: encode_v2(None, None, tlvs=[(256, b"")]), ConfigurationError),
        (lambda: encode_v2(None, None, tlvs=[(0xE0, bytes(0x10000))]), ConfigurationError),
    ],
    ids=[
        "v1-mixed-families",
        "v1-port",
        "v1-hostname",
        "v1-unspec",
        "v2-mixed-families",
        "v2-unix-path-too-long",
        "v2-command",
        "v2-protocol",
        "v2-tlv-type",
        "v2-tlv-length",
    ],
)
def test_the_encoder_refuses_what_the_parser_would(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()
