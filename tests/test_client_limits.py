"""sockserve.client_limits: per-client connection counts and per-client accept rates."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve.client_limits import (
    DEFAULT_MAX_CLIENTS,
    ClientConnectionCounter,
    ClientRateLimiter,
)
from sockserve.errors import ConfigurationError


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Switch threads every microsecond instead of every 5 ms, so the threads interleave
    inside the tables' methods rather than running their loops one after another."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# -- ClientConnectionCounter ----------------------------------------------------------------


def test_a_client_holds_at_most_limit_connections() -> None:
    counter = ClientConnectionCounter(2)
    assert counter.try_acquire("a")
    assert counter.try_acquire("a")
    assert not counter.try_acquire("a")
    assert counter.try_acquire("b")  # another client has its own count
    assert (counter.held("a"), counter.held("b"), counter.refused) == (2, 1, 1)
    counter.release("a")
    assert counter.try_acquire("a")


def test_an_entry_lives_only_while_its_client_has_connections() -> None:
    counter = ClientConnectionCounter(3)
    counter.try_acquire(1)
    counter.try_acquire(1)
    counter.try_acquire(2)
    assert len(counter) == 2
    counter.release(1)
    counter.release(2)
    assert len(counter) == 1
    counter.release(1)
    assert len(counter) == 0
    assert counter.held(1) == 0


def test_a_release_without_an_acquire_is_loud() -> None:
    counter = ClientConnectionCounter(1)
    with pytest.raises(RuntimeError, match="without a matching try_acquire"):
        counter.release("ghost")
    counter.try_acquire("a")
    counter.release("a")
    with pytest.raises(RuntimeError):
        counter.release("a")


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3", None])
def test_an_impossible_connection_limit_is_refused(limit: Any) -> None:
    with pytest.raises(ConfigurationError, match="limit must be >= 1"):
        ClientConnectionCounter(limit)


@pytest.mark.usefixtures("tight_switching")
def test_counts_stay_exact_under_threads() -> None:
    """8 threads x 1,000 acquire/release pairs over 4 shared keys: nothing drifts."""
    threads_count, rounds, limit = 8, 1000, 3
    counter = ClientConnectionCounter(limit)
    start = threading.Barrier(threads_count)
    over_limit: list[int] = []
    granted = [0] * threads_count

    errors: list[BaseException] = []

    def work(index: int) -> None:
        start.wait(timeout=10)
        try:
            for round_number in range(rounds):
                key = (index + round_number) % 4
                if counter.try_acquire(key):
                    granted[index] += 1
                    if counter.held(key) > limit:
                        over_limit.append(key)
                    counter.release(key)
        except BaseException as exc:  # a lost update shows up as a release without acquire
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert over_limit == []
    assert len(counter) == 0
    assert sum(granted) + counter.refused == threads_count * rounds


# -- ClientRateLimiter ----------------------------------------------------------------------


def test_a_burst_then_refusals_then_refill_at_the_rate() -> None:
    limiter = ClientRateLimiter(rate=10.0, burst=3)
    now = 100.0
    assert [limiter.allow("a", now) for _ in range(4)] == [True, True, True, False]
    assert limiter.refused == 1
    assert not limiter.allow("a", now + 0.099)  # not yet one token back
    assert limiter.allow("a", now + 0.1)  # one token per 1/rate seconds
    assert not limiter.allow("a", now + 0.1)
    assert limiter.allow("a", now + 0.2)
    # After a long rest the bucket is full again, never fuller than burst.
    later = now + 3600
    assert [limiter.allow("a", later) for _ in range(4)] == [True, True, True, False]


def test_clients_have_their_own_buckets() -> None:
    limiter = ClientRateLimiter(rate=1.0, burst=1)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert len(limiter) == 2


def test_refused_attempts_cost_no_token() -> None:
    limiter = ClientRateLimiter(rate=2.0, burst=1)
    assert limiter.allow("a", 0.0)
    for tick in range(1, 50):
        assert not limiter.allow("a", tick * 0.01)  # hammering inside the 0.5 s gap
    assert limiter.allow("a", 0.5)  # the retries did not push the refill back


def test_float_sums_do_not_steal_the_last_token_of_a_burst() -> None:
    # 0.1 + 0.1 + 0.1 > 0.3 in binary floating point.
    for now in (0.0, 0.3, 12345.678, 1e6):
        limiter = ClientRateLimiter(rate=10.0, burst=3)
        assert [limiter.allow("a", now) for _ in range(3)] == [True, True, True], now
        assert [limiter.allow("a", now + 0.1 * k) for k in (1, 2, 3)] == [True, True, True]


def test_a_clock_that_steps_back_does_not_grant_tokens() -> None:
    limiter = ClientRateLimiter(rate=1.0, burst=1)
    assert limiter.allow("a", 10.0)
    assert not limiter.allow("a", 5.0)
    assert limiter.allow("a", 11.0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 1000.0),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """The token bucket's contract, over any arrival pattern."""
    limiter = ClientRateLimiter(rate=rate, burst=burst)
    start = now = 1000.0
    allowed = 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow("a", now)
        assert allowed <= burst + rate * (now - start) + 1e-6
    # And the allowance is really given: a rested client gets its whole burst.
    rested = now + burst / rate + 1
    assert all(limiter.allow("a", rested) for _ in range(burst))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0, "burst": 1}, "rate must be a positive number"),
        ({"rate": -1.0, "burst": 1}, "rate must be a positive number"),
        ({"rate": float("nan"), "burst": 1}, "rate must be a positive number"),
        ({"rate": float("inf"), "burst": 1}, "rate must be a positive number"),
        ({"rate": "5", "burst": 1}, "rate must be a positive number"),
        ({"rate": 1.0, "burst": 0}, "burst must be >= 1"),
        ({"rate": 1.0, "burst": 2.5}, "burst must be >= 1"),
        ({"rate": 1.0, "burst": 1, "max_clients": 0}, "max_clients must be >= 1"),
    ],
)
def test_impossible_rate_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ClientRateLimiter(**kwargs)


def test_the_table_stays_bounded_under_a_flood_of_distinct_clients() -> None:
    cap = 1000
    limiter = ClientRateLimiter(rate=1.0, burst=5, max_clients=cap)
    for key in range(100_000):
        assert limiter.allow(key, 0.0)  # every newcomer is admitted once
        assert len(limiter) <= cap
    assert len(limiter) == cap
    # Nothing refilled in zero time, so each newcomer past the cap evicted a live bucket.
    assert limiter.evictions == 100_000 - cap
    assert DEFAULT_MAX_CLIENTS == 65_536


def test_refilled_buckets_go_first_and_are_not_counted_as_evictions() -> None:
    limiter = ClientRateLimiter(rate=1.0, burst=2, max_clients=3)
    for key in ("a", "b", "c"):
        limiter.allow(key, 0.0)  # each full again at t=1
    assert limiter.allow("d", 5.0)
    assert limiter.evictions == 0  # a and b were full: dropped, no information lost
    assert len(limiter) == 2  # c and d


def test_the_least_recently_seen_is_evicted_and_an_attacker_stays() -> None:
    limiter = ClientRateLimiter(rate=1.0, burst=1, max_clients=3)
    assert limiter.allow("attacker", 0.0)
    for index, newcomer in enumerate(["x", "y", "z", "w"]):
        now = 0.1 * (index + 1)
        assert not limiter.allow("attacker", now)  # keeps hammering, keeps being seen
        assert limiter.allow(newcomer, now)
    assert limiter.evictions == 2
    assert not limiter.allow("attacker", 0.5)  # still limited: never evicted
    assert len(limiter) == 3


def test_an_evicted_client_comes_back_with_a_fresh_burst() -> None:
    """The documented trade-off of a bounded table."""
    limiter = ClientRateLimiter(rate=1.0, burst=1, max_clients=1)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)  # evicts a while it still owes a token
    assert limiter.evictions == 1
    assert limiter.allow("a", 0.0)


@pytest.mark.usefixtures("tight_switching")
def test_the_rate_table_is_safe_under_threads() -> None:
    threads_count, rounds, cap = 8, 2000, 64
    limiter = ClientRateLimiter(rate=100.0, burst=2, max_clients=cap)
    start = threading.Barrier(threads_count)
    sizes: list[int] = []

    def work(index: int) -> None:
        start.wait(timeout=10)
        for round_number in range(rounds):
            limiter.allow((index * rounds + round_number) % 200, round_number * 0.001)
            sizes.append(len(limiter))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert max(sizes) <= cap
