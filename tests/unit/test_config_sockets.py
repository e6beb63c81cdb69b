"""The socket options of the file and of `forward`'s flags: read into the schema, or refused with
the place of the mistake."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.loader import ConfigError, parse_config
from proxy.config.schema import KeepaliveConfig, SourceConfig
from proxy.config.sockets import parse_keepalive_flag, parse_source, somaxconn


def load(text: str):
    return parse_config(textwrap.dedent(text), "t.yaml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.messages


def test_every_option_is_read_into_the_schema():
    config = load(
        """
        listeners:
          - listen: 127.0.0.1:2222
            backlog: 512
            keepalive: {idle: 1m, interval: 10s, count: 6}
            user_timeout: 1500ms
            upstream: app
        upstreams:
          app:
            servers: [10.0.0.7:22, {address: 10.0.0.8:22, source: "10.0.0.6:20000-29999"}]
            source: 10.0.0.5
            keepalive: true
            user_timeout: 30s
        """
    ).config
    (listener,) = config.listeners
    assert (listener.backlog, listener.keepalive, listener.user_timeout) == (512, KeepaliveConfig(60, 10, 6), 1.5)
    app = config.upstreams["app"]
    assert (app.keepalive, app.user_timeout, app.source) == (KeepaliveConfig(), 30.0, SourceConfig("10.0.0.5"))
    assert [server.source for server in app.servers] == [None, SourceConfig("10.0.0.6", (20000, 29999))]


def test_keepalive_false_is_none_and_nothing_given_is_none():
    config = load(
        """
        listeners:
          - {listen: 127.0.0.1:2222, keepalive: false, upstream: app}
        upstreams:
          app: {servers: [10.0.0.7:22]}
        """
    ).config
    assert config.listeners[0].keepalive is None
    assert config.listeners[0].backlog is None
    assert (config.upstreams["app"].keepalive, config.upstreams["app"].source) == (None, None)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("keepalive: {idel: 3s}", "t.yaml:6:17: unknown key 'idel' in keepalive (did you mean 'idle'?)"),
        ("keepalive: {idle: 0.5s}", "t.yaml:6:23: idle: must be whole seconds from 1s to 32767s, got '0.5s'"),
        ("keepalive: {count: 200}", "t.yaml:6:24: count: must be a whole number from 1 to 127, got 200"),
        (
            "keepalive: yes please",
            "t.yaml:6:16: keepalive: must be true, false or {idle: 60s, interval: 10s, count: 6}",
        ),
        ("user_timeout: 0", "t.yaml:6:19: user_timeout: must be above 0, got 0"),
        ("user_timeout: 1.5ms", "t.yaml:6:19: user_timeout: must be whole milliseconds"),
        (
            "source: example.com",
            "t.yaml:6:13: source: 'example.com' is not an IP address (a source is bound, never resolved)",
        ),
        ("source: 10.0.0.5:9-2", "t.yaml:6:13: source: ports must be FIRST-LAST between 1 and 65535, got '9-2'"),
        ("sorce: 10.0.0.5", "t.yaml:6:5: unknown key 'sorce' in upstream 'app' (did you mean 'source'?)"),
    ],
)
def test_a_bad_upstream_option_is_located(option, expected):
    messages = errors_of(
        f"""
        listeners: [{{listen: 127.0.0.1:2222, upstream: app}}]
        upstreams:
          app:
            servers: [10.0.0.7:22]
            {option}
        """
    )
    assert len(messages) == 1 and messages[0].startswith(expected), messages


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("backlog: 0", "t.yaml:4:14: backlog: value must be at least 1, got 0"),
        ("backlog: lots", "t.yaml:4:14: backlog: must be a whole number, got 'lots'"),
        ("backlogg: 10", "t.yaml:4:5: unknown key 'backlogg' in listener (did you mean 'backlog'?)"),
        ("keepalive: {interval: 0s}", "t.yaml:4:27: interval: must be above 0, got '0s'"),
    ],
)
def test_a_bad_listener_option_is_located(option, expected):
    messages = errors_of(
        f"""
        listeners:
          - listen: 127.0.0.1:2222
            {option}
            upstream: 10.0.0.7:22
        """
    )
    assert len(messages) == 1 and messages[0].startswith(expected), messages


def test_a_source_of_the_other_family_or_on_a_unix_upstream_is_refused():
    messages = errors_of(
        """
        listeners:
          - {listen: unix:/tmp/t.sock, keepalive: true, user_timeout: 1s, upstream: app}
        upstreams:
          app:
            servers: ["[2001:db8::7]:22", {address: 10.0.0.8:22, source: "::1"}]
            source: 10.0.0.5
          local:
            servers: [unix:/tmp/app.sock]
            source: 10.0.0.5
            keepalive: true
        """
    )
    assert messages == [
        "t.yaml:3:32: listener: keepalive applies to TCP only, and unix:/tmp/t.sock is a UNIX socket",
        "t.yaml:3:49: listener: user_timeout applies to TCP only, and unix:/tmp/t.sock is a UNIX socket",
        "t.yaml:6:66: source ::1 is IPv6 and server 10.0.0.8:22 is not: no connect from there",
        "t.yaml:7:13: source 10.0.0.5 is IPv4 and server [2001:db8::7]:22 is not: no connect from there",
        "t.yaml:10:5: upstream 'local': source applies to TCP only, and unix:/tmp/app.sock is a UNIX socket",
        "t.yaml:11:5: upstream 'local': keepalive applies to TCP only, and unix:/tmp/app.sock is a UNIX socket",
    ]


def test_a_backlog_above_somaxconn_is_a_warning_not_an_error():
    cap = somaxconn()
    loaded = load(
        f"""
        listeners:
          - {{listen: 127.0.0.1:2222, backlog: {cap + 1}, upstream: 10.0.0.7:22}}
        """
    )
    assert loaded.config.listeners[0].backlog == cap + 1
    assert list(loaded.warnings) == [
        f"t.yaml:3:39: warning: backlog: {cap + 1} is above net.core.somaxconn ({cap}): the kernel takes {cap}"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on", KeepaliveConfig()),
        ("60s:10s:6", KeepaliveConfig(60, 10, 6)),
        ("30m::10", KeepaliveConfig(1800, None, 10)),
        ("::", KeepaliveConfig()),
    ],
)
def test_the_keepalive_flag_reads_as_nginx_writes_it(text, expected):
    assert parse_keepalive_flag(text) == expected


@pytest.mark.parametrize("text", ["off", "1:2", "1s:2s:3:4", "0:1:1", "1:1:0"])
def test_a_bad_keepalive_flag_is_refused(text):
    with pytest.raises(ValueError):
        parse_keepalive_flag(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", SourceConfig("10.0.0.5")),
        ("10.0.0.5:20000-29999", SourceConfig("10.0.0.5", (20000, 29999))),
        ("10.0.0.5:20000", SourceConfig("10.0.0.5", (20000, 20000))),
        ("2001:DB8::5", SourceConfig("2001:db8::5")),
        ("[2001:db8::5]:20000-29999", SourceConfig("2001:db8::5", (20000, 29999))),
    ],
)
def test_a_source_reads_with_or_without_ports(text, expected):
    assert parse_source(text) == expected
