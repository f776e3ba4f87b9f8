"""Capture the PROXY headers a real HAProxy sends, for ``test_proxy_protocol``'s fixtures.

Not a test: run it by hand where ``haproxy`` is installed (``apt-get install haproxy``)::

    python3 tests/haproxy_capture.py

It binds a loopback listener (the "server"), writes a throwaway HAProxy config whose
backends send ``send-proxy`` (v1) and ``send-proxy-v2`` with TLV options to it, connects
one client through each frontend, and prints the first bytes each backend connection
carried, in hex. Loopback only. HAProxy's health checks with ``check-send-proxy`` give a
LOCAL header, captured the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

#: Bytes the client sends after connecting: they must follow the header untouched.
PAYLOAD = b"hello through haproxy\n"
TIMEOUT = 10.0


def free_port() -> int:
    # A throwaway script for HAProxy's own config file: the race the tests avoid (bind 0
    # and read the address) cannot be avoided here, because HAProxy binds by itself.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(TIMEOUT)
    backend_port = server.getsockname()[1]
    fronts = {name: free_port() for name in ("v1", "v2", "v2tlv")}
    config = f"""
global
    log stderr format short local0 warning
defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend v1
    bind 127.0.0.1:{fronts["v1"]}
    default_backend v1
frontend v2
    bind 127.0.0.1:{fronts["v2"]}
    default_backend v2
frontend v2tlv
    bind 127.0.0.1:{fronts["v2tlv"]}
    unique-id-format sockserve-%ci-%cp
    default_backend v2tlv
backend v1
    server s 127.0.0.1:{backend_port} send-proxy
backend v2
    server s 127.0.0.1:{backend_port} send-proxy-v2
backend v2tlv
    server s 127.0.0.1:{backend_port} send-proxy-v2 proxy-v2-options crc32c,unique-id
backend health
    server s 127.0.0.1:{backend_port} check send-proxy-v2 check-send-proxy inter 60s
"""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w", encoding="ascii") as file:
            file.write(config)
        proxy = subprocess.Popen(["haproxy", "-db", "-f", path])
        try:
            captured: dict[str, bytes] = {}
            # The health check connects on its own at start-up: the first connection.
            captured["health"] = read_one(server)
            for name, port in fronts.items():
                client = connect_with_retry(port)
                with client:
                    client.sendall(PAYLOAD)
                    captured[name] = read_one(server)
            for name, data in captured.items():
                print(f"{name}: {data.hex()}")
        finally:
            proxy.terminate()
            proxy.wait(TIMEOUT)
    server.close()
    return 0


def connect_with_retry(port: int) -> socket.socket:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # HAProxy is still starting; a manual script may poll


def read_one(server: socket.socket) -> bytes:
    conn, _ = server.accept()
    with conn:
        conn.settimeout(1.0)
        chunks = []
        try:
            while chunk := conn.recv(4096):
                chunks.append(chunk)
                if b"".join(chunks).endswith(PAYLOAD):
                    break
        except (TimeoutError, ConnectionResetError):
            pass  # a health check sends its header then resets: what we have is all
        return b"".join(chunks)


if __name__ == "__main__":
    threading.current_thread().name = "capture"
    sys.exit(main())
