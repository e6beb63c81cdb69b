"""Property tests of the loader: whatever a file holds, a table or located errors, never a crash.

Documents are generated from the real keys with values good and bad, YAML tags, anchors,
aliases and merge keys, nested at random; besides them, random text and random bytes.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.loader import ConfigError, LoadedConfig, load_config, parse_config

SOURCE = "p.yaml"
LOCATED = re.compile(rf"{re.escape(SOURCE)}:\d+:\d+: \S")

KEYS = [
    *("defaults", "upstreams", "listeners", "x-common"),
    *("connect_timeout", "idle_timeout", "max_connections", "buffer_size", "max_buffered", "shutdown_grace"),
    *("hexdump", "servers", "balance", "retries", "proxy_protocol", "health_check", "tls", "address", "weight"),
    *("backup", "interval", "timeout", "rise", "fall", "ca", "server_name", "verify", "cert", "key"),
    *("client_ca", "certificates", "name", "listen", "upstream", "routes", "allow", "deny"),
    *("accept_proxy_protocol", "trusted", "match", "sni", "source", "api", "<<", "unknown"),
    *("pcap", "snaplen", "dump_only", "dump_file", "file", "max_size", "keep"),
]
VALUES = [
    *("8080", "0", "127.0.0.1:9000", '"[::1]:0"', "unix:/tmp/x.sock", "nowhere", "99999", "-1", "1.5", "1e999"),
    *("5s", "250ms", "0s", "2m", "1MiB", "64KiB", "1 bushel", "true", "false", "yes", "null", "~", '""'),
    *("10.0.0.0/8", '"::ffff:10.0.0.0/104"', "::/0", "10.0.0.300", "round_robin", "v2", "v3", "api", "other"),
    *('"*.example.com"', "a.example.com", "regular.pem", "fifo.pem", "folder", "/dev/null", "missing.pem"),
    *("2026-01-01", "2026-13-01", "0x1F", "0b101", "1:30", ".nan", ".inf", "=", '"a\\0b"', "<<"),
    *("conn=1", "client=10.0.0.0/8", "clinet=1", "route=0", "server=db:5432", '"-"', "x.pcapng"),
]
TAGS = ["!foo", "!!int", "!!bool", "!!float", "!!str", "!!null", "!!timestamp", "!!binary", "!!set", "!!map"]
TAGS += ["!!seq", "!!merge", "!!python/object:os.system", "!<tag:example.com,2000:x>"]
ANCHORS = ["a0", "a1", "a2"]


def with_extras(node: st.SearchStrategy[str], *, anchored: bool = True) -> st.SearchStrategy[str]:
    """A node, sometimes tagged and (if `anchored`) sometimes anchored."""
    tag = st.one_of(st.just(""), st.just(""), st.sampled_from(TAGS).map(lambda tag: tag + " "))
    anchor = st.one_of(st.just(""), st.sampled_from(ANCHORS).map(lambda name: f"&{name} ")) if anchored else st.just("")
    return st.tuples(anchor, tag, node).map("".join)


scalars = st.one_of(
    st.sampled_from(VALUES),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=20).map(json.dumps),  # any text, as a double-quoted scalar
)
aliases = st.sampled_from(ANCHORS).map(lambda name: f"*{name}")


def merges_of(names: list[str]) -> st.SearchStrategy[str]:
    """The value of a merge key: one alias or a list of them."""
    alias = st.sampled_from(names).map(lambda name: f"*{name}")
    return alias | st.lists(alias, min_size=1, max_size=3).map(lambda items: f"[{', '.join(items)}]")


def flow_mapping(
    keys: list[str], values: st.SearchStrategy[str], merge_from: list[str] = ANCHORS
) -> st.SearchStrategy[str]:
    """A flow mapping of some of `keys` to values, now and then with a merge key."""
    entry = st.tuples(st.sampled_from(keys), values).map(lambda pair: f"{pair[0]}: {pair[1]}")
    if merge_from:
        entry |= merges_of(merge_from).map(lambda value: f"<<: {value}")
    return st.lists(entry, max_size=6).map(lambda items: f"{{{', '.join(items)}}}")


def flow_nodes(*, anchored: bool) -> st.SearchStrategy[str]:
    """Scalars, aliases, lists and mappings of the real keys, nested at random."""
    return st.recursive(
        with_extras(scalars, anchored=anchored) | aliases,
        lambda children: with_extras(
            st.lists(children, max_size=4).map(lambda items: f"[{', '.join(items)}]") | flow_mapping(KEYS, children),
            anchored=anchored,
        ),
        max_leaves=25,
    )


LISTENER_KEYS = ["name", "listen", "upstream", "allow", "deny", "accept_proxy_protocol", "idle_timeout", "hexdump"]
LISTENER_KEYS += ["connect_timeout", "buffer_size", "max_connections", "tls", "unknown", "pcap", "snaplen", "dump_only"]
TLS_KEYS = ["cert", "key", "ca", "client_ca", "server_name", "verify", "certificates", "trusted"]
UPSTREAM_KEYS = ["balance", "connect_timeout", "retries", "proxy_protocol", "health_check", "tls", "servers"]
DEFAULT_KEYS = ["connect_timeout", "idle_timeout", "max_buffered", "shutdown_grace", "hexdump", "buffer_size"]
DEFAULT_KEYS += ["pcap", "snaplen", "dump_only"]


def listeners(values: st.SearchStrategy[str], merge_from: list[str]) -> st.SearchStrategy[str]:
    """A listener mapping: an address and a target, then anything else of a listener's."""
    match = flow_mapping(["sni", "source"], values, merge_from)
    pcap = flow_mapping(["file", "max_size", "keep"], values, merge_from)
    route = flow_mapping(
        ["match", "upstream", "name", "hexdump", "pcap", "dump_only"], values | match | pcap, merge_from
    )
    target = st.sampled_from(["api", "127.0.0.1:9000", "9000", "other"]).map(lambda name: f"upstream: {name}")
    target |= st.lists(route, max_size=3).map(lambda items: f"routes: [{', '.join(items)}]")
    return st.tuples(
        st.sampled_from(["8080", "0", '"127.0.0.1:0"', "8081", '"[::1]:8082"']),
        target,
        flow_mapping(LISTENER_KEYS, values, merge_from),
    ).map(lambda parts: f"{{listen: {parts[0]}, {parts[1]}, <<: {parts[2]}}}")


# Where the schema expects a value: mostly a plain scalar, else anything at all (never an anchor:
# a document defines each anchor once, at its top, each using only those before it).
values = st.one_of(scalars, scalars, with_extras(scalars, anchored=False), flow_nodes(anchored=False))
anchored = st.tuples(
    flow_mapping(LISTENER_KEYS + DEFAULT_KEYS, scalars, []),
    st.one_of(flow_mapping(LISTENER_KEYS + TLS_KEYS, scalars, ["a0"]), listeners(scalars, ["a0"])),
    st.one_of(scalars, listeners(scalars, ["a0", "a1"]), flow_mapping(KEYS, scalars, ["a0", "a1"])),
).map(lambda parts: f"x-a0: &a0 {parts[0]}\nx-a1: &a1 {parts[1]}\nx-a2: &a2 {parts[2]}\n")
upstream = st.tuples(
    st.one_of(st.just("[9001]"), st.just('["127.0.0.1:9002", {address: 9003, weight: 2}]'), values),
    flow_mapping(UPSTREAM_KEYS, values),
).map(lambda parts: f"{{servers: {parts[0]}, <<: {parts[1]}}}")
schema_documents = st.tuples(
    anchored,
    flow_mapping(DEFAULT_KEYS, values),
    st.one_of(upstream, upstream, values),
    st.lists(st.one_of(listeners(values, ANCHORS), listeners(values, ANCHORS), values), min_size=1, max_size=4),
    st.booleans(),
).map(
    lambda parts: (
        parts[0]
        + f"defaults: {parts[1]}\n"
        + f"upstreams: {{api: {parts[2]}, other: {{servers: [9001]}}}}\n"
        + (
            "listeners:\n" + "".join(f"  - {item}\n" for item in parts[3])
            if parts[4]
            else f"listeners: [{', '.join(parts[3])}]\n"
        )
    )
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Where relative paths point: a regular file, a FIFO, a folder."""
    path = tmp_path_factory.mktemp("files")
    (path / "regular.pem").write_text("not a certificate\n")
    os.mkfifo(path / "fifo.pem")
    (path / "folder").mkdir()
    return path


def assert_table_or_located_errors(text: str, folder) -> None:
    try:
        loaded = parse_config(text, SOURCE, folder)
    except ConfigError as exc:
        assert exc.messages
        for message in exc.messages:
            assert LOCATED.match(message), message
            assert "\n" not in message, message
    else:
        assert isinstance(loaded, LoadedConfig)
        for warning in loaded.warnings:
            assert LOCATED.match(warning), warning


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(text=schema_documents)
def test_documents_of_the_real_keys(folder, text):
    assert_table_or_located_errors(text, folder)


@PROPERTY
@given(text=flow_nodes(anchored=True).map(lambda node: f"listeners: {node}\n"))
def test_any_nesting_of_tags_anchors_aliases_and_merges(folder, text):
    assert_table_or_located_errors(text, folder)


@PROPERTY
@given(text=st.text(alphabet=st.sampled_from(list("[]{}:,-&*!<>|'\"#?%@`\n\t ab01")) | st.characters(), max_size=200))
def test_random_text(folder, text):
    assert_table_or_located_errors(text, folder)


@PROPERTY
@given(data=st.binary(max_size=200))
def test_random_bytes_from_a_file(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / SOURCE
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        for message in exc.messages:
            assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", message), message
