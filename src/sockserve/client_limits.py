"""Per-client limits: how many connections one client holds, and how fast it may open more.

Keys are whatever identifies a client; ``access.client_key`` makes them (an IPv4 address,
an IPv6 /64). Both tables are sans-clock and sans-socket: the caller passes the key, and
the rate limiter also gets ``now`` from the caller's monotonic clock, so tests are exact.

Design: one lock per table, held for a few dictionary operations and never across a call
out, so the accept loop and the worker threads that release connections never wait long.
Every operation is O(1). Both tables are bounded:

* ``ClientConnectionCounter`` keeps an entry only while its client has a connection open,
  so it never holds more entries than there are open connections, which
  ``max_connections`` already bounds.
* ``ClientRateLimiter`` must remember clients after they disconnect (that is what a rate
  is), so it caps itself at ``max_clients`` and forgets the least recently seen first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .errors import ConfigurationError

#: Default cap on the rate limiter's table. Measured by bench/access_lookup.py on CPython
#: 3.11: 160-180 bytes per remembered client (its int key, a float, an OrderedDict slot),
#: so a full table of 65,536 clients holds about 13 MiB: small beside a server's other
#: memory, and more distinct clients than one process usually sees within a refill period.
DEFAULT_MAX_CLIENTS = 65_536

#: How many refilled buckets an insertion may discard before it evicts; a small constant
#: keeps ``allow`` O(1) and still lets the table shrink twice as fast as it can grow.
_SWEEP_PER_INSERT = 2

#: Slack, in tokens, when comparing times: float sums such as 0.1 + 0.1 + 0.1 exceed 0.3,
#: and without slack the last token of a burst would be refused.
_TOKEN_SLACK = 1e-6


class ClientConnectionCounter:
    """Open connections per client, against a per-client ``limit``.

    Methods for the caller: ``try_acquire(key)`` when a client connects (False: it holds
    ``limit`` already, refuse it); ``release(key)`` exactly once for each True, from any
    thread, when that connection ends.

    Memory: an entry exists only while its client has a connection open, so the table
    holds at most as many entries as there are open connections.

    Error handling: a ``release`` without a matching ``try_acquire`` is a bookkeeping bug
    in the caller and raises ``RuntimeError`` rather than drifting silently.

    Stats: ``len(counter)`` is how many clients hold connections; ``refused`` how many
    ``try_acquire`` calls said no.
    """

    __slots__ = ("_counts", "_lock", "limit", "refused")

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"per-client connection limit must be >= 1, not {limit!r}")
        self.limit = limit
        self.refused = 0
        self._counts: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: Hashable) -> bool:
        with self._lock:
            held = self._counts.get(key, 0)
            if held >= self.limit:
                self.refused += 1
                return False
            self._counts[key] = held + 1
            return True

    def release(self, key: Hashable) -> None:
        with self._lock:
            held = self._counts.get(key, 0)
            if held > 1:
                self._counts[key] = held - 1
            elif held == 1:
                del self._counts[key]  # the entry goes with the client's last connection
            else:
                raise RuntimeError(f"release({key!r}) without a matching try_acquire")

    def held(self, key: Hashable) -> int:
        """How many connections ``key`` holds now."""
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


class ClientRateLimiter:
    """New connections per client per second: a token bucket for each client.

    A client may open ``burst`` connections at once, then one every ``1 / rate`` seconds;
    an idle client earns tokens back at ``rate`` per second, up to ``burst``.

    Methods for the caller: ``allow(key, now)`` for each new connection, with ``now`` from
    ``time.monotonic()``; False means refuse it. Refused attempts cost no token (they are
    not connections), but they do count as being seen (see Memory).

    How: each bucket is one float, the time at which it will be full again (the
    "theoretical arrival time" of the generic cell rate algorithm that ATM traffic
    policing uses, ITU-T I.371; it admits exactly what a token bucket admits). Taking a
    token pushes that time ``1 / rate`` later; a take is refused when the time would lie
    more than ``burst / rate`` ahead of ``now``.
    A bucket whose time has passed is full: it knows nothing a fresh bucket would not.

    Memory: at most ``max_clients`` buckets, kept in least-recently-seen order. When a new
    client arrives, up to two of the least recently seen buckets are dropped if full (no
    information lost); if the table is still at its cap, the least recently seen bucket is
    evicted anyway and ``evictions`` counts it. The trade-off: an evicted client that comes
    back starts with a fresh burst. A client hammering the server is seen constantly and
    so is never the one evicted, but a flood of more than ``max_clients`` distinct
    addresses within a refill period (``burst / rate`` seconds) does hand evicted clients
    fresh bursts, so ``max_clients`` must exceed the number of clients you mean to limit
    at once. A rising ``evictions`` says it is too small; IPv6 floods are what
    ``client_key``'s /64 grouping is for.

    Stats: ``len(limiter)`` buckets held, ``evictions`` buckets dropped while not full,
    ``refused`` calls to ``allow`` that said no.
    """

    __slots__ = (
        "_buckets",
        "_interval",
        "_lock",
        "_tolerance",
        "burst",
        "evictions",
        "max_clients",
        "rate",
        "refused",
    )

    def __init__(self, rate: float, burst: int, *, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        if not isinstance(rate, int | float) or not rate > 0 or rate == float("inf"):
            raise ConfigurationError(f"per-client rate must be a positive number, not {rate!r}")
        for name, value in (("burst", burst), ("max_clients", max_clients)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"per-client {name} must be >= 1, not {value!r}")
        self.rate = float(rate)
        self.burst = burst
        self.max_clients = max_clients
        self.evictions = 0
        self.refused = 0
        self._interval = 1.0 / self.rate
        # A take is allowed while the bucket's full-again time lies at most this far
        # ahead of now: burst - 1 tokens already owed, plus the slack.
        self._tolerance = (burst - 1 + _TOKEN_SLACK) * self._interval
        self._buckets: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float) -> bool:
        """True if ``key`` may open a connection at monotonic time ``now`` (it takes a token)."""
        with self._lock:
            buckets = self._buckets
            full_at = buckets.get(key)
            if full_at is None:
                self._make_room(now)
                buckets[key] = now + self._interval  # a fresh bucket, one token taken
                return True
            buckets.move_to_end(key)
            if full_at < now:
                full_at = now  # full: idle time beyond that earns nothing
            if full_at - now > self._tolerance:
                self.refused += 1
                return False
            buckets[key] = full_at + self._interval
            return True

    def _make_room(self, now: float) -> None:
        """Drop refilled buckets from the old end; evict one if the table is still full."""
        buckets = self._buckets
        for _ in range(_SWEEP_PER_INSERT):
            if not buckets:
                return
            oldest, full_at = next(iter(buckets.items()))
            if full_at > now:
                break
            del buckets[oldest]
        if len(buckets) >= self.max_clients:
            buckets.popitem(last=False)
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._buckets)
