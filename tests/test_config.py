"""The YAML route table loader: every kind of mistake, located to the line and column."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
import trustme

from proxy.config import ConfigError, load_config, parse_config
from proxy.units import Address


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "t.yaml")
    return caught.value.messages


def load(text: str):
    return parse_config(textwrap.dedent(text), "t.yaml")


def test_smallest_file():
    config = load("""\
        listeners:
          - listen: 127.0.0.1:8080
            upstream: 127.0.0.1:9000
        """).config
    (listener,) = config.listeners
    assert listener.listen == Address("127.0.0.1", 8080)
    assert listener.name is None
    (route,) = listener.routes
    assert config.upstreams[route.upstream].servers[0].address == Address("127.0.0.1", 9000)


def test_defaults_apply_unless_overridden():
    config = load("""\
        defaults:
          connect_timeout: 250ms
          idle_timeout: 2m
          max_connections: 7
          buffer_size: 64KiB
          shutdown_grace: 1s
          hexdump: true
        upstreams:
          a: {servers: [9001]}
          b: {servers: [9002], connect_timeout: 3s}
        listeners:
          - listen: 8080
            upstream: a
          - listen: 8081
            upstream: b
            idle_timeout: 5s
            hexdump: false
        """).config
    first, second = config.listeners
    assert (first.idle_timeout, first.max_connections, first.buffer_size, first.hexdump) == (120, 7, 65536, True)
    assert first.connect_timeout == 0.25
    assert (second.idle_timeout, second.hexdump) == (5, False)
    assert config.upstreams["a"].connect_timeout == 0.25
    assert config.upstreams["b"].connect_timeout == 3
    assert config.shutdown_grace == 1


def test_full_upstream_shape():
    config = load("""\
        upstreams:
          api:
            servers:
              - 127.0.0.1:9001
              - {address: 127.0.0.1:9002, weight: 2}
              - {address: "[::1]:9003", backup: true}
            balance: least_conn
            retries: 1
            proxy_protocol: v1
            health_check: {interval: 2s, timeout: 500ms, rise: 1, fall: 2}
        listeners:
          - listen: 8080
            upstream: api
        """).config
    api = config.upstreams["api"]
    assert [(s.address, s.weight, s.backup) for s in api.servers] == [
        (Address("127.0.0.1", 9001), 1, False),
        (Address("127.0.0.1", 9002), 2, False),
        (Address("::1", 9003), 1, True),
    ]
    assert (api.balance, api.retries, api.proxy_protocol) == ("least_conn", 1, "v1")
    assert (api.health_check.interval, api.health_check.timeout) == (2, 0.5)


def test_routes_with_source_match_and_names():
    config = load("""\
        upstreams:
          a: {servers: [9001]}
        listeners:
          - name: edge
            listen: "[::1]:0"
            allow: [10.0.0.0/8, 127.0.0.1]
            deny: 10.9.0.0/16
            routes:
              - name: inside
                match: {source: [10.1.0.0/16, "::1"]}
                upstream: a
              - upstream: 127.0.0.1:9100
        """).config
    (listener,) = config.listeners
    assert listener.name == "edge"
    assert listener.allow == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))
    assert listener.deny == (ipaddress.ip_network("10.9.0.0/16"),)
    first, second = listener.routes
    assert first.name == "inside"
    assert first.match.source == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("::1/128"))
    assert second.upstream == "127.0.0.1:9100"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            listeners:
              - listen: 8080
                upstrem: 9000
            """,
            "t.yaml:3:5: unknown key 'upstrem' in listener (did you mean 'upstream'?)",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                idle_timeout: 5 fortnights
            """,
            "t.yaml:4:19: idle_timeout: bad duration '5 fortnights': use seconds or a unit, e.g. 250ms, 5s, 2m, 1h",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                buffer_size: 1 bushel
            """,
            "t.yaml:4:18: buffer_size: bad size '1 bushel': unknown unit 'bushel' (use KiB, MiB, GiB, KB, MB, GB)",
        ),
        (
            """\
            listeners:
              - listen: 127.0.0.1:99999
                upstream: 9000
            """,
            "t.yaml:2:13: listen: bad address '127.0.0.1:99999': port 99999 is out of range 0-65535",
        ),
        (
            """\
            upstreams:
              api: {servers: [9001]}
            listeners:
              - listen: 8080
                routes:
                  - upstream: ap
            """,
            "t.yaml:6:19: upstream 'ap' is not defined (did you mean 'api'?)",
        ),
        (
            """\
            upstreams:
              api: {servers: []}
            listeners:
              - listen: 8080
                upstream: api
            """,
            "t.yaml:2:18: upstream 'api' has an empty server list",
        ),
        (
            """\
            upstreams:
              api: {servers: [9001], balance: round_robbin}
            listeners:
              - listen: 8080
                upstream: api
            """,
            "t.yaml:2:35: balance: 'round_robbin' is not one of round_robin, least_conn, random, first, "
            "source_hash (did you mean 'round_robin'?)",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                max_connections: "many"
            """,
            "t.yaml:4:22: max_connections: must be a whole number, got 'many'",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                hexdump: 1
            """,
            "t.yaml:4:14: hexdump: must be true or false, got 1",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                allow: [10.0.0.300/8]
            """,
            "t.yaml:4:13: allow: '10.0.0.300/8' is not an IP address or CIDR block",
        ),
        (
            """\
            listeners:
              - listen: 8080
            """,
            "t.yaml:2:5: listener needs 'upstream:' or 'routes:'",
        ),
        (
            """\
            listeners:
              listen: 8080
            """,
            "t.yaml:2:3: listeners must be a list, got a mapping",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
              - listen: 8080
                upstream: 9001
            """,
            "t.yaml:4:5: listener name '127.0.0.1:8080' is used twice (first at t.yaml:2:5)",
        ),
        (
            """\
            listeners:
              - {name: a, listen: 8080, upstream: 9000}
              - {name: a, listen: 8081, upstream: 9000}
            """,
            "t.yaml:3:5: listener name 'a' is used twice (first at t.yaml:2:5)",
        ),
        (
            """\
            listeners:
              - {name: a, listen: 8080, upstream: 9000}
              - {name: b, listen: "127.0.0.1:8080", upstream: 9000}
            """,
            "t.yaml:3:5: two listeners on 127.0.0.1:8080 (first at t.yaml:2:5)",
        ),
        (
            """\
            listeners:
              - {listen: "127.0.0.1:0", upstream: 9000}
              - {listen: "127.0.0.1:0", upstream: 9001}
            """,
            "t.yaml:3:5: two listeners on 127.0.0.1:0 without a 'name:': give listeners on port 0 distinct names "
            "(first at t.yaml:2:5)",
        ),
        (
            """\
            listeners: []
            """,
            "t.yaml:1:12: listeners is empty: nothing would be served",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
               bad: indent
            """,
            "t.yaml:4:4: YAML syntax error: expected <block end>, but found '<block mapping start>'",
        ),
        (
            "",
            "t.yaml:1:1: the file is empty; it needs at least 'listeners:'",
        ),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_each_mistake_is_located(text, expected):
    assert expected in errors_of(text)


@pytest.mark.parametrize(
    ("first", "later", "expected"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080", "0.0.0.0:8080 listens on every IPv4 address, 127.0.0.1:8080 included"),
        ("127.0.0.1:8080", "0.0.0.0:8080", "0.0.0.0:8080 listens on every IPv4 address, 127.0.0.1:8080 included"),
        ("[::]:8080", "127.0.0.1:8080", "[::]:8080 listens on every IPv6 and IPv4 address, 127.0.0.1:8080 included"),
        ("[::1]:8080", "[::]:8080", "[::]:8080 listens on every IPv6 and IPv4 address, [::1]:8080 included"),
        ("0.0.0.0:8080", "[::]:8080", "[::]:8080 listens on every IPv6 and IPv4 address, 0.0.0.0:8080 included"),
        ("0.0.0.0:8080", "0.0.0.0:8080", "two listeners on 0.0.0.0:8080"),
    ],
)
def test_a_wildcard_listener_clashes_with_any_other_on_its_port(first, later, expected):
    messages = errors_of(f"""\
        listeners:
          - {{name: a, listen: "{first}", upstream: 9000}}
          - {{name: b, listen: "{later}", upstream: 9000}}
        """)
    if expected.startswith("two"):
        assert messages == [f"t.yaml:3:5: {expected} (first at t.yaml:2:5)"]
    else:
        assert messages == [f"t.yaml:3:5: two listeners on port 8080: {expected} (first at t.yaml:2:5)"]


@pytest.mark.parametrize(
    ("first", "later"),
    [
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("0.0.0.0:8080", "localhost:8080"),
        ("[::]:8080", "localhost:8080"),
        ("0.0.0.0:8080", "0.0.0.0:8081"),
        ("0.0.0.0:0", "127.0.0.1:0"),
    ],
)
def test_listeners_that_do_not_clash(first, later):
    config = load(f"""\
        listeners:
          - {{name: a, listen: "{first}", upstream: 9000}}
          - {{name: b, listen: "{later}", upstream: 9000}}
        """).config
    assert len(config.listeners) == 2


def test_every_bad_health_check_value_is_reported():
    messages = errors_of("""\
        upstreams:
          api:
            servers: [9001]
            health_check: {interval: x, timeout: y, rise: 0}
        listeners:
          - {listen: 8080, upstream: api}
        """)
    assert messages == [
        "t.yaml:4:30: interval: bad duration 'x': use seconds or a unit, e.g. 250ms, 5s, 2m, 1h",
        "t.yaml:4:42: timeout: bad duration 'y': use seconds or a unit, e.g. 250ms, 5s, 2m, 1h",
        "t.yaml:4:51: rise: value must be at least 1, got 0",
    ]


def test_all_errors_are_reported_in_file_order():
    messages = errors_of("""\
        defaults:
          conect_timeout: 5s
        upstreams:
          api:
            servers: [127.0.0.1:0]
        listeners:
          - listen: nowhere
            upstream: ap
        """)
    assert messages == [
        "t.yaml:2:3: unknown key 'conect_timeout' in defaults (did you mean 'connect_timeout'?)",
        "t.yaml:5:15: server: bad address '127.0.0.1:0': port 0 is only meaningful for a listener",
        "t.yaml:7:13: listen: bad address 'nowhere': port 'nowhere' is not a number",
        "t.yaml:8:15: upstream 'ap' is not defined (did you mean 'api'?)",
    ]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert caught.value.messages == [f"{tmp_path / 'missing.yaml'}: cannot read: no such file or directory"]


def test_warnings_for_mistakes_that_still_load():
    loaded = load("""\
        upstreams:
          used: {servers: [9001]}
          spare: {servers: [9002]}
        listeners:
          - listen: 8080
            allow: [10.1.0.0/16]
            deny: [10.0.0.0/8]
            routes:
              - match: {source: [10.0.0.0/8]}
                upstream: used
              - match: {source: [10.1.0.0/16]}
                upstream: used
              - upstream: used
              - upstream: 9003
        """)
    assert loaded.warnings == (
        "t.yaml:3:3: warning: upstream 'spare' is not used by any route",
        "t.yaml:6:12: warning: allow and deny leave no source allowed",
        "t.yaml:11:9: warning: this route can never match: route #1 before it matches all it does",
        "t.yaml:14:9: warning: this route can never match: route #3 before it matches all it does",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """trustme files in a folder: a CA, a server certificate for proxy.test, a second key."""
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(folder / "ca.pem")
    server = ca.issue_cert("proxy.test", "*.apps.test")
    server.cert_chain_pems[0].write_to_path(folder / "server.pem")
    server.private_key_pem.write_to_path(folder / "server.key")
    ca.issue_cert("other.test").private_key_pem.write_to_path(folder / "other.key")
    return folder


def test_tls_blocks_load_with_paths_relative_to_the_file(certs):
    config = parse_config(
        textwrap.dedent("""\
            upstreams:
              api:
                servers: [9001]
                tls: {ca: ca.pem, server_name: api.internal, cert: server.pem, key: server.key}
            listeners:
              - listen: 8443
                tls: {cert: server.pem, key: server.key, client_ca: ca.pem}
                routes:
                  - {match: {sni: [proxy.test, "*.apps.test"]}, upstream: api}
            """),
        "t.yaml",
        certs,
    ).config
    tls = config.listeners[0].tls
    assert tls.certificate.cert == str(certs / "server.pem")
    assert tls.client_ca == str(certs / "ca.pem")
    upstream_tls = config.upstreams["api"].tls
    assert (upstream_tls.server_name, upstream_tls.verify) == ("api.internal", True)
    assert config.listeners[0].routes[0].match.sni == ("proxy.test", "*.apps.test")


def test_tls_mistakes_are_located(certs):
    with pytest.raises(ConfigError) as caught:
        parse_config(
            textwrap.dedent("""\
                upstreams:
                  api:
                    servers: [9001]
                    tls: {ca: server.pem, server_name: "bad name"}
                listeners:
                  - listen: 8443
                    tls: {cert: server.pem, key: other.key}
                    upstream: api
                  - listen: 8444
                    tls: {cert: missing.pem, key: server.key}
                    routes:
                      - {match: {sni: "a.*.test"}, upstream: api}
                """),
            "t.yaml",
            certs,
        )
    assert caught.value.messages == [
        "t.yaml:4:15: ca: holds no CA certificate",
        "t.yaml:4:40: server_name: 'bad name' is not a valid server name",
        "t.yaml:7:17: cert: the certificate and the key do not belong together",
        "t.yaml:10:17: cert: cannot read 'missing.pem': no such file or directory",
        "t.yaml:12:23: sni: 'a.*.test' is not a valid server name",
    ]


def test_a_missing_key_does_not_hide_an_unreadable_cert(certs):
    with pytest.raises(ConfigError) as caught:
        parse_config(
            textwrap.dedent("""\
                listeners:
                  - listen: 8443
                    tls: {cert: missing.pem}
                    upstream: 9000
                """),
            "t.yaml",
            certs,
        )
    assert caught.value.messages == [
        "t.yaml:3:10: TLS needs both 'cert:' and 'key:' (missing 'key')",
        "t.yaml:3:17: cert: cannot read 'missing.pem': no such file or directory",
    ]


@pytest.mark.parametrize(
    ("earlier", "later", "never"),
    [
        ('"*.example.com"', "api.example.com", True),
        ("[a.com, b.com]", "a.com", True),
        ("[a.com, b.com]", "[b.com, a.com]", True),
        ('[a.com, "*.b.com"]', "[x.b.com, a.com]", True),
        ('"*.example.com"', '"*.example.com"', True),
        ('"*.example.com"', "example.com", False),
        ('"*.example.com"', "a.b.example.com", False),
        ('"*.example.com"', '"*.api.example.com"', False),
        ("api.example.com", '"*.example.com"', False),
        ("a.com", "[a.com, b.com]", False),
        ("a.com", None, False),
    ],
)
def test_a_route_covered_by_an_earlier_sni_route_is_never_matched(earlier, later, never):
    later_match = "" if later is None else f"match: {{sni: {later}}}, "
    loaded = load(f"""\
        listeners:
          - listen: 8443
            routes:
              - {{match: {{sni: {earlier}}}, upstream: 9000}}
              - {{{later_match}upstream: 9001}}
        """)
    expected = ("t.yaml:5:9: warning: this route can never match: route #1 before it matches all it does",)
    assert loaded.warnings == (expected if never else ())


def test_an_earlier_sni_route_covers_only_within_its_source():
    loaded = load("""\
        listeners:
          - listen: 8443
            routes:
              - {match: {sni: "*.example.com", source: 10.0.0.0/8}, upstream: 9000}
              - {match: {sni: api.example.com}, upstream: 9001}
              - {match: {sni: api.example.com, source: 10.1.0.0/16}, upstream: 9001}
        """)
    assert loaded.warnings == (
        "t.yaml:6:9: warning: this route can never match: route #1 before it matches all it does",
    )


def test_tls_warnings(certs):
    loaded = parse_config(
        textwrap.dedent("""\
            upstreams:
              api: {servers: [9001], tls: {verify: false}}
            listeners:
              - listen: 8443
                tls: {cert: server.pem, key: server.key}
                routes:
                  - {match: {sni: elsewhere.test}, upstream: api}
                  - {match: {sni: x.apps.test}, upstream: api}
            """),
        "t.yaml",
        certs,
    )
    assert loaded.warnings == (
        "t.yaml:2:40: warning: verify: false accepts any server certificate",
        "t.yaml:7:9: warning: sni 'elsewhere.test' is not covered by the listener's certificates",
    )
