"""Watch the hooks: an echo server and handler that log every method the framework calls.

Shows the order in which a server and its handler are driven. Construction calls
``server_bind()`` and ``server_activate()``. Each request then goes ``get_request`` →
``verify_request`` → ``process_request`` → ``finish_request`` (which builds the handler:
``__init__`` → ``setup`` → ``handle`` → ``finish``) → ``shutdown_request`` →
``close_request``. The demo serves one message with each entry point:

1. ``handle_request()`` on this thread: the client connects and sends first (the kernel
   queues the connection), then one call serves it.
2. ``serve_forever()`` on a thread, stopped by ``shutdown()``; then ``server_close()``.

    python3 examples/echo_lifecycle.py
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

import sockserve as socketserver

server_log = logging.getLogger("server")
handler_log = logging.getLogger("handler")
client_log = logging.getLogger("client")

#: Bytes asked of each recv(); the echo has no framing.
CHUNK_BYTES = 4096


class LoggingEchoHandler(socketserver.BaseRequestHandler):
    """Echo until the client closes its side, logging each step of the handler's life."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        handler_log.debug("__init__ for %s", client_address)
        super().__init__(request, client_address, server)  # runs setup, handle, finish

    def setup(self) -> None:
        handler_log.debug("setup")
        super().setup()

    def handle(self) -> None:
        handler_log.debug("handle")
        while data := self.request.recv(CHUNK_BYTES):
            handler_log.debug("handle: echoing %d bytes", len(data))
            self.request.sendall(data)

    def finish(self) -> None:
        handler_log.debug("finish")
        super().finish()


class LoggingEchoServer(socketserver.TCPServer):
    """A TCPServer that logs each hook, then does what TCPServer does."""

    def __init__(self, server_address: Any, handler_class: Any = LoggingEchoHandler) -> None:
        server_log.debug("__init__ for %s", server_address)
        super().__init__(server_address, handler_class)

    def server_bind(self) -> None:
        server_log.debug("server_bind")
        super().server_bind()

    def server_activate(self) -> None:
        server_log.debug("server_activate: listening on %s:%s", *self.server_address[:2])
        super().server_activate()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        server_log.debug("serve_forever")
        super().serve_forever(poll_interval)
        server_log.debug("serve_forever returned")

    def handle_request(self) -> Any:
        server_log.debug("handle_request")
        return super().handle_request()

    def get_request(self) -> tuple[Any, Any]:
        request, client_address = super().get_request()
        server_log.debug("get_request -> %s", client_address)
        return request, client_address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        server_log.debug("verify_request")
        return super().verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        server_log.debug("process_request")
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        server_log.debug("finish_request")
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        server_log.debug("shutdown_request")
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        server_log.debug("close_request")
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        server_log.debug("handle_error")
        super().handle_error(request, client_address)

    def service_actions(self) -> None:
        server_log.debug("service_actions")
        super().service_actions()

    def shutdown(self) -> None:
        server_log.debug("shutdown")
        super().shutdown()

    def server_close(self) -> None:
        server_log.debug("server_close")
        super().server_close()


def send_message(address: tuple[str, int], message: bytes) -> socket.socket:
    """Client, first half: connect, send the whole message, and close our sending side."""
    sock = socket.create_connection(address, timeout=5.0)
    sock.sendall(message)
    sock.shutdown(socket.SHUT_WR)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Client, second half: read until the server closes the connection."""
    with sock:
        chunks = []
        while chunk := sock.recv(CHUNK_BYTES):
            chunks.append(chunk)
    return b"".join(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--message", default="Hello, sockserve", help="what the client sends")
    args = parser.parse_args(argv)
    # Logs go to stdout too, so the output reads in the order things happened. The client
    # reports through logging as well: its lock keeps a line whole when two threads write
    # at once, and print() writes the text and the newline separately.
    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s", stream=sys.stdout)
    message = args.message.encode()

    with LoggingEchoServer((args.host, args.port)) as server:  # server_close() at the end
        print("-- 1. handle_request() serves one request on this thread")
        client = send_message(server.server_address, message)
        server.handle_request()
        client_log.info("sent %r, received %r", message, read_reply(client))

        print("-- 2. serve_forever() on a thread until shutdown()")  # before the thread starts
        loop = threading.Thread(target=server.serve_forever, name="serve_forever")
        loop.start()
        try:
            reply = read_reply(send_message(server.server_address, message))
            client_log.info("sent %r, received %r", message, reply)
        finally:
            server.shutdown()  # returns once serve_forever() has returned
            loop.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
