"""The keys of pools that follow DNS and of `resolvers:`: what they read into, and each mistake
as one FILE:LINE:COLUMN line."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.loader import ConfigError, parse_config
from proxy.config.schema import DiscoverConfig, ResolversConfig, ServerConfig
from proxy.config.units import Address

TABLE = """\
resolvers:
  nameservers: [127.0.0.1:8600, "::1", 10.0.0.1]
  timeout: 250ms
  hold_valid: 5s
  hold_obsolete: 1m
upstreams:
  app:
    servers:
      - {address: app.service.consul:8080, resolve: all, weight: 2}
  db:
    discover: {srv: _DB._tcp.service.consul.}
    max_servers: 64
listeners:
  - {listen: 127.0.0.1:7000, upstream: app}
  - {listen: 127.0.0.1:7001, upstream: db}
"""


def test_the_keys_read_into_the_schema():
    config = parse_config(TABLE, "t.yaml").config
    assert config.resolvers == ResolversConfig(
        nameservers=(Address("127.0.0.1", 8600), Address("::1", 53), Address("10.0.0.1", 53)),
        timeout=0.25,
        hold_valid=5.0,
        hold_obsolete=60.0,
    )
    assert config.upstreams["app"].servers == (
        ServerConfig(Address("app.service.consul", 8080), weight=2, resolve="all"),
    )
    db = config.upstreams["db"]
    assert db.servers == () and db.discover == DiscoverConfig("_db._tcp.service.consul") and db.max_servers == 64
    assert db.from_dns and config.upstreams["app"].from_dns


def test_without_resolvers_the_system_nameservers_are_asked():
    text = "upstreams: {app: {discover: {srv: a.test}}}\nlisteners: [{listen: 127.0.0.1:7000, upstream: app}]\n"
    assert parse_config(text, "t.yaml").config.resolvers.nameservers is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("resolvers: {nameservers: [dns.example]}", "t.yaml:1:27: nameservers: 'dns.example' is no nameserver address"),
        ("resolvers: {nameservers: []}", "t.yaml:1:26: nameservers is empty: leave it out to use /etc/resolv.conf's"),
        ("resolvers: {timeout: 0}", "t.yaml:1:22: timeout: must be above 0, got 0"),
        ("resolvers: {hold: 1s}", "t.yaml:1:13: unknown key 'hold' in resolvers"),
        (
            "upstreams: {app: {servers: [{address: '10.0.0.1:80', resolve: all}]}}",
            "t.yaml:1:63: resolve: all needs a server named by a DNS name, not 10.0.0.1:80",
        ),
        (
            "upstreams: {app: {servers: [{address: 'a.test:80', resolve: any}]}}",
            "t.yaml:1:61: resolve: 'any' is not one of all",
        ),
        ("upstreams: {app: {discover: {srv: '_a..test'}}}", "t.yaml:1:35: srv: '_a..test' is not a DNS name"),
        ("upstreams: {app: {discover: {}}}", "t.yaml:1:29: discover needs 'srv:', the SRV name to follow"),
        (
            "upstreams: {app: {discover: {srv: a.test}, max_servers: 0}}",
            "t.yaml:1:57: max_servers: value must be at least 1, got 0",
        ),
        ("upstreams: {app: {balance: first}}", "t.yaml:1:18: upstream 'app' has no 'servers:' list (nor 'discover:')"),
    ],
)
def test_each_mistake_is_one_line_at_its_place(text, error):
    listeners = "\nlisteners: [{listen: 127.0.0.1:7000, upstream: app}]\n"
    upstreams = "" if text.startswith("upstreams") else "\nupstreams: {app: {servers: ['a.test:80']}}"
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text + upstreams + listeners), "t.yaml")
    assert any(message.startswith(error) for message in caught.value.messages), caught.value.messages
