"""The explanation behind `pairproxy route`, without sockets: its reasons, and that it decides as serving does."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import (
    ListenerConfig,
    ListenerTlsConfig,
    MatchConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
)
from proxy.config.units import Address, canonical_ip
from proxy.policy.explain import Described, explain, parse_client, render_text
from proxy.policy.routes import AccessPolicy, RouteTable
from proxy.policy.upstreams import Pool
from proxy.protocol.detect import FirstBytes
from tests.support import FIRST_BYTES, client_hello


def nets(*texts: str) -> tuple:
    return tuple(ipaddress.ip_network(text) for text in texts)


def listener(*routes: RouteConfig, **kwargs) -> ListenerConfig:
    return ListenerConfig(name="edge", listen=Address("127.0.0.1", 8080), routes=routes, **kwargs)


def upstream(name: str, *servers: ServerConfig, **kwargs) -> UpstreamConfig:
    return UpstreamConfig(name, servers or (ServerConfig(Address("127.0.0.1", 9000)),), **kwargs)


UPSTREAMS = {"a": upstream("a"), "b": upstream("b")}
GATE = listener(
    RouteConfig("a", MatchConfig(source=nets("10.1.0.0/16")), name="inside"),
    RouteConfig("b"),
    allow=nets("10.0.0.0/8", "192.168.0.0/16"),
    deny=nets("10.9.0.0/16"),
)


def test_deny_decides_first_and_names_its_network():
    result = explain(GATE, UPSTREAMS, canonical_ip("10.9.1.1"))
    assert (result.decision, result.access.decision, result.access.rule) == ("denied", "denied", "deny")
    assert result.access.network == "10.9.0.0/16"
    assert result.routes == () and result.plan is None  # a denied client never reaches the routes


def test_a_client_outside_allow_is_denied_by_the_allow_list():
    result = explain(GATE, UPSTREAMS, canonical_ip("172.16.0.1"))
    assert (result.decision, result.access.rule, result.access.network) == ("denied", "allow", None)
    assert "10.0.0.0/8, 192.168.0.0/16" in result.access.detail


def test_allowed_client_names_the_allow_network_and_each_route_says_why():
    result = explain(GATE, UPSTREAMS, canonical_ip("192.168.1.1"), 5000)
    assert (result.access.decision, result.access.network) == ("allowed", "192.168.0.0/16")
    inside, default = result.routes
    assert (inside.label, inside.status) == ("inside", "no_match")
    assert inside.conditions[0].detail == "192.168.1.1 is in none of 10.1.0.0/16"
    assert (default.label, default.status, default.conditions) == (1, "matched", ())
    assert (result.decision, result.route, result.plan.upstream.name) == ("routed", 1, "b")


def test_routes_after_the_winner_are_not_reached():
    result = explain(GATE, UPSTREAMS, canonical_ip("10.1.2.3"))
    assert [step.status for step in result.routes] == ["matched", "not_reached"]
    assert result.routes[0].conditions[0].detail == "10.1.2.3 is in 10.1.0.0/16"
    assert result.route == "inside"


def test_ipv4_mapped_clients_and_rules_are_the_ipv4_ones():
    table = listener(RouteConfig("a", MatchConfig(source=nets("::ffff:10.0.0.0/104"))))
    client, port = parse_client("[::ffff:10.1.2.3]:443")
    assert (str(client), port) == ("10.1.2.3", 443)
    result = explain(table, UPSTREAMS, client)
    assert result.routes[0].conditions[0].detail == "10.1.2.3 is in 10.0.0.0/8"


def test_sni_conditions_say_which_pattern_matched_or_that_none_did():
    table = listener(
        RouteConfig("a", MatchConfig(sni=("api.example.com",))),
        RouteConfig("b", MatchConfig(sni=("example.com", "*.example.com"))),
    )
    result = explain(table, UPSTREAMS, None, sni="www.example.com")
    assert [c.detail for step in result.routes for c in step.conditions] == [
        "www.example.com matches none of api.example.com",
        "www.example.com matches *.example.com",
    ]
    assert result.route == 1
    no_name = explain(table, UPSTREAMS, None)
    assert no_name.decision == "no_route"
    assert any("routes with sni cannot match" in note for note in no_name.notes)


def test_a_tls_listener_without_sni_says_where_the_name_would_come_from():
    tls = ListenerTlsConfig(certificate=None)  # type: ignore[arg-type]  # only its presence matters here
    table = listener(RouteConfig("a", MatchConfig(sni=("admin.example.com",))), RouteConfig("b"), tls=tls)
    (note,) = explain(table, UPSTREAMS, None).notes
    assert "TLS handshake" in note and "routes with sni cannot match" in note


def test_sni_on_a_listener_that_never_reads_it_is_pointed_out():
    (note,) = explain(listener(RouteConfig("a")), UPSTREAMS, None, sni="x.example.com").notes
    assert "--sni changes nothing" in note


def test_a_proxy_protocol_listener_says_whose_address_it_is():
    table = listener(RouteConfig("a"), accept_proxy_protocol=True, proxy_trusted=nets("127.0.0.1/32"))
    notes = explain(table, UPSTREAMS, canonical_ip("203.0.113.7")).notes
    assert "the client address is the one the header would carry" in notes[0]
    assert "127.0.0.1/32" in notes[1]


def test_without_a_client_address_rules_on_it_are_undecided():
    result = explain(GATE, UPSTREAMS, None)
    assert (result.access.decision, result.decision, result.plan) == ("unknown", "undecided", None)
    assert result.routes[0].status == "unknown"
    # Routes only: the first route that needs the address leaves the decision open, a default before it does not.
    routes_only = listener(RouteConfig("a", MatchConfig(source=nets("10.0.0.0/8"))), RouteConfig("b"))
    assert explain(routes_only, UPSTREAMS, None).decision == "undecided"
    default_first = listener(RouteConfig("b"), RouteConfig("a", MatchConfig(source=nets("10.0.0.0/8"))))
    assert explain(default_first, UPSTREAMS, None).route == 0


def test_allow_deny_undecided_but_the_route_known_says_where_an_allowed_client_goes():
    table = listener(RouteConfig("a"), deny=nets("10.9.0.0/16"))
    result = explain(table, UPSTREAMS, None)
    assert (result.decision, result.route) == ("undecided", 0)
    assert "if allowed: route 0, upstream a" in render_text(result)


def servers(*specs: tuple[int, int, bool]) -> tuple[ServerConfig, ...]:
    return tuple(ServerConfig(Address("127.0.0.1", port), weight, backup) for port, weight, backup in specs)


def test_candidates_follow_weights_then_backups_and_stop_at_one_plus_retries():
    pool = upstream("a", *servers((1, 1, False), (2, 3, False), (3, 1, True), (4, 1, False)), retries=2)
    result = explain(listener(RouteConfig("a")), {"a": pool}, canonical_ip("10.0.0.1"))
    assert result.plan.candidates == (("127.0.0.1:2", 3, False), ("127.0.0.1:1", 1, False), ("127.0.0.1:4", 1, False))
    first = upstream("a", *servers((1, 1, True), (2, 1, False)), balance="first", retries=5)
    result = explain(listener(RouteConfig("a")), {"a": first}, canonical_ip("10.0.0.1"))
    assert [c[0] for c in result.plan.candidates] == ["127.0.0.1:2", "127.0.0.1:1"]
    assert "servers tried in order: 1. 127.0.0.1:2  2. 127.0.0.1:1 (backup)" in render_text(result)


def test_source_hash_needs_the_client_and_then_gives_its_own_order():
    pool = upstream("a", *servers((1, 1, False), (2, 1, False), (3, 1, False)), balance="source_hash")
    table = listener(RouteConfig("a"))
    assert explain(table, {"a": pool}, None).plan.candidates is None
    client = canonical_ip("10.7.7.7")
    expected = [str(s.address) for s in Pool(pool).candidates("10.7.7.7", 0.0)]
    assert [c[0] for c in explain(table, {"a": pool}, client).plan.candidates] == expected


@pytest.mark.parametrize("text", ["1.2.3", "host:80", "10.0.0.1:99999", "[10.0.0.1]:80", "", "8080", ":8080"])
def test_bad_client_addresses_are_refused_with_the_forms_that_work(text):
    with pytest.raises(ValueError, match="expected IP, IP:PORT or \\[IPv6\\]:PORT"):
        parse_client(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", None)),
        ("10.0.0.1:5", ("10.0.0.1", 5)),
        ("::1", ("::1", None)),
        ("[::1]:7", ("::1", 7)),
    ],
)
def test_client_address_forms(text, expected):
    address, port = parse_client(text)
    assert (str(address), port) == expected


# -- the explanation's decision is the serving code's ---------------------------------------

NETWORKS = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "127.0.0.1/32", "::1/128", "2001:db8::/32"])
CLIENTS = st.sampled_from(["10.1.2.3", "10.2.0.1", "192.168.5.5", "127.0.0.1", "::1", "2001:db8::9", "8.8.8.8"])
PATTERNS = st.sampled_from(["api.example.com", "*.example.com", "example.org"])
NAMES = st.sampled_from([None, "api.example.com", "www.example.com", "example.org", "other.net"])


@st.composite
def tables(draw):
    routes = tuple(
        RouteConfig(
            draw(st.sampled_from(["a", "b"])),
            MatchConfig(
                sni=tuple(draw(st.lists(PATTERNS, max_size=2))),
                source=nets(*draw(st.lists(NETWORKS, max_size=2))),
            ),
            name=draw(st.sampled_from([None, "r"])) and f"r{index}",
        )
        for index in range(draw(st.integers(0, 4)))
    )
    allow = draw(st.none() | st.lists(NETWORKS, max_size=2).map(lambda texts: nets(*texts)))
    return listener(*routes, allow=allow, deny=nets(*draw(st.lists(NETWORKS, max_size=2))))


@settings(max_examples=200, deadline=None)
@given(tables(), CLIENTS, NAMES)
def test_the_decision_is_what_a_connection_gets(table, client_text, server_name):
    client = canonical_ip(client_text)
    result = explain(table, UPSTREAMS, client, sni=server_name, rng=random.Random(0))
    permitted = AccessPolicy.of(table).permits(client)
    assert (result.access.decision == "allowed") == permitted
    if not permitted:
        assert result.decision == "denied"
        return
    selected = RouteTable(table.routes).select(client, server_name)
    if selected is None:
        assert result.decision == "no_route" and {s.status for s in result.routes} <= {"no_match"}
        return
    label, route = selected
    assert (result.decision, result.route, result.plan.upstream.name) == ("routed", label, route.upstream)
    statuses = [step.status for step in result.routes]
    winner = statuses.index("matched")
    assert set(statuses[:winner]) <= {"no_match"} and set(statuses[winner + 1 :]) <= {"not_reached"}
    for step in result.routes[:winner]:
        assert any(condition.held is False for condition in step.conditions)


# -- what the client sends first -----------------------------------------------------------

MUX = listener(
    RouteConfig("a", MatchConfig(protocol=("ssh",)), name="ssh"),
    RouteConfig("a", MatchConfig(protocol=("tls",), alpn=("acme-tls/1",)), name="acme"),
    RouteConfig("b", MatchConfig(protocol=("http",), host=("*.example.com",)), name="web"),
    RouteConfig("b", MatchConfig(prefix=(b"\x00\x01",)), name="custom"),
    RouteConfig("a", MatchConfig(protocol=("silent",)), name="banner"),
    RouteConfig("b", name="fallback"),
)


@pytest.mark.parametrize(
    ("described", "route"),
    [
        (Described("ssh"), "ssh"),
        (Described(offered=("h2", "acme-tls/1"), sni="a.test"), "acme"),  # TLS: it offers ALPN
        (Described(host_name="www.example.com"), "web"),  # plain HTTP: it has a Host
        (Described("http", host_name="example.org"), "fallback"),
        (Described("silent"), "banner"),
        (Described(), "fallback"),  # nothing said: no protocol, no bytes
    ],
)
def test_a_described_client_is_routed_by_what_it_sends(described, route):
    assert explain(MUX, UPSTREAMS, None, first=described).route == route


def test_first_bytes_are_detected_as_a_listener_would_and_shown():
    result = explain(MUX, UPSTREAMS, None, first=FirstBytes(client_hello("a.test", ("acme-tls/1",)), final=True))
    assert (result.route, result.protocol, result.alpn, result.sni) == ("acme", "tls", ("acme-tls/1",), "a.test")
    assert explain(MUX, UPSTREAMS, None, first=FirstBytes(b"\x00\x01\x05", final=True)).route == "custom"
    text = render_text(explain(MUX, UPSTREAMS, None, first=FirstBytes(FIRST_BYTES["http"], final=True)))
    assert "  sends: protocol http, alpn (none), host www.example.com\n" in text
    assert (
        "  route web -> upstream b: matched: protocol: http is one of http; host: www.example.com matches *.example.com"
        in text
    )
    assert "  route custom -> upstream b: not reached: prefix: the bytes start with none of hex:0001" in text


def test_a_listener_on_the_first_bytes_notes_a_client_described_by_nothing():
    (note,) = explain(MUX, UPSTREAMS, None).notes
    assert note == "no --protocol or --first-bytes: routes on the protocol cannot match"


# -- a terminating listener: a route without protocol is a TLS route ---------------------------

HTTPS = listener(
    RouteConfig("a", MatchConfig(alpn=("h2",)), name="h2"),
    RouteConfig("b", name="http1"),
    RouteConfig("a", MatchConfig(protocol=("ssh",)), name="ssh"),
    tls=ListenerTlsConfig(certificate=None),  # type: ignore[arg-type]  # only its presence matters here
)


@pytest.mark.parametrize(
    ("first", "decision", "route"),
    [
        (client_hello("www.example.com", ("h2", "http/1.1")), "routed", "h2"),
        (client_hello("www.example.com", ("http/1.1",)), "routed", "http1"),
        (FIRST_BYTES["ssh"], "routed", "ssh"),  # named: taken as it came, after the catch-all
        (FIRST_BYTES["http"], "tls_error", None),  # named by no route: the handshake, never http1
        (b"\xffjunk", "tls_error", None),
        (b"", "tls_error", None),  # silent
    ],
)
def test_a_terminating_listener_routes_only_tls_to_a_route_without_protocol(first, decision, route):
    result = explain(HTTPS, UPSTREAMS, None, first=FirstBytes(first, final=True))
    assert (result.decision, result.route) == (decision, route)


def test_a_terminating_listener_explains_the_handshake_a_client_no_route_names_gets():
    text = render_text(explain(HTTPS, UPSTREAMS, None, first=FirstBytes(FIRST_BYTES["http"], final=True)))
    assert "  route http1 -> upstream b: no match: protocol: http matches none of tls\n" in text
    assert (
        "  note: this listener terminates TLS: a route without protocol takes TLS clients only"
        " (as if protocol: tls), and a client speaking what no route names gets the handshake\n"
    ) in text
    assert text.endswith(
        "decision: no route names what it speaks: the TLS handshake runs and fails"
        " (result=tls_error; timeout for a client that stays silent)"
    )
