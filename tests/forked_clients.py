"""Serving from forked children in a test process: their copies of clients, their logs.

A forking server's child (``ForkingMixIn``), a pre-fork worker, or a replacement worker
forked while a test's clients are open would hold copies of those client sockets: a
client's ``close()`` then sends no FIN (and an abort no RST) until every copy is gone,
and children holding each other's clients wait for each other forever (a slow-client
limit would then be what ends them, which is not what a test of it wants to see). A
real client is another process, so inside ``clients_of(server)`` each forked child
points its copies of sockets connected to ``server`` at /dev/null at once.

How: an ``os.register_at_fork(after_in_child=...)`` hook, registered once at import,
walks ``/proc/self/fd`` and compares each socket's peer with the addresses registered.
``server_log(path)`` sends the ``sockserve`` loggers to a file, which forked children
inherit: what a forked child or worker logged can be read there (one line per record).
Shared by the fault battery (``tests/reliability``) and the slow-client tests.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Server addresses whose clients live in this process.
_CLIENT_TARGETS: set[Any] = set()


def _let_go_of_test_clients() -> None:
    if not _CLIENT_TARGETS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd == null:
                continue
            try:
                probe = socket.socket(fileno=fd)
            except OSError:
                continue  # not a socket
            try:
                peer = probe.getpeername()
            except OSError:
                peer = None
            finally:
                probe.detach()
            if peer in _CLIENT_TARGETS:
                # dup2, not close: the number stays taken, so a client object's eventual
                # close() in this child cannot hit a descriptor opened since.
                os.dup2(null, fd)
    finally:
        os.close(null)


os.register_at_fork(after_in_child=_let_go_of_test_clients)


@contextmanager
def clients_of(server: Any) -> Iterator[Any]:
    """While inside, children forked from this process drop their copies of clients
    connected to ``server``."""
    address = server.server_address
    _CLIENT_TARGETS.add(address)
    try:
        yield server
    finally:
        _CLIENT_TARGETS.discard(address)


@contextmanager
def server_log(path: Path) -> Iterator[Path]:
    """Everything the ``sockserve`` loggers say at INFO and above goes to ``path``, from
    this process and from the children it forks (they inherit the handler; each record
    is one ``O_APPEND`` write)."""
    logger = logging.getLogger("sockserve")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
