"""The stdlib-compatible server classes: the facade over listener, loop and strategy.

Every public name, class attribute and hook of ``socketserver`` is here with the same call
order, so ``import sockserve as socketserver`` is a drop-in replacement: ``base.py``
(``BaseServer``), ``stream.py`` (``TCPServer``, ``UnixStreamServer``), ``datagram.py``
(``UDPServer``, ``UnixDatagramServer``). The work itself is done by composition:
``listeners.py`` binds and classifies accept errors, ``sockets.py`` opens the socket and
reads datagrams, ``serving/`` admits and runs requests, and the mixins in ``mixins.py``
choose a dispatch strategy.

Defaults that differ from the stdlib, each because the stdlib's value hurts real traffic:

* ``request_queue_size`` is ``socket.SOMAXCONN``, not 5: with a backlog of 5 a burst of
  10,000 connects overflowed the queue and clients sat 1-7 s in SYN retries (over 30 s in
  all, measured here); with a large backlog all arrived in about a second.
* ``UDPServer.max_packet_size`` is 65535, not 8192: the largest UDP payload, so nothing a
  client may legally send is cut; a datagram that still does not fit is logged and dropped.
* ``handle_error`` logs to the ``sockserve`` logger with the client address and traceback
  instead of printing to stderr.
"""

import socket

from .base import BaseServer
from .datagram import MAX_TRUNCATED_SKIPS, UDPServer
from .stream import TCPServer

__all__ = ["MAX_TRUNCATED_SKIPS", "BaseServer", "TCPServer", "UDPServer"]

if hasattr(socket, "AF_UNIX"):
    from .datagram import UnixDatagramServer
    from .stream import UnixStreamServer

    __all__ += ["UnixDatagramServer", "UnixStreamServer"]
