"""Slow and greedy clients: the limits, what the kernel says, and the verdict (pure).

The limits (server attributes and constructor keywords, all None by default, as the
stdlib has none; ``sockserve serve`` turns them on, see ``cli/options.py``):

* ``idle_timeout``: seconds a connection may go without a byte from the client and
  without the client acknowledging a byte of ours (HAProxy's ``timeout client``);
* ``connection_deadline``: seconds a connection may live, from when its handler starts;
* ``min_transfer_rate`` over ``min_transfer_window`` seconds: a client that is sending
  while the server waits for it (nothing of ours acknowledged in the window) and sent
  fewer than rate x window bytes in it is a slowloris (Apache ``mod_reqtimeout``'s
  ``MinRate``). A quiet client is not "slow": it is idle, which ``idle_timeout`` judges.
  Nor is an interactive one whose requests the server answers;
* ``write_timeout``: seconds our replies may wait in the send queue with none of them
  acknowledged: a client that does not read (nginx's ``send_timeout``).

How they are measured: not by wrapping ``recv``/``send`` (a cost on every message,
whether or not a client is slow) but by asking the kernel, every sweep, for the
connection's TCP counters (``TCP_INFO``, Linux 4.6+: ``tcpi_bytes_received``,
``tcpi_bytes_acked``, ``tcpi_last_data_recv``, ``tcpi_notsent_bytes``, ``tcpi_unacked``):
one ``getsockopt`` per watched connection per sweep, nothing per message, and the same
numbers for the synchronous and the async modes. ``serving/connection_watch.py`` sweeps
and cuts; this module only reads the counters and judges. Where there are no TCP
counters (Unix sockets, other kernels) only ``connection_deadline`` applies.

Trade-offs: the verdict is as fine as the sweep interval (a quarter of the smallest
limit, between ``MIN_SWEEP_SECONDS`` and ``MAX_SWEEP_SECONDS``); an idle connection is
one where nothing moved either way, so a handler that thinks longer than
``idle_timeout`` without writing loses its (silent, waiting) client: set the limit above
the slowest handler's think time, as with HAProxy's.
"""

from __future__ import annotations

import math
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from .errors import (
    ConfigurationError,
    ConnectionDeadlineError,
    IdleTimeoutError,
    SlowPeerError,
    TransferTooSlowError,
    WriteTimeoutError,
)

#: The window ``min_transfer_rate`` is averaged over, unless set: long enough that a
#: client on a lossy mobile link survives a retransmission back-off (the TCP minimum RTO
#: is 1 s, RFC 6298 section 2.4, doubling per retry), short enough that 500 slowloris
#: connections are cut within seconds.
DEFAULT_MIN_TRANSFER_WINDOW = 10.0

#: Bounds of the sweep interval: a sweep costs one getsockopt per watched connection
#: (about 1 µs each, measured here), so at most 20 a second; and at least one a second
#: so a verdict is never more than a second late.
MIN_SWEEP_SECONDS = 0.05
MAX_SWEEP_SECONDS = 1.0

#: The server attributes, in the order the constructor keywords take them.
LIMIT_NAMES = (
    "idle_timeout",
    "connection_deadline",
    "min_transfer_rate",
    "min_transfer_window",
    "write_timeout",
)

# struct tcp_info (linux/tcp.h): the offsets of the fields read here. The struct only
# grows, and getsockopt returns as much of it as the kernel has.
_TCP_INFO_ASK_BYTES = 232
_UNACKED_AT = 24  # u32: segments sent and not yet acknowledged
_LAST_DATA_RECV_AT = 52  # u32: ms since the last data arrived
_BYTES_ACKED_AT = 120  # u64 (Linux 4.1)
_BYTES_RECEIVED_AT = 128  # u64 (Linux 4.1)
_NOTSENT_BYTES_AT = 144  # u32 (Linux 4.6): queued, not sent yet
_TCP_INFO_NEEDED_BYTES = _NOTSENT_BYTES_AT + 4
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


@dataclass(frozen=True)
class SlowClientLimits:
    """A server's slow-client limits; None turns one off (see the module docstring)."""

    idle_timeout: float | None = None
    connection_deadline: float | None = None
    min_transfer_rate: float | None = None
    min_transfer_window: float = DEFAULT_MIN_TRANSFER_WINDOW
    write_timeout: float | None = None

    @classmethod
    def of(cls, server: Any) -> SlowClientLimits:
        """The limits set on ``server`` (class or instance attributes), checked."""
        values: dict[str, Any] = {name: getattr(server, name, None) for name in LIMIT_NAMES}
        if values["min_transfer_window"] is None:
            values["min_transfer_window"] = DEFAULT_MIN_TRANSFER_WINDOW
        for name, value in values.items():
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                raise ConfigurationError(
                    f"{name} must be a positive number of "
                    f"{'bytes per second' if name == 'min_transfer_rate' else 'seconds'}"
                    f" or None, got {value!r}"
                )
        return cls(**values)

    @property
    def is_on(self) -> bool:
        return any(
            limit is not None
            for limit in (
                self.idle_timeout,
                self.connection_deadline,
                self.min_transfer_rate,
                self.write_timeout,
            )
        )

    @property
    def needs_counters(self) -> bool:
        """Whether any limit on needs the kernel's TCP counters (all but the deadline)."""
        return not (
            self.idle_timeout is None
            and self.min_transfer_rate is None
            and self.write_timeout is None
        )

    @property
    def sweep_seconds(self) -> float:
        """How often to look at the watched connections: a quarter of the finest limit."""
        limits = [
            value
            for value in (
                self.idle_timeout,
                self.connection_deadline,
                self.write_timeout,
                self.min_transfer_window if self.min_transfer_rate is not None else None,
            )
            if value is not None
        ]
        finest = min(limits, default=MAX_SWEEP_SECONDS * 4)
        return min(MAX_SWEEP_SECONDS, max(MIN_SWEEP_SECONDS, finest / 4))


@dataclass(frozen=True)
class TcpCounters:
    """What the kernel says about one TCP connection at one moment."""

    bytes_received: int
    bytes_acked: int
    seconds_since_data: float
    has_unsent: bool  # bytes queued or in flight, waiting for the peer


def read_tcp_counters(sock: Any) -> TcpCounters | None:
    """The connection's TCP counters; None where the kernel keeps none for it."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_ASK_BYTES)
    except (OSError, ValueError):
        return None  # not TCP (a Unix socket), or closed meanwhile
    if len(raw) < _TCP_INFO_NEEDED_BYTES:
        return None  # a kernel older than 4.6
    unacked = struct.unpack_from("=I", raw, _UNACKED_AT)[0]
    last_data_ms = struct.unpack_from("=I", raw, _LAST_DATA_RECV_AT)[0]
    acked, received = struct.unpack_from("=QQ", raw, _BYTES_ACKED_AT)
    notsent = struct.unpack_from("=I", raw, _NOTSENT_BYTES_AT)[0]
    return TcpCounters(received, acked, last_data_ms / 1000.0, bool(unacked or notsent))


class ConnectionVerdict:
    """One connection's history, judged at each sweep: a breach kind, or None.

    ``started`` is when watching began (the monotonic clock); ``judge(now, counters)``
    takes a sweep's reading (None: no counters, so only the deadline applies).
    """

    __slots__ = ("limits", "started", "_samples", "_acked", "_acked_moved", "_waiting_since")

    def __init__(self, limits: SlowClientLimits, started: float) -> None:
        self.limits = limits
        self.started = started
        #: ``(time, bytes_received, bytes_acked)`` per sweep, the window's worth.
        self._samples: deque[tuple[float, int, int]] = deque()
        self._acked = -1
        #: When ``bytes_acked`` last moved, and since when our bytes have been waiting.
        self._acked_moved = started
        self._waiting_since: float | None = None

    def judge(self, now: float, counters: TcpCounters | None) -> SlowPeerError | None:
        limits = self.limits
        age = now - self.started
        if limits.connection_deadline is not None and age >= limits.connection_deadline:
            return ConnectionDeadlineError(
                f"connection open for {age:.1f} s, over connection_deadline "
                f"({limits.connection_deadline} s)"
            )
        if counters is None:
            return None
        if counters.bytes_acked != self._acked:
            if self._acked >= 0:  # (the first reading is where we start from)
                self._acked_moved = now
            self._acked = counters.bytes_acked
        if not counters.has_unsent:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if limits.write_timeout is not None and self._waiting_since is not None:
            stalled = now - max(self._waiting_since, self._acked_moved)
            if stalled >= limits.write_timeout:
                return WriteTimeoutError(
                    f"the client read none of our replies for {stalled:.1f} s "
                    f"(write_timeout {limits.write_timeout} s)"
                )
        if limits.idle_timeout is not None:
            quiet = min(counters.seconds_since_data, now - self._acked_moved, age)
            if quiet >= limits.idle_timeout:
                return IdleTimeoutError(
                    f"nothing received for {quiet:.1f} s (idle_timeout {limits.idle_timeout} s)"
                )
        if limits.min_transfer_rate is not None:
            return self._judge_rate(now, counters, limits.min_transfer_rate)
        return None

    def _judge_rate(
        self, now: float, counters: TcpCounters, min_rate: float
    ) -> TransferTooSlowError | None:
        window = self.limits.min_transfer_window
        samples = self._samples
        samples.append((now, counters.bytes_received, counters.bytes_acked))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()  # keep one sample at or before the window's start
        since, received, acked = samples[0]
        span = now - since
        if span < window:
            return None
        sent = counters.bytes_received - received
        if (
            counters.bytes_acked == acked  # the server is waiting: nothing of ours moved
            and 0 < sent < min_rate * span  # the client is sending, too slowly
            and counters.seconds_since_data < window / 2  # and still at it
        ):
            return TransferTooSlowError(
                f"{sent} bytes in {span:.1f} s ({sent / span:.1f} bytes/s), under "
                f"min_transfer_rate ({min_rate} bytes/s)"
            )
        return None
