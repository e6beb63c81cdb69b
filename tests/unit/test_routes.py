"""Allow/deny and the ordered route table, without sockets."""

from __future__ import annotations

import ipaddress

from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.config.certificates import name_matches
from proxy.config.schema import ListenerConfig, MatchConfig, RouteConfig
from proxy.config.units import Address, canonical_ip
from proxy.policy.routes import WAIT, AccessPolicy, RouteTable
from proxy.protocol.detect import FirstBytes
from tests.support import FIRST_BYTES, client_hello


def nets(*texts: str) -> tuple:
    return tuple(ipaddress.ip_network(text) for text in texts)


def ip(text: str):
    return ipaddress.ip_address(text)


def test_first_matching_route_wins_and_default_catches_the_rest():
    table = RouteTable(
        (
            RouteConfig("inside", MatchConfig(source=nets("10.1.0.0/16")), name="inside"),
            RouteConfig("v6", MatchConfig(source=nets("2001:db8::/32"))),
            RouteConfig("wide", MatchConfig(source=nets("10.0.0.0/8"))),
            RouteConfig("default"),
        )
    )
    assert table.select(ip("10.1.2.3")) == ("inside", table.routes[0])
    assert table.select(ip("10.2.0.1"))[1].upstream == "wide"
    assert table.select(ip("10.2.0.1"))[0] == 2
    assert table.select(ip("2001:db8::1"))[1].upstream == "v6"
    assert table.select(ip("192.0.2.1"))[1].upstream == "default"


def test_no_route_when_nothing_matches():
    table = RouteTable((RouteConfig("a", MatchConfig(source=nets("10.0.0.0/8"))),))
    assert table.select(ip("127.0.0.1")) is None


def test_sni_routes_need_a_name():
    table = RouteTable(
        (
            RouteConfig("api", MatchConfig(sni=("api.example.com",))),
            RouteConfig("rest", MatchConfig(sni=("*.example.com",))),
        )
    )
    assert table.needs_server_name
    assert table.select(ip("127.0.0.1"), "API.example.com")[1].upstream == "api"
    assert table.select(ip("127.0.0.1"), "www.example.com")[1].upstream == "rest"
    assert table.select(ip("127.0.0.1"), None) is None
    assert not RouteTable((RouteConfig("a"),)).needs_server_name


def test_sni_wildcards_cover_exactly_one_label():
    assert name_matches("*.example.com", "a.example.com")
    assert name_matches("*.example.com", "A.Example.COM.")
    assert not name_matches("*.example.com", "example.com")
    assert not name_matches("*.example.com", "a.b.example.com")
    assert name_matches("example.com", "EXAMPLE.com")
    assert not name_matches("example.com", "www.example.com")


def test_deny_is_checked_before_allow():
    policy = AccessPolicy(allow=nets("10.0.0.0/8", "127.0.0.1/32"), deny=nets("10.9.0.0/16"))
    assert policy.permits(ip("10.1.1.1"))
    assert policy.permits(ip("127.0.0.1"))
    assert not policy.permits(ip("10.9.1.1"))
    assert not policy.permits(ip("127.0.0.2"))
    assert AccessPolicy(allow=None, deny=()).permits(ip("192.0.2.1"))
    assert not AccessPolicy(allow=None, deny=nets("::/0")).permits(ip("::1"))


def listener(**rules) -> ListenerConfig:
    return ListenerConfig(name=None, listen=Address("127.0.0.1", 0), routes=(), **rules)


def test_ipv4_mapped_networks_match_ipv4_clients():
    """Rules stored as IPv4-mapped IPv6 blocks cover the IPv4 clients they name."""
    client = canonical_ip("::ffff:10.0.0.5")
    assert client == ip("10.0.0.5")
    assert not AccessPolicy.of(listener(deny=nets("::ffff:10.0.0.0/104"))).permits(client)
    assert AccessPolicy.of(listener(allow=nets("::ffff:10.0.0.0/104"))).permits(client)
    assert not AccessPolicy.of(listener(allow=nets("::ffff:10.0.0.0/104"))).permits(ip("11.0.0.1"))
    table = RouteTable((RouteConfig("mapped", MatchConfig(source=nets("::ffff:10.0.0.5/128"))), RouteConfig("other")))
    assert table.select(client)[1].upstream == "mapped"
    assert table.select(ip("10.0.0.6"))[1].upstream == "other"


@given(st.ip_addresses(), st.integers(min_value=1, max_value=32))
def test_a_source_route_matches_exactly_its_network(address, prefix):
    assume(address.version == 4 or address.ipv4_mapped is None)  # clients are canonical: never mapped
    if address.version == 6:
        prefix *= 4
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    table = RouteTable((RouteConfig("in", MatchConfig(source=(network,))), RouteConfig("out")))
    assert table.select(address)[1].upstream == "in"
    if int(network.broadcast_address) + 1 < 2**network.max_prefixlen:
        assert table.select(network.broadcast_address + 1)[1].upstream == "out"
    if int(network.network_address) > 0:
        assert table.select(network.network_address - 1)[1].upstream == "out"


# -- routes on the client's first bytes ----------------------------------------------------

MUX = RouteTable(
    (
        RouteConfig("ssh", MatchConfig(protocol=("ssh",))),
        RouteConfig("acme", MatchConfig(protocol=("tls",), alpn=("acme-tls/1",))),
        RouteConfig("web", MatchConfig(protocol=("tls",), sni=("*.example.com",), alpn=("h2", "http/1.1"))),
        RouteConfig("api", MatchConfig(protocol=("http",), host=("api.example.com",))),
        RouteConfig("custom", MatchConfig(prefix=(b"\x00\x01",))),
        RouteConfig("banner", MatchConfig(protocol=("silent",))),
        RouteConfig("fallback"),
    )
)


def decided(data: bytes, final: bool = True):
    selected = MUX.decide(ip("192.0.2.1"), FirstBytes(data, final))
    return selected if selected is WAIT or selected is None else selected[1].upstream


def test_the_first_bytes_pick_the_route_that_speaks_them():
    assert decided(FIRST_BYTES["ssh"]) == "ssh"
    assert decided(client_hello("acme.test", ("acme-tls/1",))) == "acme"
    assert decided(client_hello("www.example.com", ("h2",))) == "web"
    assert decided(client_hello("www.example.com")) == "fallback"  # no ALPN offered
    assert decided(client_hello("other.test", ("h2",))) == "fallback"
    assert decided(b"GET / HTTP/1.1\r\nHost: API.example.com:80\r\n\r\n") == "api"
    assert decided(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n") == "fallback"
    assert decided(b"\x00\x01\x02") == "custom"
    assert decided(b"") == "banner"
    assert decided(FIRST_BYTES["socks5"]) == "fallback"


def test_the_table_waits_only_while_an_earlier_route_could_still_match():
    assert decided(b"", final=False) is WAIT  # ssh could still come
    assert decided(b"SS", final=False) is WAIT
    assert decided(b"SSH-", final=False) == "ssh"
    assert decided(b"GET / HTTP/1.1\r\n", final=False) is WAIT  # the Host may follow
    assert decided(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", final=False) == "fallback"
    assert decided(b"\x00", final=False) is WAIT  # a start of the prefix
    assert decided(b"\x05\x01", final=False) == "fallback"  # nothing before the default can match
    assert decided(FIRST_BYTES["tls"][:100], final=False) is WAIT
    assert decided(b"SS", final=True) == "fallback"


def test_without_a_default_bytes_no_route_recognises_get_none():
    table = RouteTable((RouteConfig("ssh", MatchConfig(protocol=("ssh",))),))
    assert table.decide(ip("192.0.2.1"), FirstBytes(b"GET / HTTP/1.1\r\n", final=False)) is None
    assert table.reads_first_bytes and not RouteTable((RouteConfig("a"),)).reads_first_bytes


def test_source_is_checked_before_any_byte_is_asked_for():
    table = RouteTable(
        (RouteConfig("inside", MatchConfig(source=nets("10.0.0.0/8"), protocol=("ssh",))), RouteConfig("other"))
    )
    assert table.decide(ip("192.0.2.1"), FirstBytes(b"", final=False))[1].upstream == "other"
    assert table.decide(ip("10.0.0.1"), FirstBytes(b"", final=False)) is WAIT
