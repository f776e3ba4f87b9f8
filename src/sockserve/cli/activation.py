"""From ``--bind`` values to what each server opens: an address, or a socket inherited.

``fd://N`` is one descriptor this process was given. ``systemd`` is socket activation
(``sockserve.systemd.inherited_sockets``): systemd binds what the ``.socket`` unit names
and starts the service with them as descriptors 3, 4, …; ``--bind systemd`` serves every
one of them, one server each, and ``--bind systemd:NAME`` only those whose
``FileDescriptorName=`` is NAME (repeat it for several). Why one server per socket
rather than a choice: a unit that lists two ``ListenStream=`` lines means both, and
serving a socket it passed is the only way a client on it is ever answered.

Errors are refusals to start, with one line: ``LISTEN_*`` meant for another process
(``SocketActivationError``), ``--bind systemd`` with nothing passed, a NAME nothing is
called, a socket that is not bound or is a connection (``Accept=yes``). Inherited sockets
no bind asked for are closed, with a warning naming them: holding them would leave
their clients waiting on a socket nobody serves.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from ..systemd import InheritedSocket, inherited_sockets
from .binds import Bind, BindSyntaxError, check_inherited, inherited_socket

log = logging.getLogger("sockserve.cli")

Opening = tuple[Bind, socket.socket | None]


def expand(binds: Sequence[Bind]) -> list[Opening]:
    """One ``(bind, inherited socket or None)`` per server to open, in ``binds`` order.

    On an error no socket stays open that this call took over.
    """
    activated = _activated(binds)
    openings: list[Opening] = []
    claimed: set[int] = set()
    try:
        for bind in binds:
            if bind.transport == "fd":
                openings.append((bind, inherited_socket(bind.address)))
            elif bind.transport == "systemd":
                for inherited in _matching(bind, activated):
                    if inherited.fd not in claimed:
                        claimed.add(inherited.fd)
                        openings.append((bind, inherited.socket))
            else:
                openings.append((bind, None))
    except BaseException:
        for _, sock in openings:
            if sock is not None:
                sock.close()
        for inherited in activated:
            if inherited.fd not in claimed:
                inherited.socket.close()
        raise
    for inherited in activated:
        if inherited.fd not in claimed:
            log.warning(
                "closing inherited socket %r (descriptor %d, %s): no --bind systemd:%s",
                inherited.name,
                inherited.fd,
                _describe(inherited.socket),
                inherited.name,
            )
            inherited.socket.close()
    return openings


def _activated(binds: Sequence[Bind]) -> list[InheritedSocket]:
    if not any(bind.transport == "systemd" for bind in binds):
        return []  # LISTEN_* are left alone unless a bind asks for them
    found = inherited_sockets()  # raises SocketActivationError for another pid's
    if not found:
        raise BindSyntaxError(
            "--bind systemd: no socket was passed (LISTEN_FDS is unset): start the "
            "service from a .socket unit, or bind an address instead"
        )
    try:
        for inherited in found:
            check_inherited(inherited.socket, f"--bind systemd: {_shown(inherited)}")
    except BindSyntaxError:
        for inherited in found:
            inherited.socket.close()
        raise
    return found


def _matching(bind: Bind, activated: list[InheritedSocket]) -> list[InheritedSocket]:
    if bind.address is None:
        return activated
    matching = [inherited for inherited in activated if inherited.name == bind.address]
    if not matching:
        names = ", ".join(sorted({repr(i.name) for i in activated}))
        raise BindSyntaxError(
            f"--bind {bind.text}: no inherited socket is named {bind.address!r} "
            f"(FileDescriptorName=); systemd passed {names}"
        )
    return matching


def _shown(inherited: InheritedSocket) -> str:
    return f"descriptor {inherited.fd} ({inherited.name!r})"


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError as exc:
        return os.strerror(exc.errno or 0)
    return repr(name)
