"""How long one PROXY header parse takes, in µs, for fixed headers. Prints; asserts nothing.

Parsing runs once per connection, so these figures are per connection, next to an
accept() and a handler call. The TLV case shows where the time goes when HAProxy sends
everything (ALPN, authority, unique ID, SSL with sub-TLVs, CRC32c); the same header
without the CRC shows what the pure-Python checksum costs::

    PYTHONPATH=src python3 bench/proxy_parse.py [--number 20000] [--repeat 5]

Each figure is the best of ``--repeat`` timeit runs (the least disturbed by other work
on the machine), divided by ``--number``.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from sockserve.errors import ProxyHeaderError
from sockserve.proxy_protocol import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_UNIQUE_ID,
    crc32c,
    encode_ssl_tlv,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

IPV4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
IPV6 = (("2001:db8::1", 56324, 0, 0), ("2001:db8:85a3::8a2e:370:7334", 443, 0, 0))
TLVS = [
    (PP2_TYPE_ALPN, b"h2"),
    (PP2_TYPE_AUTHORITY, b"api.example.com"),
    (PP2_TYPE_UNIQUE_ID, b"0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
    encode_ssl_tlv(
        client_flags=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        version="TLSv1.3",
        cn="client.example.com",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="RSA-SHA256",
        key_alg="RSA2048",
    ),
]
#: What a TLS client sends first: the parser's refusal path, exception included.
CLIENT_HELLO = bytes.fromhex("16030102000100") + bytes(64)

CASES = {
    "v1 TCP4": encode_v1(*IPV4),
    "v1 TCP6": encode_v1(*IPV6),
    "v2 IPv4": encode_v2(*IPV4),
    "v2 IPv6": encode_v2(*IPV6),
    "v2 IPv4 + 4 TLVs (SSL with 5 sub-TLVs)": encode_v2(*IPV4, tlvs=TLVS),
    "v2 IPv4 + 4 TLVs + CRC32c": encode_v2(*IPV4, tlvs=TLVS, with_crc32c=True),
}


def refuse_client_hello() -> None:
    try:
        parse_proxy_header(CLIENT_HELLO)
    except ProxyHeaderError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    def best_us(statement: Callable[[], object], number: int) -> float:
        runs = timeit.repeat(statement, number=number, repeat=args.repeat)
        return min(runs) / number * 1e6

    for name, header in CASES.items():
        payload = header + b"GET / HTTP/1.1\r\n\r\n"
        result = parse_proxy_header(payload)
        if result is None or result.consumed != len(header):
            raise SystemExit(f"{name}: the fixed input no longer parses: {result}")
        figure = best_us(lambda payload=payload: parse_proxy_header(payload), args.number)
        print(f"{name:<42} {len(header):4d} bytes  {figure:7.2f} µs/parse")
    figure = best_us(refuse_client_hello, args.number)
    print(f"{'refuse a TLS ClientHello':<42} {len(CLIENT_HELLO):4d} bytes  {figure:7.2f} µs/parse")
    block = bytes(256)
    figure = best_us(lambda: crc32c(block), max(args.number // 10, 1))
    print(f"{'crc32c alone':<42} {len(block):4d} bytes  {figure:7.2f} µs/call")


if __name__ == "__main__":
    main()
