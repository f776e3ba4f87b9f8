"""The async mode's TLS data path, on asyncio and on uvloop.

The event loop's TLS transport decrypts into the reader's receive buffer
(``get_buffer``/``buffer_updated``), never into a fresh 256 KiB bytes object per record,
and the reader is the compiled class itself (when built): ``connections._TLSProtocol``.
These check what that must not break: lines and bulk reads bigger than the shared
receive buffer, ``readinto``, the client's end of stream (no "eof_received" warning), and
the per-message path kept.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

import sockserve
from sockserve.aio import StreamReader
from sockserve.aio.fastpath import IMPLEMENTATION
from sockserve.aio.streams import RECEIVE_CHUNK_BYTES
from sockserve.testing import serve_in_thread
from sockserve.tls import server_context

#: Seconds any socket operation may take in a passing test.
TIMEOUT = 10.0
HOSTNAME = "example.test"
LOOPS = ("asyncio", "uvloop")
#: Bigger than the receive buffer the transport decrypts into, many TLS records.
BULK_BYTES = 4 * RECEIVE_CHUNK_BYTES + 123


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    leaf = ca.issue_cert(HOSTNAME)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server_context(cert, key), client


class Probe(sockserve.AsyncStreamRequestHandler):
    """Says how the connection is built, then serves commands: ``lines N`` echoes N
    lines; ``bulk N``: reads N bytes with ``read`` and replies with their digest;
    ``into N``: the same with ``readinto``."""

    max_line_length = 4 * RECEIVE_CHUNK_BYTES

    async def handle(self) -> None:
        protocol = self.writer.transport.get_protocol()
        facts = (
            type(self.reader) is IMPLEMENTATION.reader_class,
            isinstance(protocol, asyncio.BufferedProtocol),
            isinstance(protocol, asyncio.Protocol),
        )
        self.writer.write(" ".join(str(fact) for fact in facts).encode() + b"\n")
        while command := await self.reader.readline():
            verb, count = command.split()
            if verb == b"lines":
                for _ in range(int(count)):
                    self.writer.write(await self.reader.readline())
                    await self.writer.drain()
                continue
            digest, left = hashlib.sha256(), int(count)
            scratch = bytearray(RECEIVE_CHUNK_BYTES)
            while left:
                if verb == b"bulk":
                    chunk = await self.reader.read(left)
                else:
                    size = await self.reader.readinto(memoryview(scratch)[:left])
                    chunk = bytes(scratch[:size])
                assert chunk, "end of stream inside a bulk transfer"
                digest.update(chunk)
                left -= len(chunk)
            self.writer.write(digest.hexdigest().encode() + b"\n")
            await self.writer.drain()


def read_line(conn: ssl.SSLSocket, pending: bytearray) -> bytes:
    while b"\n" not in pending:
        chunk = conn.recv(65536)
        assert chunk, "server closed early"
        pending += chunk
    end = pending.index(b"\n") + 1
    line = bytes(pending[:end])
    del pending[:end]
    return line


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_reads_through_the_receive_buffer(
    loop: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext], caplog: Any
) -> None:
    server_ctx, client_ctx = contexts
    server = sockserve.AsyncTCPServer(
        ("127.0.0.1", 0), Probe, ssl_context=server_ctx, event_loop=loop
    )
    payload = bytes(range(256)) * (BULK_BYTES // 256) + b"z" * (BULK_BYTES % 256)
    long_line = b"y" * (2 * RECEIVE_CHUNK_BYTES) + b"\n"
    with caplog.at_level(logging.WARNING), serve_in_thread(server):
        raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
        with client_ctx.wrap_socket(raw, server_hostname=HOSTNAME) as conn:
            pending = bytearray()
            # Decrypted into the shared buffer: a buffered protocol, not a plain one.
            assert read_line(conn, pending) == b"True True False\n"
            lines = [b"short\n", long_line, b"x" * 63 + b"\n"]
            conn.sendall(b"lines 3\n" + b"".join(lines))
            assert [read_line(conn, pending) for _ in lines] == lines
            expected = hashlib.sha256(payload).hexdigest().encode() + b"\n"
            for verb in (b"bulk", b"into"):
                conn.sendall(verb + b" %d\n" % len(payload) + payload)
                assert read_line(conn, pending) == expected
            conn.unwrap()  # close_notify: the handler reads its end of stream
            assert conn.recv(1) == b""
    assert server.stats().handler_errors == 0
    assert server.stats().rejected == {}
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


def live_readers() -> int:
    """Readers still allocated (the reader has no ``__weakref__`` slot to watch it by)."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, StreamReader))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_closed_tls_connection_is_freed_without_the_garbage_collector(
    loop: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    # uvloop keeps the reader's bound methods after the connection is lost: without
    # the cycle broken, each closed connection waited for the collector.
    server_ctx, client_ctx = contexts
    server = sockserve.AsyncTCPServer(
        ("127.0.0.1", 0), Probe, ssl_context=server_ctx, event_loop=loop
    )
    gc.collect()
    gc.disable()
    try:
        before = live_readers()
        with serve_in_thread(server):
            for _ in range(5):
                raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
                with client_ctx.wrap_socket(raw, server_hostname=HOSTNAME) as conn:
                    pending = bytearray()
                    read_line(conn, pending)  # the facts line
                    conn.sendall(b"lines 1\nping\n")
                    assert read_line(conn, pending) == b"ping\n"
            # A drain lets each request's task close its connection (a stop would cut
            # the last one short instead).
            assert server.drain(TIMEOUT).aborted == 0
            assert server.stats().finished == 5
        assert live_readers() == before
    finally:
        gc.enable()
