"""A server behind a load balancer that speaks the PROXY protocol (HAProxy, nginx, AWS NLB).

Shows: ``proxy_protocol`` and ``trusted_proxies`` on a server; the handler sees the
client the proxy reports in ``self.client_address``, and the header itself in
``self.proxy`` (version, command, TLVs such as a unique ID). A peer outside
``trusted_proxies``, or a connection that does not start with a header, is refused and
counted in ``server.stats().rejected``; the handler never sees it.

    python3 examples/behind_proxy.py              # play the proxy: send headers, print replies
    python3 examples/behind_proxy.py --serve      # serve until Ctrl-C; put HAProxy in front:
        # backend app
        #     server app1 127.0.0.1:PORT send-proxy-v2

See docs/behind-a-proxy.md for HAProxy and nginx configurations.
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import sockserve
from sockserve.proxy_protocol import PP2_TYPE_UNIQUE_ID, encode_v1, encode_v2
from sockserve.testing import serve_in_thread

#: The client a proxy would report: a documentation address (RFC 5737).
CLIENT = ("203.0.113.7", 51000)
SERVICE = ("198.51.100.10", 443)


class GreetTheRealClient(sockserve.StreamRequestHandler):
    """Answer each line with who sent it, as the proxy told us."""

    def handle(self) -> None:
        host, port = self.client_address[:2]
        proxy = self.proxy  # a ProxyHeader; LOCAL for a proxy's health check
        if proxy.is_local:
            return  # a health check: the connection itself is the answer
        request_id = proxy.unique_id.decode() if proxy.unique_id else "-"
        for line in self.rfile:
            text = line.decode("utf-8", "replace").strip()
            reply = f"hello {host}:{port} (PROXY v{proxy.version}, id {request_id}): {text}\n"
            self.wfile.write(reply.encode())


def make_server(host: str, port: int, trusted: Sequence[str]) -> sockserve.ThreadingTCPServer:
    return sockserve.ThreadingTCPServer(
        (host, port),
        GreetTheRealClient,
        proxy_protocol="any",  # v1 or v2; pick one when you know what the proxy sends
        trusted_proxies=list(trusted),  # who may send a header: the proxies, nobody else
    )


def through_the_proxy(address: tuple[str, int], header: bytes, line: str) -> str:
    """Play the proxy: connect, send ``header`` then the client's ``line``, read the reply."""
    with socket.create_connection(address, timeout=5.0) as sock:
        sock.sendall(header + line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as replies:
            return replies.readline().decode().rstrip("\n")


def serve_until_signalled(server: sockserve.BaseServer) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--serve", action="store_true", help="serve until SIGINT/SIGTERM")
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="CIDR",
        help="a network the proxies connect from; repeat (default: 127.0.0.0/8)",
    )
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.trusted_proxy or ["127.0.0.0/8"])
    if args.serve:
        with server:
            serve_until_signalled(server)
        return 0
    with serve_in_thread(server):
        address = server.server_address
        v2 = encode_v2(CLIENT, SERVICE, tlvs=[(PP2_TYPE_UNIQUE_ID, b"req-42")])
        print(through_the_proxy(address, encode_v1(CLIENT, SERVICE), "over v1"))
        print(through_the_proxy(address, v2, "over v2"))
        print(repr(through_the_proxy(address, b"", "no header at all")))
    print(f"refused: {server.stats().rejected}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
