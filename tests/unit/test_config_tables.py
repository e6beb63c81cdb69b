"""The loader's key tables against the schema's dataclasses, and the table it builds staying frozen."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

import proxy.config.schema as schema_module
from proxy.config.loader import DEFAULTS, LISTENER, SECTIONS, UPSTREAM, parse_config
from proxy.config.schema import Config, DumpCondition, DumpOverrides, FaultConfig, SourceConfig, forward_config
from proxy.config.units import Address

# The fields no key of the same name fills: the reader builds them from other keys.
FIELDS_READ_BY_HAND = {
    "listener": {"listen", "routes", "proxy_trusted"},  # listen:, upstream:/routes:, accept_proxy_protocol:
    "listener tls": {"certificate", "others"},  # cert: + key:, certificates:
    "route": {"upstream"},
    "pcap": {"path"},  # file:
    "match": set(),
    "upstream": {"name", "servers"},  # its key under upstreams:, servers:
    "server": set(),
    "health_check": set(),
    "keepalive": set(),
    "upstream tls": {"client_cert"},  # cert: + key:
    "admin": set(),
    "discover": set(),
    "resolvers": set(),
}


def field_names(schema: type) -> set[str]:
    return {field.name for field in dataclasses.fields(schema)}


@pytest.mark.parametrize("name", SECTIONS)
def test_each_key_of_a_table_is_a_field_and_each_field_has_a_key(name):
    section, schema = SECTIONS[name]
    assert set(section.parsers) - field_names(schema) == set(), "keys with no field"
    assert field_names(schema) - set(section.parsers) == FIELDS_READ_BY_HAND[name], "fields with no key"
    assert not set(section.by_hand) & set(section.parsers)


def test_every_dataclass_of_the_schema_has_a_table():
    dataclasses_of_schema = {
        value
        for value in vars(schema_module).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == schema_module.__name__
    }
    not_mappings = {Config, DumpCondition, DumpOverrides}  # the file itself, a filter's text, the dump flags
    not_mappings.add(FaultConfig)  # its keys depend on its type: proxy/config/faults.py
    not_mappings.add(SourceConfig)  # one scalar, 10.0.0.5:20000-29999: proxy/config/sockets.py
    assert {schema for _, schema in SECTIONS.values()} | not_mappings == dataclasses_of_schema


def test_defaults_are_fields_read_as_where_they_apply():
    for key, parse in DEFAULTS.parsers.items():
        where = [section.parsers[key] for section in (LISTENER, UPSTREAM) if key in section.parsers]
        assert where or key in field_names(Config), key
        assert all(parser is parse for parser in where), key


def test_the_upstreams_of_a_table_are_read_only():
    text = """\
        upstreams:
          api: {servers: [127.0.0.1:9001]}
        listeners:
          - {listen: 8080, upstream: api}
          - {listen: 8081, upstream: 127.0.0.1:9000}
          - {listen: 8082, upstream: 127.0.0.1:9000}
        """
    config = parse_config(textwrap.dedent(text), "t.yaml").config
    assert list(config.upstreams) == ["api", "127.0.0.1:9000"]
    assert config.upstreams["127.0.0.1:9000"].servers[0].address == Address("127.0.0.1", 9000)
    with pytest.raises(TypeError):
        config.upstreams["other"] = config.upstreams["api"]  # type: ignore[index]


def test_a_table_keeps_no_link_to_the_dict_it_was_given():
    config = forward_config(Address("127.0.0.1", 0), Address("127.0.0.1", 9000))
    given = dict(config.upstreams)
    copy = dataclasses.replace(config, upstreams=given)
    given.clear()
    assert list(copy.upstreams) == ["127.0.0.1:9000"]
    assert copy == config
