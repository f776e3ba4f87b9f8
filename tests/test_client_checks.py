"""The client checks and the server settings that build them, without a network.

Serving them in every mode is tests/test_limits_serving.py; the tables themselves are
tests/test_access.py and tests/test_client_limits.py.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

import sockserve
from sockserve.access import AccessPolicy
from sockserve.admission import (
    AccessCheck,
    AdmissionCheck,
    ClientLimits,
    ConnectionsPerClient,
    RatePerClient,
    Refused,
    ReleasingCheck,
)
from sockserve.admission.client_checks import default_burst
from sockserve.serving.core import ServingCore

V4 = ("192.0.2.7", 40000)
V6 = ("2001:db8:1:2::7", 40000, 0, 0)
V6_SAME_64 = ("2001:db8:1:2:ffff::1", 40001, 0, 0)
MAPPED = ("::ffff:192.0.2.7", 40002, 0, 0)
UNIX_UNNAMED = ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reason_of(check: Any, address: Any) -> str | None:
    try:
        check(object(), address)
    except Refused as why:
        return why.reason
    return None


# -- the checks ------------------------------------------------------------------------------


def test_the_checks_are_client_checks_and_the_counter_releases() -> None:
    for check in (AccessCheck(deny=["10.0.0.0/8"]), RatePerClient(1.0), ConnectionsPerClient(1)):
        assert isinstance(check, AdmissionCheck)
        assert check.judges == "client"
    assert isinstance(ConnectionsPerClient(1), ReleasingCheck)
    assert not isinstance(RatePerClient(1.0), ReleasingCheck)  # it holds nothing per connection


def test_access_check_reasons() -> None:
    check = AccessCheck(allow=["192.0.2.0/24", "2001:db8::/32"], deny=["192.0.2.7/32"])
    assert reason_of(check, V4) == "denied"
    assert reason_of(check, MAPPED) == "denied"  # IPv4 however it arrives
    assert reason_of(check, ("192.0.2.8", 1)) is None
    assert reason_of(check, ("198.51.100.1", 1)) == "not_allowed"
    assert reason_of(check, V6) is None
    assert reason_of(check, UNIX_UNNAMED) is None  # a Unix client: the file mode decides
    request = object()
    assert check(request, ("192.0.2.8", 1)) == (request, ("192.0.2.8", 1))


def test_access_check_takes_a_policy_or_lists_not_both() -> None:
    policy = AccessPolicy(deny=["10.0.0.0/8"])
    assert AccessCheck(policy).policy is policy
    with pytest.raises(sockserve.ConfigurationError, match="not both"):
        AccessCheck(policy, allow=["10.0.0.0/8"])


def test_rate_per_client_burst_refill_and_keys() -> None:
    clock = Clock()
    check = RatePerClient(2.0, 3, clock=clock)
    assert [reason_of(check, V4) for _ in range(4)] == [None, None, None, "client_rate"]
    assert reason_of(check, MAPPED) == "client_rate"  # the same client on a dual-stack socket
    assert reason_of(check, ("192.0.2.8", 1)) is None  # another client: its own bucket
    clock.now += 0.5  # one token back at 2 per second
    assert reason_of(check, V4) is None
    assert reason_of(check, V4) == "client_rate"
    assert [reason_of(check, V6) for _ in range(3)] == [None] * 3
    assert reason_of(check, V6_SAME_64) == "client_rate"  # one /64 is one client
    for _ in range(10):
        assert reason_of(check, UNIX_UNNAMED) is None  # not an IP client: not limited
    # 192.0.2.8's bucket was full again by then, so a new client's arrival dropped it.
    assert (check.clients, check.refused, check.evictions) == (2, 4, 0)


def test_default_burst_is_a_seconds_worth() -> None:
    assert [default_burst(r) for r in (0.01, 1, 2.5, 100)] == [1, 1, 3, 100]
    assert RatePerClient(2.5).limiter.burst == 3


def test_rate_evictions_are_counted_and_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = RatePerClient(0.01, 1, max_clients=10, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="sockserve.admission"):
        for i in range(25):
            assert reason_of(check, (f"10.0.0.{i}", 1)) is None
    assert (check.clients, check.evictions) == (10, 15)
    [record] = caplog.records
    assert "client_rate_max_clients" in record.getMessage()


def test_connections_per_client_counts_and_releases() -> None:
    check = ConnectionsPerClient(2)
    assert [reason_of(check, V6) for _ in range(2)] == [None, None]
    assert reason_of(check, V6_SAME_64) == "client_connections"
    assert check.held(V6) == 2
    check.release(V6_SAME_64)  # the same /64: the same count
    assert reason_of(check, V6) is None
    for _ in range(2):
        check.release(V6)
    assert (check.clients, check.refused) == (0, 1)
    check(object(), UNIX_UNNAMED)
    check.release(UNIX_UNNAMED)  # not counted, so nothing to release either
    with pytest.raises(RuntimeError, match="without a matching"):
        check.release(V4)


def test_the_core_releases_with_the_address_the_check_judged() -> None:
    """A later check may rewrite the address; the count is still released under its key."""

    class Server:
        overload_policy = "wait"

        def _capacity(self) -> tuple[None, str]:
            return None, "max_connections"

        def shutdown_request(self, request: Any) -> None:
            pass

    def rewrite(request: Any, client_address: Any) -> tuple[Any, Any]:
        return request, ("198.51.100.99", 1)

    per_client = ConnectionsPerClient(1)
    core = ServingCore()
    core.add_check(per_client)
    core.add_check(rewrite)
    job = core.admit_client(Server(), object(), V4)
    assert job is not None
    assert per_client.held(V4) == 1
    job.finish()
    assert per_client.held(V4) == 0
    refused_later = ServingCore()
    refused_later.add_check(per_client)
    refused_later.add_check(AccessCheck(deny=["192.0.2.0/24"]))
    assert refused_later.admit_client(Server(), object(), V4) is None
    assert per_client.held(V4) == 0  # handed back at once


# -- the server settings -----------------------------------------------------------------------


def test_settings_build_the_checks_in_order() -> None:
    with sockserve.TCPServer(
        ("127.0.0.1", 0),
        sockserve.StreamRequestHandler,
        max_connections_per_client=3,
        client_rate=5,
        deny=["10.0.0.0/8"],
    ) as server:
        limits = server.client_limits
        assert isinstance(limits.access, AccessCheck)
        assert isinstance(limits.rate, RatePerClient)
        assert isinstance(limits.connections, ConnectionsPerClient)
        assert server._core.client_checks == [limits.access, limits.rate, limits.connections]
        assert limits.rate.limiter.burst == 5
        assert limits.tables() == {"rate_clients": 0, "rate_evictions": 0, "connection_clients": 0}


def test_no_settings_no_checks() -> None:
    with sockserve.UDPServer(("127.0.0.1", 0), sockserve.DatagramRequestHandler) as server:
        assert server.client_limits == ClientLimits()
        assert server._core.client_checks == []


def test_class_attributes_and_keywords() -> None:
    class Guarded(sockserve.ThreadingTCPServer):
        allow = ("127.0.0.0/8",)
        client_rate = 10.0
        client_burst = 20
        client_ipv6_prefix = 56
        client_rate_max_clients = 100

        def user_check(self) -> None: ...

    with Guarded(("127.0.0.1", 0), sockserve.StreamRequestHandler) as server:
        assert server.client_limits.access is not None
        rate = server.client_limits.rate
        assert rate is not None
        assert (rate.limiter.burst, rate.limiter.max_clients, rate.ipv6_prefix) == (20, 100, 56)
    with Guarded(
        ("127.0.0.1", 0), sockserve.StreamRequestHandler, client_burst=2, allow=None
    ) as server:
        assert server.client_burst == 2  # a keyword wins
        assert server.allow == ("127.0.0.0/8",)  # None keeps the class attribute


def test_the_checks_run_before_the_classes_own() -> None:
    def own(request: Any, client_address: Any) -> tuple[Any, Any]:
        return request, client_address

    class WithOwn(sockserve.TCPServer):
        admission_checks = (own,)

    with WithOwn(("127.0.0.1", 0), sockserve.StreamRequestHandler, deny=["10.0.0.0/8"]) as server:
        assert server._core.client_checks == [server.client_limits.access, own]


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"allow": ["10.1.2.3/8"]}, "allow"),
        ({"deny": "10.0.0.0/8"}, "deny"),
        ({"allow": []}, "allow"),
        ({"max_connections_per_client": 0}, "max_connections_per_client"),
        ({"max_connections_per_client": True}, "max_connections_per_client"),
        ({"client_rate": 0}, "client_rate"),
        ({"client_rate": float("inf")}, "client_rate"),
        ({"client_rate": 1, "client_burst": 0}, "client_burst"),
        ({"client_burst": 5}, "client_burst"),
        ({"client_rate": 1, "client_rate_max_clients": 0}, "client_rate_max_clients"),
        ({"client_rate": 1, "client_ipv6_prefix": 129}, "client_ipv6_prefix"),
    ],
)
def test_settings_that_cannot_work(keywords: dict[str, Any], named: str) -> None:
    with pytest.raises(sockserve.ConfigurationError, match=named):
        sockserve.TCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler, **keywords)


def test_a_datagram_server_has_no_connections_to_count() -> None:
    with pytest.raises(sockserve.ConfigurationError, match="client_rate"):
        sockserve.UDPServer(
            ("127.0.0.1", 0), sockserve.DatagramRequestHandler, max_connections_per_client=1
        )
    # The socket was never opened: nothing leaked (filterwarnings=error would see it).


def test_an_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="allowed"):
        sockserve.TCPServer(
            ("127.0.0.1", 0),
            sockserve.StreamRequestHandler,
            allowed=["10.0.0.0/8"],  # type: ignore[call-arg]
        )


def test_async_servers_take_the_settings_too() -> None:
    with sockserve.AsyncUDPServer(
        ("127.0.0.1", 0), sockserve.AsyncDatagramRequestHandler, client_rate=1, allow=["::1"]
    ) as server:
        assert server.client_limits.rate is not None
        assert server.socket.type == socket.SOCK_DGRAM
