"""`--dump-only` filters: the text people write, and the three-valued match against a connection's facts."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.dumping import parse_dump_condition
from proxy.config.units import Address, parse_address
from proxy.policy.dump_filter import UNKNOWN, holds


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("conn=17", "conn", 17),
        ("listener=edge", "listener", "edge"),
        ("route=0", "route", "0"),
        ("route = api ", "route", "api"),
        ("client=10.0.0.0/8", "client", ipaddress.ip_network("10.0.0.0/8")),
        ("client=10.1.2.3", "client", ipaddress.ip_network("10.1.2.3/32")),
        ("client=::1", "client", ipaddress.ip_network("::1/128")),
        ("client=::ffff:10.0.0.0/104", "client", ipaddress.ip_network("10.0.0.0/8")),
        ("server=Example.COM:443", "server", Address("example.com", 443)),
        ("server=[::0:1]:80", "server", Address("::1", 80)),
        ("server=10.0.0.1:5432", "server", Address("10.0.0.1", 5432)),
    ],
)
def test_each_key_is_parsed_to_the_form_it_is_compared_in(text, key, value):
    condition = parse_dump_condition(text)
    assert (condition.key, condition.text, condition.value) == (key, text, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clinet=10.0.0.1", "unknown dump filter key 'clinet' (did you mean 'client'?); keys: conn, listener, route"),
        ("port=80", "unknown dump filter key 'port'; keys: conn, listener, route, client, server"),
        ("conn", "dump filter 'conn' is not KEY=VALUE (one of conn=ID, listener=NAME"),
        ("listener=", "dump filter 'listener=' has no value after '='"),
        ("conn=0", "conn=0: a connection id is a whole number of at least 1"),
        ("conn=-3", "conn=-3: a connection id is a whole number of at least 1"),
        ("conn=1.5", "conn=1.5: a connection id"),
        ("client=10.0.0.300", "client=10.0.0.300: not an IP address or CIDR block"),
        ("client=example.com", "client=example.com: not an IP address or CIDR block"),
        ("server=example.com", "server=example.com: expected HOST:PORT or [IPv6]:PORT"),
        ("server=443", "server=443: expected HOST:PORT"),
        ("server=:443", "server=:443: expected HOST:PORT"),
        ("server=example.com:0", "server=example.com:0: bad address 'example.com:0': port 0"),
        ("server=::1:80", "server=::1:80: expected HOST:PORT or [IPv6]:PORT"),
        ("server=a..b:80", "is not a host name or IP address"),
    ],
)
def test_each_mistake_has_a_message_for_people(text, message):
    with pytest.raises(ValueError) as caught:
        parse_dump_condition(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def conditions(*texts: str):
    return [parse_dump_condition(text) for text in texts]


def test_known_facts_decide_and_unknown_ones_leave_it_open():
    wanted = conditions("listener=edge", "client=10.0.0.0/8", "server=db.internal:5432")
    assert holds(wanted, conn=1, listener="other") is False  # no need to wait for the rest
    assert holds(wanted, conn=1, listener="edge") is None
    client = ipaddress.ip_address("10.2.3.4")
    assert holds(wanted, conn=1, listener="edge", client=client) is None
    db = Address("DB.internal", 5432)
    assert holds(wanted, conn=1, listener="edge", client=client, servers=(db,)) is True
    assert holds(wanted, conn=1, listener="edge", client=client, servers=()) is False
    outside = ipaddress.ip_address("192.0.2.1")
    assert holds(wanted, conn=1, listener="edge", client=outside) is False


def test_no_conditions_hold_at_once():
    assert holds((), conn=1, listener="edge") is True


@pytest.mark.parametrize(
    ("route", "verdict"), [("api", True), (0, False), ("0", False), (None, False), (UNKNOWN, None)]
)
def test_route_by_name(route, verdict):
    assert holds(conditions("route=api"), conn=1, listener="l", route=route) is verdict


@pytest.mark.parametrize(("route", "verdict"), [(0, True), (1, False), ("api", False), (None, False)])
def test_an_unnamed_route_by_its_index(route, verdict):
    assert holds(conditions("route=0"), conn=1, listener="l", route=route) is verdict


@pytest.mark.parametrize(
    ("client", "verdict"),
    [
        ("10.9.9.9", True),
        ("::ffff:10.9.9.9", True),  # a dual-stack listener's IPv4 client
        ("11.0.0.1", False),
        ("::1", False),
        (None, False),  # no address (a PROXY LOCAL header, a Unix socket): no network holds it
    ],
)
def test_client_in_a_network(client, verdict):
    address = None if client is None else ipaddress.ip_address(client)
    assert holds(conditions("client=10.0.0.0/8"), conn=1, listener="l", client=address) is verdict


def test_server_as_configured_or_as_connected_to():
    wanted = conditions("server=[2001:db8::1]:443")
    configured, connected = Address("backend.example", 443), Address("2001:DB8:0::1", 443)
    assert holds(wanted, conn=1, listener="l", servers=(configured, connected)) is True
    assert holds(wanted, conn=1, listener="l", servers=(configured,)) is False
    assert holds(wanted, conn=1, listener="l", servers=(Address("2001:db8::1", 444),)) is False


def test_several_conditions_of_one_key_must_all_hold():
    wanted = conditions("client=10.0.0.0/8", "client=10.1.0.0/16")
    assert holds(wanted, conn=1, listener="l", client=ipaddress.ip_address("10.1.0.1")) is True
    assert holds(wanted, conn=1, listener="l", client=ipaddress.ip_address("10.2.0.1")) is False
    assert holds(conditions("conn=1", "conn=2"), conn=1, listener="l") is False


# -- properties ---------------------------------------------------------------------------

CONDITION_TEXTS = [
    *("conn=1", "conn=2", "listener=a", "listener=b", "route=0", "route=1", "route=api"),
    *("client=10.0.0.0/8", "client=10.1.0.0/16", "client=::1", "client=2001:db8::/32", "client=0.0.0.0/0"),
    *("server=a.test:80", "server=10.0.0.1:80", "server=[::1]:443", "server=A.TEST:80"),
]
condition_lists = st.lists(st.sampled_from(CONDITION_TEXTS).map(parse_dump_condition), max_size=5)
route_facts = st.sampled_from([0, 1, "api", "web", None])
client_facts = (
    st.sampled_from(["10.1.2.3", "10.2.0.1", "::ffff:10.1.0.9", "::1", "2001:db8::5", "192.0.2.1"]).map(
        ipaddress.ip_address
    )
    | st.none()
)
server_facts = st.lists(
    st.sampled_from(["a.test:80", "10.0.0.1:80", "[::1]:443", "b.test:80", "[::ffff:10.0.0.1]:80"]).map(parse_address),
    max_size=2,
).map(tuple)
facts = st.fixed_dictionaries(
    {
        "conn": st.integers(1, 3),
        "listener": st.sampled_from(["a", "b"]),
        "route": route_facts,
        "client": client_facts,
        "servers": server_facts,
    }
)
SOME_FACTS_UNKNOWN = st.sets(st.sampled_from(["route", "client", "servers"]))


@settings(max_examples=200, deadline=None)
@given(condition_lists, facts)
def test_with_every_fact_known_the_verdict_is_the_and_of_each_condition(wanted, known):
    verdict = holds(wanted, **known)
    assert verdict is not None
    assert verdict == all(holds([condition], **known) for condition in wanted)


@settings(max_examples=200, deadline=None)
@given(condition_lists, facts, SOME_FACTS_UNKNOWN)
def test_an_unknown_fact_never_turns_false_into_true(wanted, known, unknown):
    partial = holds(wanted, **{**known, **dict.fromkeys(unknown, UNKNOWN)})
    final = holds(wanted, **known)
    assert partial is None or partial == final  # what is decided early stays decided
    if final is False:
        assert partial is not True
