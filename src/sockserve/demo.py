"""Demo services for ``sockserve demo NAME``: small, complete, and safe to expose on loopback."""

from __future__ import annotations

import logging

from .handlers import StreamRequestHandler

log = logging.getLogger("sockserve.demo")

#: Bytes read per ``recv``: a demo echo has no framing, so it echoes what arrives.
ECHO_CHUNK_BYTES = 64 * 1024


class EchoHandler(StreamRequestHandler):
    """Echo every byte back until the client closes its side."""

    def handle(self) -> None:
        log.info("connection from %s", self.client_address)
        while True:
            data = self.request.recv(ECHO_CHUNK_BYTES)
            if not data:
                return
            self.request.sendall(data)


DEMOS = {"echo": EchoHandler}
