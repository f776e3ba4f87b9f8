"""Serving from forked children in a test process: their copies of clients, their logs.

A forking server's child (``ForkingMixIn``), a pre-fork worker, or a replacement worker
forked while a test's clients are open would hold copies of those client sockets: a
client's ``close()`` then sends no FIN (and an abort no RST) until every copy is gone,
and children holding each other's clients wait for each other forever (a slow-client
limit would then be what ends them, which is not what a test of it wants to see). A
real client is another process, so inside ``clients_of(server)`` each forked child
points its copies of sockets connected to ``server`` at /dev/null at once.

How: a hook run in every forked child (``os.register_at_fork``, registered once at
import) walks ``/proc/self/fd`` and compares each socket's peer with the addresses
registered. ``server_log(path)`` sends the ``sockserve`` loggers to a file, which forked
children inherit: what a forked child or worker logged can be read there (one line per
record). Shared by the fault battery (``tests/reliability``) and the slow-client tests.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Server addresses whose clients live in this process.
_CLIENT_TARGETS: set[Any] = set()
#: The thread serving each of them (thread id -> address), where ``clients_of`` was
#: entered before serving began: a child forked by that thread serves that address.
_SERVING_THREADS: dict[int, Any] = {}


def _let_go_of_test_clients() -> None:
    if not _CLIENT_TARGETS:
        return
    own = _SERVING_THREADS.get(threading.get_ident())  # the forking thread's server
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd != null and _is_held_for_others(fd, own):
                # dup2, not close: the number stays taken, so a client object's eventual
                # close() in this child cannot hit a descriptor opened since.
                os.dup2(null, fd)
    finally:
        os.close(null)


def _is_held_for_others(fd: int, own: Any) -> bool:
    """A socket this child has no business holding: a client of a registered server
    (connected to one, or still connecting), or another server's connection.

    A client socket forked while its ``connect()`` was under way (another thread's) has
    no peer yet in the child; left there, its copy kept the connection open after the
    client closed, and the server's handler waited until a limit cut it. Likewise a
    connection another server in this process had accepted: its server's close sent no
    RST while the copy lived (a non-reading client then saw the end seconds late). Both
    measured with every mode's clients running at once. A stream socket with no peer
    whose local address is a server's is left alone unless ``own`` says which server
    this child serves: it may be this child's own connection, already reset by its
    client, which the handler must still see.
    """
    try:
        probe = socket.socket(fileno=fd)
    except OSError:
        return False  # not a socket
    try:
        if probe.type != socket.SOCK_STREAM:
            return False
        try:
            if probe.getpeername() in _CLIENT_TARGETS:
                return True
        except OSError:
            pass  # no peer (yet, or any more)
        try:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            local = probe.getsockname()
        except OSError:
            return False
        if listening:
            return False
        if local not in _CLIENT_TARGETS:  # a client still connecting (or not ours at all)
            try:
                probe.getpeername()
            except OSError:
                return True
            return False
        return own is not None and local != own  # another server's connection
    finally:
        probe.detach()


os.register_at_fork(after_in_child=_let_go_of_test_clients)


@contextmanager
def clients_of(server: Any) -> Iterator[Any]:
    """While inside, children forked from this process drop their copies of clients
    connected to ``server``. Entered before ``server`` starts serving, its children also
    drop their copies of the connections of the other servers registered (several
    servers serving in one process)."""
    address = server.server_address
    serve_forever = server.serve_forever

    def serve_and_say_who(*args: Any, **kwargs: Any) -> Any:
        _SERVING_THREADS[threading.get_ident()] = address
        try:
            return serve_forever(*args, **kwargs)
        finally:
            _SERVING_THREADS.pop(threading.get_ident(), None)

    server.serve_forever = serve_and_say_who
    _CLIENT_TARGETS.add(address)
    try:
        yield server
    finally:
        _CLIENT_TARGETS.discard(address)
        vars(server).pop("serve_forever", None)


class AppendHandler(logging.Handler):
    """A log handler that writes each record with one ``os.write`` to an ``O_APPEND``
    descriptor: records of processes sharing the file never interleave, and no buffer
    lock is involved. (A ``FileHandler``'s buffered stream has a lock of its own that
    ``logging`` does not reset at fork: a child forked while another thread was writing a
    record waited for it forever, seen with 14 servers logging in one process.)"""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self._fd, (self.format(record) + "\n").encode(errors="replace"))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


@contextmanager
def server_log(path: Path) -> Iterator[Path]:
    """Everything the ``sockserve`` loggers say at INFO and above goes to ``path``, from
    this process and from the children it forks (they inherit the handler; each record
    is one ``O_APPEND`` write)."""
    logger = logging.getLogger("sockserve")
    handler = AppendHandler(path)
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
