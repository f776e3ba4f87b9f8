"""What reading a PROXY header costs per connection, in process. Prints; asserts nothing.

The header prelude (``admission/proxy_header.py``) runs once per connection: a peek, a
receive of exactly the header, a parse. Here it runs on one end of a socketpair while
the other end writes the header and one application byte, so the figure includes the
two system calls but no network and no scheduler::

    PYTHONPATH=src python3 bench/proxy_prelude.py [--number 20000] [--repeat 5]

Each row: the parse alone (``parse_proxy_header`` on bytes), then the whole prelude per
connection with the cost of the write and the read of the application byte (measured
alone, the "baseline" row) taken out. Best of ``--repeat`` timeit runs, divided by
``--number``.
"""

from __future__ import annotations

import argparse
import socket
import timeit
from collections.abc import Callable

from sockserve.admission import PreludeDone, ProxyHeaderPrelude
from sockserve.proxy_protocol import (
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_UNIQUE_ID,
    V2_DEFAULT_MAX_BYTES,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

IPV4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
CASES = {
    "v1 TCP4": encode_v1(*IPV4),
    "v2 IPv4": encode_v2(*IPV4),
    "v2 IPv4 + authority, unique ID, CRC32c": encode_v2(
        *IPV4,
        tlvs=[(PP2_TYPE_AUTHORITY, b"api.example.com"), (PP2_TYPE_UNIQUE_ID, bytes(36))],
        with_crc32c=True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    def best_us(statement: Callable[[], object]) -> float:
        runs = timeit.repeat(statement, number=args.number, repeat=args.repeat)
        return min(runs) / args.number * 1e6

    prelude = ProxyHeaderPrelude("any", timeout=5.0, max_v2_bytes=V2_DEFAULT_MAX_BYTES)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)

        def baseline() -> None:
            theirs.send(b"x")
            ours.recv(1)

        base = best_us(baseline)
        print(f"{'baseline: write 1 byte, read it':<42} {'':>10}  {base:7.2f} µs")
        for name, header in CASES.items():
            sent = header + b"x"

            def one_connection(sent: bytes = sent) -> None:
                theirs.send(sent)
                done = prelude.start(ours, "peer").advance()
                assert isinstance(done, PreludeDone)
                ours.recv(1)

            one_connection()
            parse = best_us(lambda header=header: parse_proxy_header(header))
            whole = best_us(one_connection) - base
            print(
                f"{name:<42} {len(header):4d} bytes  {parse:7.2f} µs parse, "
                f"{whole:7.2f} µs prelude per connection"
            )


if __name__ == "__main__":
    main()
