"""The servers under test as they run in their own process: ``python -m bench.peers NAME HOST``.

Every echo peer does the same work so that only the server differs: read up to 64 KiB,
write it all back, until the client hangs up; TCP_NODELAY on every connection (asyncio
and uvloop set it themselves, the others here), because a ping-pong client otherwise
meets Nagle's algorithm and the figures measure the kernel's 40 ms delayed ACK instead.
Listening backlogs stay at each library's default: that is what its users get.

This module imports only what its one server needs, so the stdlib peers never load
sockserve, and the sockserve HTTP peer can put sockserve in place of ``socketserver``
before ``http.server`` is imported.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from .servers import SERVERS_BY_NAME, ServerSpec, find_sockserve_class

READ_BYTES = 65536
HTTP_BODY = b"Hello, world\n"


def announce(address: Any) -> None:
    """Print the ready line the harness waits for."""
    print(f"READY {address[0]} {address[1]}", flush=True)


def make_sync_echo(base: type) -> type:
    """An echo handler on ``base`` (stdlib's or sockserve's ``BaseRequestHandler``)."""

    class EchoHandler(base):  # type: ignore[misc]
        def handle(self) -> None:
            sock = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            recv, send = sock.recv, sock.sendall
            try:
                while data := recv(READ_BYTES):
                    send(data)
            except ConnectionError:
                pass  # the load generator hangs up mid-exchange when a run ends

    return EchoHandler


def serve_socketserver_class(server_class: Any, handler: type, host: str, **kwargs: Any) -> None:
    server = server_class((host, 0), handler, **kwargs)
    announce(server.server_address)
    server.serve_forever()


def launch_stdlib(spec: ServerSpec, host: str) -> None:
    import socketserver

    handler = make_sync_echo(socketserver.BaseRequestHandler)
    serve_socketserver_class(getattr(socketserver, spec.target), handler, host)


def launch_sockserve(spec: ServerSpec, host: str) -> None:
    if spec.options.get("src"):
        sys.path.insert(0, spec.options["src"])  # a "(before)" mode: another checkout's
    if spec.options.get("pure_python"):
        # Read when sockserve.aio.fastpath is first imported, which is below.
        os.environ["SOCKSERVE_PURE_PYTHON"] = "1"
    server_class = find_sockserve_class(spec.target)
    if spec.options.get("handler") == "async":
        from sockserve.aio import fastpath

        if spec.options.get("pure_python") and fastpath.ACTIVE:
            raise RuntimeError("the compiled fast path was installed before it was switched off")
        handler = make_async_echo()
    else:
        import sockserve

        handler = make_sync_echo(sockserve.BaseRequestHandler)
    serve_socketserver_class(server_class, handler, host, **spec.options.get("kwargs", {}))


def make_async_echo() -> type:
    from sockserve.aio import AsyncStreamRequestHandler

    class AsyncEchoHandler(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            reader, writer = self.reader, self.writer
            try:
                while data := await reader.read(READ_BYTES):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass

    return AsyncEchoHandler


def launch_serve_forever_threads(spec: ServerSpec, host: str) -> None:
    """The recipe: one plain TCPServer, several threads all calling serve_forever()."""
    import socketserver

    server = socketserver.TCPServer((host, 0), make_sync_echo(socketserver.BaseRequestHandler))
    for _ in range(spec.options["threads"] - 1):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    announce(server.server_address)
    server.serve_forever()  # the main thread is the last of them


def launch_asyncio(spec: ServerSpec, host: str) -> None:
    """asyncio's streams or a bare Protocol, on asyncio's own loop or uvloop's."""
    import asyncio  # here, not at the top: the other peers should not pay for it in RSS

    async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(READ_BYTES):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    class EchoProtocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def serve() -> None:
        server: asyncio.Server
        if spec.launcher == "asyncio_streams":
            server = await asyncio.start_server(echo_stream, host, 0)
        else:
            server = await asyncio.get_running_loop().create_server(EchoProtocol, host, 0)
        announce(server.sockets[0].getsockname())
        await server.serve_forever()

    loop_factory = asyncio.new_event_loop
    if spec.target == "uvloop":
        loop_factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


def launch_gevent(spec: ServerSpec, host: str) -> None:
    from gevent.server import StreamServer

    def echo(sock: Any, _address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := sock.recv(READ_BYTES):
                sock.sendall(data)
        except ConnectionError:
            pass

    server = StreamServer((host, 0), echo)
    server.start()
    announce(server.address)
    server.serve_forever()


def launch_http(spec: ServerSpec, host: str) -> None:
    """http.server's ThreadingHTTPServer, on the stdlib or with sockserve as socketserver."""
    if "http.server" in sys.modules:
        raise RuntimeError("http.server was imported before socketserver could be chosen")
    if spec.target == "sockserve":
        import sockserve

        sys.modules["socketserver"] = sockserve  # the drop-in promise, tested literally
    import http.server

    chosen = getattr(http.server, "socketserver")  # noqa: B009  (not a public attribute)
    if spec.target == "sockserve" and chosen.__name__ != "sockserve":
        raise RuntimeError("http.server did not pick up sockserve as socketserver")

    class HelloHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(HTTP_BODY)))
            self.end_headers()
            self.wfile.write(HTTP_BODY)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one stderr line per request would measure the terminal

    if "nodelay" in spec.options:
        # Only when asked: each socketserver's own default is what is being compared.
        HelloHandler.disable_nagle_algorithm = spec.options["nodelay"]
    serve_socketserver_class(http.server.ThreadingHTTPServer, HelloHandler, host)


def launch_download(spec: ServerSpec, host: str) -> None:
    from .sendfile_peers import launch_download as launch

    launch(spec, host)


LAUNCHERS: dict[str, Callable[[ServerSpec, str], None]] = {
    "socketserver": launch_stdlib,
    "sockserve": launch_sockserve,
    "serve_forever_threads": launch_serve_forever_threads,
    "asyncio_streams": launch_asyncio,
    "asyncio_protocol": launch_asyncio,
    "gevent_stream": launch_gevent,
    "http": launch_http,
    "download": launch_download,
}


def main(argv: list[str]) -> None:
    name, host = argv
    spec = SERVERS_BY_NAME[name]
    # The harness stops servers with SIGTERM; make sure no library turned it into a no-op.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    LAUNCHERS[spec.launcher](spec, host)


if __name__ == "__main__":
    main(sys.argv[1:])
