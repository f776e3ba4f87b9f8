"""The servers of the ``sendfile`` workload: each sends one file to every client, then closes.

Every peer reads the client's request (up to 64 bytes; its content does not matter),
sends ``download_file()`` (64 MiB) with its library's way of handing a file to the
kernel, and closes the connection; the load generator's ``download`` mode counts the
bytes and reconnects. ``spec.target`` says which:

* ``sockserve``: an ``AsyncTCPServer`` handler calling ``writer.sendfile(file)``
  (``options["kwargs"]`` gives its ``event_loop``);
* ``asyncio``: an asyncio ``Protocol`` calling ``loop.sendfile`` on the standard loop;
* ``uvloop``: a uvloop ``Protocol`` calling ``os.sendfile`` on its transport's socket
  itself (uvloop has no ``loop.sendfile``), waiting on a duplicate descriptor when the
  socket is full;
* ``socketserver``: the standard library's ``ThreadingTCPServer`` with
  ``socket.sendfile``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

from .servers import ServerSpec, download_file

REQUEST_BYTES = 64


def announce(address: Any) -> None:
    print(f"READY {address[0]} {address[1]}", flush=True)


def launch_download(spec: ServerSpec, host: str) -> None:
    path = download_file()
    if spec.target == "sockserve":
        _serve_sockserve(spec, host, path)
    elif spec.target == "socketserver":
        _serve_stdlib(host, path)
    else:
        _serve_protocol(spec.target, host, path)


def _serve_sockserve(spec: ServerSpec, host: str, path: str) -> None:
    from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer

    class Download(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.read(REQUEST_BYTES)
            with open(path, "rb") as file:
                try:
                    await self.writer.sendfile(file)
                except ConnectionError:
                    pass  # the load generator hangs up when a run ends

    server = AsyncTCPServer((host, 0), Download, **spec.options.get("kwargs", {}))
    announce(server.server_address)
    server.serve_forever()


def _serve_stdlib(host: str, path: str) -> None:
    import socketserver

    class Download(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(REQUEST_BYTES)
            with open(path, "rb") as file:
                try:
                    self.request.sendfile(file)
                except ConnectionError:
                    pass

    server = socketserver.ThreadingTCPServer((host, 0), Download)
    announce(server.server_address)
    server.serve_forever()


def _serve_protocol(loop_name: str, host: str, path: str) -> None:
    class Download(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.started = False

        def data_received(self, data: bytes) -> None:
            if not self.started:
                self.started = True
                sender = _send_with_loop if loop_name == "asyncio" else _send_with_os
                asyncio.get_running_loop().create_task(sender(self.transport, path))

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Download, host, 0)
        announce(server.sockets[0].getsockname())
        await server.serve_forever()

    loop_factory = asyncio.new_event_loop
    if loop_name == "uvloop":
        loop_factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


async def _send_with_loop(transport: Any, path: str) -> None:
    with open(path, "rb") as file:
        try:
            await asyncio.get_running_loop().sendfile(transport, file)
        except ConnectionError:
            pass
    transport.close()


async def _send_with_os(transport: Any, path: str) -> None:
    """What a uvloop user writes by hand: os.sendfile, and add_writer on a dup when full."""
    loop = asyncio.get_running_loop()
    out_fd = transport.get_extra_info("socket").fileno()
    watched = os.dup(out_fd)  # the loop refuses a writer on the transport's own descriptor
    try:
        with open(path, "rb") as file:
            in_fd, offset, size = file.fileno(), 0, os.fstat(file.fileno()).st_size
            while offset < size:
                try:
                    offset += os.sendfile(out_fd, in_fd, offset, size - offset)
                except BlockingIOError:
                    writable = loop.create_future()
                    loop.add_writer(watched, lambda w=writable: w.done() or w.set_result(None))
                    try:
                        await writable
                    finally:
                        loop.remove_writer(watched)
    except ConnectionError:
        pass
    finally:
        os.close(watched)
        transport.close()
