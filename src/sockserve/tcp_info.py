"""Bytes a TCP connection carried, from the kernel: ``TCP_INFO`` read once at close.

Why the kernel and not a counting wrapper around the socket: the handler writes through
``makefile``, ``sendall``, an ``SSLSocket`` or an asyncio transport, and wrapping each
costs Python calls per read and write, on every connection, for a number the kernel
keeps anyway. One ``getsockopt`` at close costs about a microsecond.

What the numbers are (``struct tcp_info`` in ``linux/tcp.h``, the RFC 4898 names):

- ``tcpi_bytes_received`` (Linux 4.1+, tcpEStatsAppHCThruOctetsReceived): payload bytes
  received, whether or not the handler read them;
- ``tcpi_bytes_acked`` (Linux 4.2+, tcpEStatsAppHCThruOctetsAcked): payload bytes the
  client acknowledged. A reply still unacknowledged when the server closes is not in it
  (on loopback the ACK is back before the handler returns; across a WAN the last window
  may be missing). TLS counts wire bytes: records, handshake and all.

A FIN takes one sequence number, and the kernel counts it in both fields (measured:
a 60-byte request followed by the client's FIN reads 61). ``tcpi_state`` says whether
one went each way, and it is taken off, so the numbers are payload only.

Anything but a TCP socket on Linux (a Unix socket, a datagram, another OS, a kernel too
old for the fields) gives ``None``: unknown, logged as ``-``.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

#: Offsets in ``struct tcp_info``: 8 one-byte fields, 21 ``__u32`` (84 bytes), then
#: ``tcpi_pacing_rate`` and ``tcpi_max_pacing_rate`` (``__u64``) end at 120.
BYTES_ACKED_OFFSET = 120
BYTES_RECEIVED_OFFSET = 128
#: The prefix of the struct we ask for: up to the end of ``tcpi_bytes_received``.
TCP_INFO_PREFIX_BYTES = 136

_TWO_COUNTERS = struct.Struct("=QQ")  # bytes_acked, bytes_received: native, packed

# TCP states (``include/net/tcp_states.h``) by what the FIN exchange has done.
_ESTABLISHED, _FIN_WAIT2, _TIME_WAIT, _CLOSE_WAIT, _LAST_ACK, _CLOSING = 1, 5, 6, 8, 9, 11
#: The peer's FIN has arrived: one sequence number of "bytes received" is the FIN.
_PEER_FIN_RECEIVED = frozenset({_TIME_WAIT, _CLOSE_WAIT, _LAST_ACK, _CLOSING})
#: Our FIN has been acknowledged: one of "bytes acked" is the FIN.
_OUR_FIN_ACKED = frozenset({_FIN_WAIT2, _TIME_WAIT})
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None

#: ``(bytes_in, bytes_out)`` when unknown.
UNKNOWN: tuple[None, None] = (None, None)


def read_traffic(sock: Any) -> tuple[int | None, int | None]:
    """``(bytes received, bytes acknowledged by the peer)`` of a TCP socket, or ``UNKNOWN``.

    Never raises for a socket that is closed, not TCP, or on a platform without
    ``TCP_INFO``: an access log line is no reason to fail a connection.
    """
    if _TCP_INFO is None:
        return UNKNOWN
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, TCP_INFO_PREFIX_BYTES)
    except (OSError, AttributeError, TypeError, ValueError):
        return UNKNOWN  # closed, a Unix socket (EOPNOTSUPP), or not a socket at all
    if len(info) < TCP_INFO_PREFIX_BYTES:
        return UNKNOWN  # a kernel older than 4.2: the fields are not there
    acked, received = _TWO_COUNTERS.unpack_from(info, BYTES_ACKED_OFFSET)
    state = info[0]
    if state != _ESTABLISHED:
        if received and state in _PEER_FIN_RECEIVED:
            received -= 1
        if acked and state in _OUR_FIN_ACKED:
            acked -= 1
    return received, acked
