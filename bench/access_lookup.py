"""Cost of the admission checks: ``PYTHONPATH=src python3 -m bench.access_lookup``.

Prints microseconds per call (the best of several ``timeit`` repeats, so a noisy neighbour
inflates nothing) for ``NetworkList.contains`` with 1, 10 and 1,000 rules, against
``ipaddress``'s own parser and a naive loop for scale; then ``AccessPolicy.judge``,
``client_key`` and the per-client tables; then the memory ``ClientRateLimiter`` holds for
100,000 distinct clients (tracemalloc). Fixed seeds: every run measures the same inputs.
No asserts: these are figures to read, not thresholds.
"""

from __future__ import annotations

import ipaddress
import random
import sys
import timeit
import tracemalloc
from collections.abc import Callable

from sockserve.access import AccessPolicy, NetworkList, client_key, parse_ip
from sockserve.client_limits import ClientConnectionCounter, ClientRateLimiter

REPEATS = 5
CALLS = 20_000
FLOOD = 100_000


def per_call_us(call: Callable[[], object], calls: int = CALLS) -> float:
    return min(timeit.repeat(call, number=calls, repeat=REPEATS)) / calls * 1e6


V4_CLIENT = ("203.0.113.77", 50000)
V6_CLIENT = ("2001:db8:77::1", 50000, 0, 0)
MAPPED_CLIENT = ("::ffff:203.0.113.77", 50000, 0, 0)
AVOID = (ipaddress.ip_address(V4_CLIENT[0]), ipaddress.ip_address(V6_CLIENT[0]))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def random_rules(count: int, rng: random.Random) -> list[str]:
    """Mixed IPv4 (/8 to /32) and IPv6 (/32 to /128) rules, none holding the bench clients."""
    rules: list[str] = []
    while len(rules) < count:
        network: Network
        if len(rules) % 2 == 0:
            prefix = rng.choice([8, 12, 16, 20, 24, 24, 28, 32, 32])
            network = ipaddress.IPv4Network((rng.getrandbits(32), prefix), strict=False)
        else:
            prefix = rng.choice([32, 48, 56, 64, 64, 128])
            network = ipaddress.IPv6Network((rng.getrandbits(128), prefix), strict=False)
        if not any(address in network for address in AVOID if address.version == network.version):
            rules.append(str(network))
    return rules


def staircase() -> list[str]:
    """The worst case: one rule of every prefix length, each differing from the client in
    its last prefix bit, so they neither collapse nor match and a lookup tries them all."""
    rules = []
    for address in AVOID:
        bits = address.max_prefixlen
        for length in range(1, bits + 1):
            value = int(address) ^ (1 << (bits - length))
            rules.append(str(ipaddress.ip_network((value, length), strict=False)))
    return rules


def lookups() -> None:
    rng = random.Random(2024)
    print("NetworkList.contains, µs per call; every lookup is a miss, which tries every length")
    print("  (kept: rules left after collapsing; the last row is the worst case: every IPv4")
    print("  and every IPv6 prefix length)")
    columns = ("rules", 6), ("kept", 5), ("lengths", 8), ("IPv4", 7), ("IPv6", 7), ("mapped", 7)
    print(" ", *(f"{name:>{width}}" for name, width in columns), f"{'naive v4':>9}")
    rule_sets = [random_rules(n, rng) for n in (1, 10, 1000)] + [staircase()]
    for specs in rule_sets:
        listed = NetworkList.parse(specs, setting="bench")
        parsed = [ipaddress.ip_network(spec) for spec in specs]
        # Prefix lengths left after collapsing: what a lookup pays for.
        lengths = len({(spec.count(":") > 0, spec.split("/")[1]) for spec in listed.specs})

        def naive(rules: list[Network] = parsed) -> bool:
            address = ipaddress.ip_address(V4_CLIENT[0])
            return any(address in rule for rule in rules if rule.version == 4)

        print(
            f"  {len(specs):>6} {len(listed):>5} {lengths:>8}"
            f" {per_call_us(lambda listed=listed: listed.contains(V4_CLIENT)):>7.2f}"
            f" {per_call_us(lambda listed=listed: listed.contains(V6_CLIENT)):>7.2f}"
            f" {per_call_us(lambda listed=listed: listed.contains(MAPPED_CLIENT)):>7.2f}"
            f" {per_call_us(naive, calls=200 if len(specs) > 100 else CALLS):>9.2f}"
        )
    policy = AccessPolicy(allow=random_rules(10, rng), deny=random_rules(10, rng))
    counter = ClientConnectionCounter(10)
    known = ClientRateLimiter(rate=1e9, burst=1_000_000)  # never refuses: the common path
    fresh = ClientRateLimiter(rate=1.0, burst=5, max_clients=1000)
    new_keys = iter(range(10**9))

    def acquire_release() -> None:
        counter.try_acquire(12345)
        counter.release(12345)

    checks: list[tuple[str, Callable[[], object]]] = [
        ("parse_ip, IPv4 (inet_pton)", lambda: parse_ip("203.0.113.77")),
        ("ipaddress.ip_address, IPv4", lambda: ipaddress.ip_address("203.0.113.77")),
        ("parse_ip, IPv6", lambda: parse_ip("2001:db8:77::1")),
        ("AccessPolicy.judge, 10+10 rules", lambda: policy.judge(V4_CLIENT)),
        ("client_key, IPv4", lambda: client_key(V4_CLIENT)),
        ("client_key, IPv6 /64", lambda: client_key(V6_CLIENT)),
        ("counter try_acquire+release", acquire_release),
        ("rate allow, known client", lambda: known.allow(12345, 0.0)),
        ("rate allow, new client, full table", lambda: fresh.allow(next(new_keys), 0.0)),
    ]
    print("Other checks, µs per call")
    for label, call in checks:
        print(f"  {label:<36} {per_call_us(call):.3f}")


def flood_memory() -> None:
    print(f"ClientRateLimiter memory for {FLOOD:,} distinct clients (tracemalloc)")
    v6 = [(f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::1", 1, 0, 0) for n in range(FLOOD)]
    v4 = [(str(ipaddress.IPv4Address(0x0A000000 + n)), 1) for n in range(FLOOD)]
    for label, flood in (("IPv6 /64", v6), ("IPv4", v4)):
        for cap in (FLOOD, 65_536):
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            limiter = ClientRateLimiter(rate=1.0, burst=5, max_clients=cap)
            for index, address in enumerate(flood):
                # The key is made here, as the accept loop would: the table keeps it alive,
                # so its int counts, while the prebuilt addresses do not.
                limiter.allow(client_key(address), index * 1e-6)
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            print(
                f"  {label:<8} max_clients={cap:>7,}: {len(limiter):>7,} held,"
                f" {limiter.evictions:>6,} evicted, {held / 2**20:5.1f} MiB,"
                f" {held / len(limiter):4.0f} B per client held"
            )
            del limiter


def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    lookups()
    flood_memory()


if __name__ == "__main__":
    main()
