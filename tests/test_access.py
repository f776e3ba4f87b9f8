"""sockserve.access: CIDR lists, the allow/deny order, and client keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve.access import (
    DEFAULT_IPV6_PREFIX,
    AccessPolicy,
    NetworkList,
    client_key,
    parse_ip,
)
from sockserve.errors import ConfigurationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def networks(*specs: str) -> NetworkList:
    return NetworkList.parse(specs, setting="test_setting")


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("127.0.0.1", "127.0.0.1/32"),
        ("::1", "::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        (" 192.0.2.0/24 ", "192.0.2.0/24"),  # stray spaces from a config file
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # an IPv4 rule in IPv6 clothing
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
    ],
)
def test_good_specs_parse(spec: str, shown: str) -> None:
    assert networks(spec).specs == (shown,)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("10.0.0.0/33", "not a network"),
        ("300.1.2.3", "not a network"),
        ("example.com", "not a network"),
        ("", "not a network"),
        ("fe80::1%eth0", "has a zone"),
        ("10.0.0.0/-1", "not a network"),
    ],
)
def test_bad_specs_name_the_setting_and_the_spec(spec: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        NetworkList.parse(["127.0.0.1", spec], setting="deny_from")
    message = str(caught.value)
    assert message.startswith("deny_from: ")
    assert repr(spec) in message
    assert why in message


def test_a_single_string_is_not_a_list_of_specs() -> None:
    # Iterating "10.0.0.0/8" would parse "1", "0", ... : refuse the easy mistake.
    with pytest.raises(ConfigurationError, match="allow must be a list"):
        NetworkList.parse("10.0.0.0/8", setting="allow")


def test_a_non_text_spec_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="allow: 167772160 is not a network"):
        NetworkList.parse([167772160], setting="allow")  # type: ignore[list-item]


def test_configuration_error_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        networks("nonsense")


def test_overlapping_and_adjacent_networks_collapse() -> None:
    collapsed = networks("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/25", "192.0.2.128/25")
    assert collapsed.specs == ("10.0.0.0/8", "192.0.2.0/24")
    assert len(collapsed) == 2


# -- contains -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        ("10.1.2.3", 5000),
        "10.1.2.3",
        ("::ffff:10.1.2.3", 5000, 0, 0),  # an IPv4 client of a dual-stack socket
        "::ffff:10.1.2.3",
    ],
)
def test_ipv4_clients_match_ipv4_rules_in_either_shape(address: Any) -> None:
    assert networks("10.0.0.0/8").contains(address)
    assert not networks("11.0.0.0/8").contains(address)


@pytest.mark.parametrize("rule", ["::ffff:10.0.0.0/104", "::ffff:10.1.2.3", "::ffff:0:0/96"])
def test_mapped_rules_match_ipv4_clients_in_either_shape(rule: str) -> None:
    assert networks(rule).contains(("10.1.2.3", 1))
    assert networks(rule).contains(("::ffff:10.1.2.3", 1, 0, 0))


@pytest.mark.parametrize("rule", ["::/0", "::/8", "::/80", "::a01:203/128", "::fffe:0:0/95"])
def test_ipv4_clients_do_not_match_other_ipv6_rules(rule: str) -> None:
    # ::a01:203 is the old IPv4-compatible form of 10.1.2.3 (deprecated by RFC 4291).
    assert not networks(rule).contains(("10.1.2.3", 1))
    assert not networks(rule).contains(("::ffff:10.1.2.3", 1, 0, 0))


def test_ipv6_clients_do_not_match_ipv4_rules() -> None:
    everything_v4 = networks("0.0.0.0/0")
    assert not everything_v4.contains(("2001:db8::1", 1, 0, 0))
    assert not everything_v4.contains(("::1", 1, 0, 0))
    assert not everything_v4.contains(("::", 1, 0, 0))


@pytest.mark.parametrize(
    "address",
    [("fe80::1%eth0", 1, 0, 2), "fe80::1%eth0", ("fe80::1%2", 1, 0, 2), "fe80::1"],
)
def test_zoned_clients_parse_and_match_without_their_zone(address: Any) -> None:
    assert networks("fe80::/10").contains(address)
    assert networks("fe80::1").contains(address)
    assert not networks("fe80::2").contains(address)


@pytest.mark.parametrize(
    "address",
    ["", "/run/app.sock", "\0abstract", b"\0abstract", b"", None, (), ("", 0), (1, 2), 7],
)
def test_non_ip_clients_never_match(address: Any) -> None:
    assert not networks("0.0.0.0/0", "::/0").contains(address)


def test_the_ip_parser() -> None:
    assert parse_ip("192.0.2.1") == (4, 0xC0000201)
    assert parse_ip("::ffff:192.0.2.1") == (4, 0xC0000201)
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("fe80::1%eth0") == (6, 0xFE80 << 112 | 1)
    for not_ip in ("localhost", "010.0.0.1", "1.2.3", "/tmp/x", "\0x", ":::", "1.2.3.4%eth0"):
        assert parse_ip(not_ip) is None, not_ip


# -- contains agrees with a naive loop over ipaddress ---------------------------------------


def naive_contains(rules: list[Network], host: str) -> bool:
    """The definition, written the slow and obvious way."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        host.partition("%")[0]
    )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in rules:
        if isinstance(rule, ipaddress.IPv6Network) and rule.subnet_of(MAPPED):
            rule = ipaddress.IPv4Network(
                (int(rule.network_address) & 0xFFFFFFFF, rule.prefixlen - 96)
            )
        if rule.version == address.version and address in rule:
            return True
    return False


def v4_networks() -> st.SearchStrategy[Network]:
    return st.builds(
        lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def v6_networks() -> st.SearchStrategy[Network]:
    native = st.builds(
        lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    )
    mapped = st.builds(
        lambda value, prefix: ipaddress.IPv6Network((0xFFFF << 32 | value, prefix), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(90, 128),  # some straddle the /96 boundary and must stay IPv6
    )
    return native | mapped


def host_near(rules: list[Network], data: st.DataObject) -> str:
    """A client host: often inside or just beside a rule, sometimes anywhere."""
    shape = data.draw(st.sampled_from(["inside", "beside", "v4", "v6", "mapped"]))
    if rules and shape in ("inside", "beside"):
        rule = data.draw(st.sampled_from(rules))
        top = 2**rule.max_prefixlen - 1
        offset = data.draw(st.integers(0, rule.num_addresses - 1))
        value = int(rule.network_address) + offset
        if shape == "beside":
            value = int(rule.broadcast_address) + 1 if value % 2 else int(rule.network_address) - 1
            value %= top + 1
        return as_host(rule, value)
    if shape == "v4":
        return str(ipaddress.IPv4Address(data.draw(st.integers(0, 2**32 - 1))))
    if shape == "mapped":
        return "::ffff:" + str(ipaddress.IPv4Address(data.draw(st.integers(0, 2**32 - 1))))
    return str(ipaddress.IPv6Address(data.draw(st.integers(0, 2**128 - 1))))


def as_host(rule: Network, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if rule.version == 4 else ipaddress.IPv6Address(value))


@settings(max_examples=400, deadline=None)
@given(rules=st.lists(v4_networks() | v6_networks(), max_size=12), data=st.data())
def test_contains_agrees_with_a_naive_loop(rules: list[Network], data: st.DataObject) -> None:
    listed = NetworkList.parse([str(rule) for rule in rules], setting="allow")
    for _ in range(8):
        host = host_near(rules, data)
        expected = naive_contains(rules, host)
        assert listed.contains(host) is expected, (host, rules)
        assert listed.contains((host, 80) if "." in host else (host, 80, 0, 0)) is expected


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(v4_networks() | v6_networks(), min_size=1, max_size=6), data=st.data())
def test_every_rules_own_edges_are_judged_right(rules: list[Network], data: st.DataObject) -> None:
    listed = NetworkList.parse([str(rule) for rule in rules], setting="allow")
    rule = data.draw(st.sampled_from(rules))
    top = 2**rule.max_prefixlen - 1
    for value in (
        int(rule.network_address),
        int(rule.broadcast_address),
        int(rule.network_address) - 1,
        int(rule.broadcast_address) + 1,
    ):
        if 0 <= value <= top:
            host = as_host(rule, value)
            assert listed.contains(host) is naive_contains(rules, host), (host, rules)


# -- AccessPolicy ---------------------------------------------------------------------------


def test_no_lists_admit_everyone() -> None:
    policy = AccessPolicy()
    assert policy.judge(("203.0.113.9", 1)) is None
    assert policy.judge(("2001:db8::1", 1, 0, 0)) is None


def test_deny_wins_over_allow() -> None:
    policy = AccessPolicy(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"])
    assert policy.judge(("10.1.1.1", 1)) is None
    assert policy.judge(("10.6.6.6", 1)) == "denied"
    assert policy.judge(("::ffff:10.6.6.6", 1, 0, 0)) == "denied"
    assert policy.judge(("192.0.2.1", 1)) == "not_allowed"
    # Even a narrower allow does not reopen the hole: the lists are sets, not an order.
    narrower = AccessPolicy(allow=["10.6.6.6"], deny=["10.0.0.0/8"])
    assert narrower.judge(("10.6.6.6", 1)) == "denied"


def test_deny_only_admits_the_rest() -> None:
    policy = AccessPolicy(deny=["192.0.2.0/24", "2001:db8::/32"])
    assert policy.judge(("192.0.2.7", 1)) == "denied"
    assert policy.judge(("2001:db8:5::1", 1, 0, 0)) == "denied"
    assert policy.judge(("198.51.100.1", 1)) is None
    assert policy.judge(("2001:db9::1", 1, 0, 0)) is None


def test_allow_only_refuses_the_rest_of_both_families() -> None:
    policy = AccessPolicy(allow=["127.0.0.1", "::1"])
    assert policy.judge(("127.0.0.1", 1)) is None
    assert policy.judge(("::1", 1, 0, 0)) is None
    assert policy.judge(("::ffff:127.0.0.1", 1, 0, 0)) is None
    assert policy.judge(("127.0.0.2", 1)) == "not_allowed"
    assert policy.judge(("::2", 1, 0, 0)) == "not_allowed"


@pytest.mark.parametrize("address", ["", "/run/app.sock", b"\0abstract"])
def test_unix_clients_are_admitted_whatever_the_lists(address: Any) -> None:
    policy = AccessPolicy(allow=["127.0.0.1"], deny=["0.0.0.0/0", "::/0"])
    assert policy.judge(address) is None


def test_an_ip_shaped_address_that_does_not_parse_fails_closed_under_an_allow_list() -> None:
    assert AccessPolicy(allow=["0.0.0.0/0"]).judge(("not-an-ip", 1)) == "not_allowed"
    assert AccessPolicy(deny=["0.0.0.0/0"]).judge(("not-an-ip", 1)) is None


def test_prebuilt_lists_keep_their_own_setting_names() -> None:
    allow = NetworkList.parse(["10.0.0.0/8"], setting="allow_from")
    policy = AccessPolicy(allow=allow)
    assert policy.allow is allow
    assert policy.deny is None
    assert "10.0.0.0/8" in repr(policy)


def test_bad_specs_name_allow_or_deny() -> None:
    with pytest.raises(ConfigurationError, match=r"^deny: 'x' is not a network"):
        AccessPolicy(deny=["x"])
    with pytest.raises(ConfigurationError, match=r"^allow: '10.0.0.1/8'"):
        AccessPolicy(allow=["10.0.0.1/8"])


def test_an_empty_allow_list_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="allow is empty"):
        AccessPolicy(allow=[])
    AccessPolicy(deny=[])  # an empty deny list refuses nobody, which is harmless


# -- client_key -----------------------------------------------------------------------------


def test_ipv4_keys_are_the_address_however_it_arrives() -> None:
    plain = client_key(("192.0.2.1", 5000))
    assert plain == client_key(("::ffff:192.0.2.1", 6000, 0, 0))
    assert plain == client_key("192.0.2.1")
    assert plain != client_key(("192.0.2.2", 5000))


def test_one_ipv6_64_is_one_client_by_default() -> None:
    assert DEFAULT_IPV6_PREFIX == 64
    first = client_key(("2001:db8:1:2::1", 1, 0, 0))
    assert first == client_key(("2001:db8:1:2:ffff:ffff:ffff:ffff", 2, 0, 0))
    assert first == client_key(("2001:db8:1:2::1%eth0", 2, 0, 5))
    assert first != client_key(("2001:db8:1:3::1", 1, 0, 0))


def test_the_ipv6_prefix_is_configurable() -> None:
    one = ("2001:db8:1:2::1", 1, 0, 0)
    same_56 = ("2001:db8:1:ff::1", 1, 0, 0)
    other_56 = ("2001:db8:1:100::1", 1, 0, 0)
    assert client_key(one, ipv6_prefix=56) == client_key(same_56, ipv6_prefix=56)
    assert client_key(one, ipv6_prefix=56) != client_key(other_56, ipv6_prefix=56)
    assert client_key(one) != client_key(same_56)
    assert client_key(one, ipv6_prefix=128) != client_key(
        ("2001:db8:1:2::2", 1, 0, 0), ipv6_prefix=128
    )


@pytest.mark.parametrize("prefix", [-1, 129])
def test_an_impossible_prefix_is_refused(prefix: int) -> None:
    with pytest.raises(ConfigurationError, match="ipv6_prefix"):
        client_key(("::1", 1, 0, 0), ipv6_prefix=prefix)


@settings(max_examples=300, deadline=None)
@given(
    v4=st.integers(0, 2**32 - 1),
    v6=st.integers(0, 2**128 - 1),
    prefix=st.integers(0, 128),
)
def test_ipv4_and_ipv6_keys_never_collide(v4: int, v6: int, prefix: int) -> None:
    v6_address = ipaddress.IPv6Address(v6)
    if v6_address.ipv4_mapped is not None:
        return  # that one is an IPv4 client
    key4 = client_key((str(ipaddress.IPv4Address(v4)), 1), ipv6_prefix=prefix)
    key6 = client_key((str(v6_address), 1, 0, 0), ipv6_prefix=prefix)
    assert key4 != key6


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("", ""),
        ("/run/app.sock", "/run/app.sock"),
        (b"\0name", "\0name"),
        ("localhost", "localhost"),
    ],
)
def test_non_ip_clients_are_keyed_by_their_text(address: Any, key: str) -> None:
    assert client_key(address) == key
