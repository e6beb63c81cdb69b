"""The YAML route table loader: every kind of mistake, located to the line and column."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import textwrap
import time

import pytest
import trustme

from proxy.config.loader import ConfigError, load_config, parse_config
from proxy.config.schema import DEFAULT_MAX_BUFFERED
from proxy.config.units import Address
from tests.support import children_cpu_seconds, connect, echo_handler, recv_exactly, run_cli, wait_until


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
        (
            f"listeners: [{{name: {'n' * 1001}, listen: 8080, upstream: 9000}}]",
            "t.yaml:1:20: name: at most 1000 characters, got 1001",
        ),
        (
            f"listeners: [{{listen: 8080, routes: [{{name: {'r' * 1001}, upstream: 9000}}]}}]",
            "t.yaml:1:44: name: at most 1000 characters, got 1001",
        ),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_each_mistake_is_located(text, expected):
    assert expected in errors_of(text)


@pytest.mark.parametrize(
    ("written", "character"),
    [
        ("a b", "U+0020 (a space)"),
        ("edge\\n", "U+000A (a control character)"),
        ("edge\\t1", "U+0009 (a control character)"),
        ("edge\\x7f", "U+007F (a control character)"),
        ("edge\\x85", "U+0085 (a control character)"),
        ("edge\\u00a0", "U+00A0 (a space)"),
        ("edge\\u2028", "U+2028 (a line separator)"),
        ("edge\\u200b", "U+200B (an invisible format character)"),
    ],
)
def test_a_name_with_a_space_or_a_control_character_is_a_located_error(written, character):
    name = written.encode().decode("unicode_escape")
    messages = errors_of(f"""\
        listeners:
          - name: "{written}"
            listen: 8080
            routes: [{{name: "{written}", upstream: 9000}}]
        """)
    why = f"name: {name!r} holds {character}; a name is printable text without spaces"
    assert messages == [f"t.yaml:2:11: {why}", f"t.yaml:4:21: {why}"]


def test_an_upstream_named_with_a_space_or_a_control_character_is_a_located_error():
    # Upstream names are written into ctl's lines, the access log's `route=` and metric labels too.
    messages = errors_of("""\
        upstreams:
          "api\\nX": {servers: [127.0.0.1:9001]}
        listeners:
          - {listen: 8080, upstream: "api\\nX"}
        """)
    why = "holds U+000A (a control character); a name is printable text without spaces"
    assert messages == [f"t.yaml:2:3: upstream name: 'api\\nX' {why}"]


def test_names_may_be_any_printable_text_without_spaces():
    config = load("""\
        listeners:
          - {name: "unix:/run/édge.sock", listen: 8080, routes: [{name: "r:1/ä\\"'", upstream: 9000}]}
          - {name: 127.0.0.1:8081, listen: 8081, upstream: 9000}
        """).config
    assert [listener.name for listener in config.listeners] == ["unix:/run/édge.sock", "127.0.0.1:8081"]
    assert config.listeners[0].routes[0].name == "r:1/ä\"'"


def test_a_name_that_would_forge_a_dump_record_fails_check_with_one_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        textwrap.dedent("""\
            listeners:
              - name: "a b\\nX 00000000  66 6f 72 67 65 64  |forged|"
                listen: 127.0.0.1:0
                deny: [127.0.0.1]
                upstream: 127.0.0.1:9
                hexdump: true
            """)
    )
    result = run_cli(["check", "-c", str(path)])
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"{path}:2:11: name: 'a b\\nX 00000000  66 6f 72 67 65 64  |forged|' holds U+0020 (a space);"
        " a name is printable text without spaces\n"
    )


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
        "t.yaml:11:9: warning: this route can never match: route 0 before it matches all it does",
        "t.yaml:14:9: warning: this route can never match: route 2 before it matches all it does",
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
    expected = ("t.yaml:5:9: warning: this route can never match: route 0 before it matches all it does",)
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
        "t.yaml:6:9: warning: this route can never match: route 0 before it matches all it does",
    )


def test_the_route_named_as_covering_is_the_first_that_does():
    loaded = load("""\
        listeners:
          - listen: 8443
            routes:
              - {match: {sni: "*.a.com"}, upstream: 9001}
              - {match: {sni: x.a.com}, upstream: 9002}
              - {match: {sni: [y.b.com, x.a.com]}, upstream: 9003}
              - {match: {source: 10.0.0.0/8}, upstream: 9004}
              - {match: {sni: y.b.com, source: 10.1.0.0/16}, upstream: 9005}
              - {match: {sni: [y.b.com, x.a.com]}, upstream: 9006}
              - {name: seventh, match: {sni: z.c.com}, upstream: 9007}
              - {match: {sni: z.c.com}, upstream: 9008}
        """)
    never = "warning: this route can never match: route {} before it matches all it does"
    assert loaded.warnings == (
        f"t.yaml:5:9: {never.format('0')}",
        f"t.yaml:8:9: {never.format('2')}",
        f"t.yaml:9:9: {never.format('2')}",
        f"t.yaml:11:9: {never.format('seventh')}",
    )


def test_thousands_of_routes_and_listeners_load_in_linear_time():
    routes = "".join(f"      - {{match: {{sni: h{n}.example.com}}, upstream: 9000}}\n" for n in range(3000))
    listeners = "".join(f"  - {{listen: {port}, upstream: 9000}}\n" for port in range(10000, 16000))
    started = time.process_time()  # the loader's own work, whatever else the machine runs
    config = load(f"listeners:\n  - listen: 443\n    routes:\n{routes}{listeners}").config
    assert time.process_time() - started < 6  # about 1.5 s; comparing every pair took 9 s
    assert len(config.listeners) == 6001


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


# -- whatever the YAML says, a located error and never a crash ---------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("!foo x", "t.yaml:3:15: upstream: unsupported YAML tag '!foo'"),
        ("!!python/object:os.system x", "t.yaml:3:15: upstream: unsupported YAML tag '!!python/object:os.system'"),
        ("!!binary aGk=", "t.yaml:3:15: upstream: unsupported YAML tag '!!binary'"),
        ("!!int abc", "t.yaml:3:15: upstream: 'abc' is not a valid !!int"),
        ("!!bool maybe", "t.yaml:3:15: upstream: 'maybe' is not a valid !!bool"),
        ("!!timestamp foo", "t.yaml:3:15: upstream: 'foo' is not a valid !!timestamp"),
        ("!!float abc", "t.yaml:3:15: upstream: 'abc' is not a valid !!float"),
        ("2026-13-01", "t.yaml:3:15: upstream: '2026-13-01' is not a valid !!timestamp"),
        ("1" * 5000, f"t.yaml:3:15: upstream: '{'1' * 40}...' is not a valid !!int"),
        ("!!set {a}", "t.yaml:3:15: upstream: unsupported YAML tag '!!set'"),
        ("!foo [a]", "t.yaml:3:15: upstream: unsupported YAML tag '!foo'"),
    ],
    ids=lambda value: value[:30],
)
def test_yaml_tags_and_unreadable_scalars_are_located_errors(value, expected):
    assert errors_of(f"listeners:\n  - listen: 8080\n    upstream: {value}\n") == [expected]


def test_tags_that_mean_what_plain_yaml_means_are_fine():
    config = load("""\
        listeners:
          - listen: !!str 8080
            upstream: !!int "9000"
            name: !!str 2026-01-01
            idle_timeout: !!float 1.5
            hexdump: !!bool "true"
        """).config
    (listener,) = config.listeners
    assert (listener.listen.port, listener.name, listener.hexdump) == (8080, "2026-01-01", True)
    assert listener.idle_timeout == 1.5


@pytest.mark.parametrize("depth", [200, 5000])
def test_deep_nesting_is_a_located_error(depth):
    (message,) = errors_of("listeners: " + "[" * depth + "]" * depth + "\n")
    assert message.startswith("t.yaml:1:")
    assert "nested deeper than" in message


def test_a_control_character_is_a_located_error():
    (message,) = errors_of("listeners:\n  - listen: 80\x07\n")
    assert message.startswith("t.yaml:2:15: YAML syntax error: ")


def test_a_file_that_is_not_utf8_is_a_located_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"listeners:\n  - listen: 80\xff80\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.messages == [f"{path}:2:15: not UTF-8 text (byte 0xff)"]


def test_a_path_with_a_nul_character_is_a_located_error():
    messages = errors_of("""\
        listeners:
          - listen: 8443
            tls: {cert: "a\\0b", key: k.pem}
            upstream: 9000
        """)
    assert messages[0] == "t.yaml:3:17: cert: cannot read 'a\\x00b': the path holds a NUL character"


def test_an_alias_inside_its_own_anchor_is_a_located_error():
    (message,) = errors_of("listeners: &loop [*loop]\n")
    assert message == "t.yaml:1:19: YAML alias *loop refers to a node that contains it"


# -- merge keys ------------------------------------------------------------------------------


def test_merge_keys_share_settings_and_explicit_keys_win():
    config = load("""\
        upstreams:
          api: {servers: [9001]}
        x-common: &common
          idle_timeout: 1m
          hexdump: true
          upstream: api
        x-slow: &slow
          idle_timeout: 1h
          max_connections: 5
        listeners:
          - <<: *common
            listen: 8080
          - <<: [*slow, *common]
            listen: 8081
          - <<: *common
            listen: 8082
            hexdump: false
        """).config
    first, second, third = config.listeners
    assert (first.listen.port, first.idle_timeout, first.hexdump, first.routes[0].upstream) == (8080, 60, True, "api")
    # Of several merged mappings the first one given wins.
    assert (second.idle_timeout, second.max_connections, second.hexdump) == (3600, 5, True)
    assert (third.idle_timeout, third.hexdump) == (60, False)


def test_a_listener_can_merge_an_earlier_listener():
    config = load("""\
        listeners:
          - &edge
            listen: 8080
            idle_timeout: 1m
            upstream: 9000
          - <<: *edge
            listen: 8081
        """).config
    assert [(listener.listen.port, listener.idle_timeout) for listener in config.listeners] == [(8080, 60), (8081, 60)]


def test_merged_mappings_may_merge_others():
    config = load("""\
        x-base: &base {idle_timeout: 1m, upstream: 9000}
        x-more: &more {<<: *base, hexdump: true}
        listeners:
          - {<<: *more, listen: 8080}
        """).config
    (listener,) = config.listeners
    assert (listener.idle_timeout, listener.hexdump) == (60, True)


def test_errors_in_merged_content_point_at_the_anchor():
    assert errors_of("""\
        x-base: &base
          idle_timeout: soon
          upstream: 9000
        listeners:
          - <<: *base
            listen: 8080
          - <<: *base
            listen: 8081
        """) == ["t.yaml:2:17: idle_timeout: bad duration 'soon': use seconds or a unit, e.g. 250ms, 5s, 2m, 1h"]


@pytest.mark.parametrize(
    ("merge", "expected"),
    [
        ("<<: 8080", "t.yaml:2:9: '<<' merges a mapping or a list of mappings, got '8080'"),
        ("<<: [8080]", "t.yaml:2:10: '<<' merges a mapping or a list of mappings, got '8080'"),
        ("<<: [[a]]", "t.yaml:2:10: '<<' merges a mapping or a list of mappings, got a list"),
    ],
)
def test_a_merge_of_something_else_is_located(merge, expected):
    assert expected in errors_of(f"listeners:\n  - {merge}\n    listen: 8080\n    upstream: 9000\n")


def test_a_quoted_merge_key_is_an_ordinary_unknown_key():
    assert errors_of('listeners:\n  - {"<<": {}, listen: 8080, upstream: 9000}\n') == [
        "t.yaml:2:6: unknown key '<<' in listener"
    ]


def test_only_x_prefixed_extra_keys_are_allowed_at_the_top():
    assert errors_of("""\
        x-anything: {whatever: [1, 2]}
        y-other: 1
        listeners: [{listen: 8080, upstream: 9000}]
        """) == ["t.yaml:2:1: unknown key 'y-other' in the file"]


# -- aliases cannot blow up the loader ---------------------------------------------------------


def alias_bomb(levels: int) -> str:
    """Each level a list of nine aliases of the one before: 9**levels nodes from a few lines."""
    lines = ["x-0: &a0 [10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8]"]
    for level in range(1, levels + 1):
        lines.append(f"x-{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    lines.append(f"listeners: [{{listen: 8080, upstream: 9000, allow: *a{levels}}}]")
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_to_too_much_are_refused_fast():
    text = alias_bomb(9)
    started = time.process_time()  # the loader's own work, whatever else the machine runs
    messages = errors_of(text)
    elapsed = time.process_time() - started
    assert elapsed < 0.5
    assert len(messages) == 1
    assert re.match(r"t\.yaml:\d+:\d+: YAML aliases expand to too much", messages[0])


def test_check_refuses_an_alias_bomb_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(12))
    started = children_cpu_seconds()  # the command's own work, whatever else the machine runs
    result = run_cli(["check", "-c", str(path)], timeout=20)
    assert children_cpu_seconds() - started < 5  # mostly interpreter start-up; the old loader never finished
    assert result.returncode == 2
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: YAML aliases expand to too much[^\n]*\n", result.stderr)


def test_many_listeners_sharing_one_route_table_load_fast():
    listeners = "".join(f"  - {{listen: {port}, routes: *routes}}\n" for port in range(8000, 8500))
    text = (
        "x-routes: &routes\n"
        + "".join(f"  - {{match: {{source: [10.{n}.0.0/16]}}, upstream: {9000 + n}}}\n" for n in range(20))
        + "  - upstream: 9999\n"
        + "listeners:\n"
        + listeners
    )
    started = time.process_time()  # the loader's own work, whatever else the machine runs
    config = load(text).config
    assert time.process_time() - started < 2
    assert len(config.listeners) == 500
    assert all(len(listener.routes) == 21 for listener in config.listeners)


# -- durations of 0 --------------------------------------------------------------------------


def test_idle_timeout_zero_means_none_and_is_warned_about():
    loaded = load("""\
        defaults: {idle_timeout: 0, shutdown_grace: 0}
        listeners:
          - {listen: 8080, upstream: 9000}
          - {listen: 8081, upstream: 9000, idle_timeout: 0s}
        """)
    assert [listener.idle_timeout for listener in loaded.config.listeners] == [0, 0]
    assert loaded.config.shutdown_grace == 0
    assert loaded.warnings == (
        "t.yaml:1:26: warning: idle_timeout: 0 means no idle timeout: idle connections stay open for ever",
        "t.yaml:4:50: warning: idle_timeout: 0 means no idle timeout: idle connections stay open for ever",
    )


def test_connect_timeout_must_be_above_zero_everywhere():
    assert errors_of("""\
        defaults: {connect_timeout: 0}
        upstreams:
          api: {servers: [9001], connect_timeout: 0ms}
        listeners:
          - {listen: 8080, upstream: api, connect_timeout: "0"}
        """) == [
        "t.yaml:1:29: connect_timeout: must be above 0, got 0",
        "t.yaml:3:43: connect_timeout: must be above 0, got '0ms'",
        "t.yaml:5:52: connect_timeout: must be above 0, got '0'",
    ]


def test_health_check_durations_must_be_above_zero():
    assert errors_of("""\
        upstreams:
          api: {servers: [9001], health_check: {interval: 0, timeout: 0s}}
        listeners:
          - {listen: 8080, upstream: api}
        """) == [
        "t.yaml:2:51: interval: must be above 0, got 0",
        "t.yaml:2:63: timeout: must be above 0, got '0s'",
    ]


# -- certificate files must be regular files ----------------------------------------------------


@pytest.mark.parametrize("key", ["cert", "ca"])
def test_a_fifo_or_device_as_a_certificate_file_is_refused_without_blocking(tmp_path, certs, key):
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_bytes((certs / name).read_bytes())
    tls = (
        "tls: {cert: fifo.pem, key: server.key}"
        if key == "cert"
        else "tls: {cert: server.pem, key: server.key, client_ca: /dev/null}"
    )
    path = tmp_path / "p.yaml"
    path.write_text(f"listeners:\n  - listen: 8443\n    {tls}\n    upstream: 9000\n")
    result = run_cli(["check", "-c", str(path)], timeout=10)
    assert result.returncode == 2
    expected = (
        f"{path}:3:17: cert: cannot read 'fifo.pem': not a regular file (a FIFO)"
        if key == "cert"
        else f"{path}:3:57: client_ca: cannot read '/dev/null': not a regular file (a character device)"
    )
    assert result.stderr == expected + "\n"


# -- accept_proxy_protocol ----------------------------------------------------------------------


def test_accept_proxy_protocol_true_false_or_trusted_peers():
    config = load("""\
        listeners:
          - {listen: 8080, upstream: 9000, accept_proxy_protocol: true}
          - {listen: 8081, upstream: 9000, accept_proxy_protocol: false}
          - listen: 8082
            upstream: 9000
            accept_proxy_protocol: {trusted: [10.0.0.0/8, "::ffff:192.168.1.1", "2001:db8::/32"]}
          - {listen: 8083, upstream: 9000, accept_proxy_protocol: {trusted: 127.0.0.1}}
        """).config
    on, off, trusted, single = config.listeners
    assert (on.accept_proxy_protocol, on.proxy_trusted) == (True, None)
    assert (off.accept_proxy_protocol, off.proxy_trusted) == (False, None)
    assert trusted.accept_proxy_protocol
    assert trusted.proxy_trusted == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert single.proxy_trusted == (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes please", "t.yaml:2:59: accept_proxy_protocol: must be true, false or {trusted: [...]}, got 'yes please'"),
        ("[10.0.0.0/8]", "t.yaml:2:59: accept_proxy_protocol: must be true, false or {trusted: [...]}, got a list"),
        ("{}", "t.yaml:2:59: accept_proxy_protocol needs 'trusted:', the addresses of the proxies in front"),
        ("{trusted: []}", "t.yaml:2:69: trusted is empty: no client could connect"),
        ("{trusted: [10.0.0.300]}", "t.yaml:2:70: trusted: '10.0.0.300' is not an IP address or CIDR block"),
        (
            "{trustd: [10.0.0.0/8]}",
            "t.yaml:2:60: unknown key 'trustd' in accept_proxy_protocol (did you mean 'trusted'?)",
        ),
    ],
)
def test_accept_proxy_protocol_mistakes_are_located(value, expected):
    assert expected in errors_of(f"listeners:\n  - {{listen: 8080, upstream: 9000, accept_proxy_protocol: {value}}}\n")


def test_plain_accept_proxy_protocol_with_source_rules_is_warned_about():
    loaded = load("""\
        listeners:
          - {listen: 8080, upstream: 9000, accept_proxy_protocol: true, allow: [10.0.0.0/8]}
          - {listen: 8081, upstream: 9000, accept_proxy_protocol: true, deny: [10.9.0.0/16]}
          - listen: 8082
            accept_proxy_protocol: true
            routes:
              - {match: {source: 10.0.0.0/8}, upstream: 9000}
              - upstream: 9001
          - {listen: 8083, upstream: 9000, accept_proxy_protocol: {trusted: [10.0.0.1]}, allow: [10.0.0.0/8]}
          - {listen: 8084, upstream: 9000, accept_proxy_protocol: true}
        """)
    warning = (
        "warning: accept_proxy_protocol: true trusts every peer, so any client can claim any source address"
        " (name the proxies in front with {trusted: [...]})"
    )
    assert loaded.warnings == (
        f"t.yaml:2:36: {warning}",
        f"t.yaml:3:36: {warning}",
        f"t.yaml:5:5: {warning}",
    )


# -- IPv4-mapped networks ----------------------------------------------------------------------


def test_ipv4_mapped_networks_are_stored_as_ipv4():
    config = load("""\
        listeners:
          - listen: 8080
            allow: ["::ffff:10.0.0.0/104"]
            deny: ["::ffff:10.9.0.0/112"]
            routes:
              - {match: {source: ["::ffff:10.1.2.3"]}, upstream: 9000}
              - upstream: 9001
        """).config
    (listener,) = config.listeners
    assert listener.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    assert listener.deny == (ipaddress.ip_network("10.9.0.0/16"),)
    assert listener.routes[0].match.source == (ipaddress.ip_network("10.1.2.3/32"),)


def test_warnings_treat_ipv4_mapped_networks_as_ipv4():
    loaded = load("""\
        listeners:
          - listen: 8080
            allow: ["::ffff:10.1.0.0/112"]
            deny: [10.0.0.0/8]
            routes:
              - {match: {source: ["::ffff:10.0.0.0/104"]}, upstream: 9000}
              - {match: {source: [10.1.0.0/16]}, upstream: 9001}
              - upstream: 9002
        """)
    assert loaded.warnings == (
        "t.yaml:3:12: warning: allow and deny leave no source allowed",
        "t.yaml:7:9: warning: this route can never match: route 0 before it matches all it does",
    )


# -- max_buffered ----------------------------------------------------------------------------


def test_max_buffered_is_a_size_in_defaults():
    assert load("listeners: [{listen: 8080, upstream: 9000}]\n").config.max_buffered == DEFAULT_MAX_BUFFERED
    assert DEFAULT_MAX_BUFFERED >= 64 * 1024**2
    config = load("defaults: {max_buffered: 4MiB}\nlisteners: [{listen: 8080, upstream: 9000}]\n").config
    assert config.max_buffered == 4 * 1024**2
    assert errors_of("defaults: {max_buffered: 64KiB}\nlisteners: [{listen: 8080, upstream: 9000}]\n") == [
        "t.yaml:1:26: max_buffered: size must be at least 1048576, got 65536"
    ]


# -- end to end ------------------------------------------------------------------------------


def test_check_reports_a_yaml_tag_as_a_located_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("listeners:\n  - listen: 8080\n    upstream: !foo x\n")
    result = run_cli(["check", "-c", str(path)])
    assert (result.returncode, result.stderr) == (2, f"{path}:3:15: upstream: unsupported YAML tag '!foo'\n")


def test_sighup_with_a_yaml_tag_is_rejected_and_the_old_table_serves_on(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "p.yaml"
    path.write_text(f'listeners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    proxy = start_proxy("run", "-c", str(path))
    path.write_text("listeners:\n  - listen: 8080\n    upstream: !!int abc\n")
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for("reload_rejected")
    assert "p.yaml:3:15: upstream: 'abc' is not a valid !!int" in proxy.log_text()
    assert "callback_failed" not in proxy.log_text()
    with connect(proxy.address) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"


def test_sighup_with_a_yaml_tag_reaches_every_worker(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "p.yaml"
    path.write_text(f'listeners:\n  - {{name: a, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    proxy = start_proxy("run", "-c", str(path), "--workers", "2", wait_listening=2)
    try:
        path.write_text("listeners:\n  - listen: 8080\n    upstream: !foo x\n")
        proxy.send_signal(signal.SIGHUP)
        assert wait_until(lambda: proxy.log_text().count("reload_rejected") == 2), proxy.log_text()
        assert "callback_failed" not in proxy.log_text()
        with connect(proxy.address) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
    finally:
        assert proxy.stop() == 0  # the supervisor stops its workers; a kill would leave them running


def test_a_connection_on_an_idle_timeout_zero_listener_stays_open(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "p.yaml"
    path.write_text(f'listeners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}", idle_timeout: 0}}\n')
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        client.sendall(b"one")
        assert recv_exactly(client, 3) == b"one"
        time.sleep(1.0)
        client.sendall(b"two")
        assert recv_exactly(client, 3) == b"two"
    assert proxy.wait_access()[0]["result"] == "closed"


def test_shutdown_grace_zero_closes_open_connections_at_once(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "p.yaml"
    path.write_text(
        f'defaults: {{shutdown_grace: 0}}\nlisteners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n'
    )
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        client.sendall(b"one")
        assert recv_exactly(client, 3) == b"one"
        started = time.monotonic()
        assert proxy.stop() == 0
        assert time.monotonic() - started < 10  # at once, not after the default 30 s
        assert client.recv(10) == b""
    (line,) = proxy.access_lines()
    assert line["result"] == "shutdown"


def test_forward_refuses_a_connect_timeout_of_zero():
    result = run_cli(["forward", "0", "127.0.0.1:9", "--connect-timeout", "0"])
    assert result.returncode == 2
    assert result.stderr == "pairproxy forward: argument --connect-timeout: must be above 0, got '0'\n"


# -- one port, many protocols --------------------------------------------------------------

NAMES = "tls, ssh, http, http2, socks5, openvpn, xmpp, proxy, silent"


def test_matches_on_the_first_bytes_and_the_peek_timeout_load():
    config = load("""\
        listeners:
          - listen: 443
            peek_timeout: 300ms
            routes:
              - {match: {protocol: ssh}, upstream: 22}
              - {match: {protocol: [tls, http2], alpn: [h2, acme-tls/1], sni: "*.A.test"}, upstream: 8443}
              - {match: {protocol: http, host: API.example.com}, upstream: 80}
              - {match: {prefix: ["hex:00 01", "OK"]}, upstream: 7000}
              - {match: {protocol: silent}, upstream: 22}
              - upstream: 9
        """).config
    (listener,) = config.listeners
    matches = [route.match for route in listener.routes]
    assert listener.peek_timeout == 0.3
    assert matches[0].protocol == ("ssh",)
    assert (matches[1].protocol, matches[1].alpn, matches[1].sni) == (
        ("tls", "http2"),
        ("h2", "acme-tls/1"),
        ("*.a.test",),
    )
    assert matches[2].host == ("api.example.com",)
    assert matches[3].prefix == (b"\x00\x01", b"OK")
    assert [m.reads_first_bytes for m in matches] == [True, True, True, True, True, False]
    assert load("listeners: [{listen: 1, upstream: 2}]").config.listeners[0].peek_timeout == 2.0


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (
            "{protocol: shh}",
            f"t.yaml:4:28: protocol: 'shh' is not one of {NAMES} (did you mean 'ssh'?)",
        ),
        (
            "{protocol: [tls, htp]}",
            f"t.yaml:4:34: protocol: 'htp' is not one of {NAMES} (did you mean 'http'?)",
        ),
        ('{prefix: "hex:0g"}', "t.yaml:4:26: prefix: 'hex:0g': hex: takes pairs of hex digits, such as hex:16030100"),
        ('{prefix: ""}', "t.yaml:4:26: prefix: must be text or \"hex:...\" bytes, got ''"),
        ("{alpn: 2}", "t.yaml:4:24: alpn: must be an ALPN protocol name such as h2 or acme-tls/1, got 2"),
        (
            '{alpn: "h\u00e9"}',
            "t.yaml:4:24: alpn: 'h\u00e9': an ALPN protocol name here is printable ASCII, such as h2 or acme-tls/1",
        ),
        (
            '{alpn: [h2, "h2\\t"]}',
            "t.yaml:4:29: alpn: 'h2\\t': an ALPN protocol name here is printable ASCII, such as h2 or acme-tls/1",
        ),
        ('{host: "a b"}', "t.yaml:4:24: host: 'a b' is not a valid server name"),
        ("{protocols: ssh}", "t.yaml:4:18: unknown key 'protocols' in match (did you mean 'protocol'?)"),
    ],
)
def test_a_wrong_match_on_the_first_bytes_is_located(match, expected):
    errors = errors_of(f"""\
        listeners:
          - listen: 443
            routes:
              - {{match: {match}, upstream: 22}}
        """)
    assert errors == [expected]


def test_a_peek_timeout_must_be_a_duration_above_zero():
    (error,) = errors_of("listeners: [{listen: 1, peek_timeout: 0s, upstream: 2}]")
    assert error == "t.yaml:1:39: peek_timeout: must be above 0, got '0s'"


@pytest.mark.parametrize(
    ("tls", "match", "why"),
    [
        (
            False,
            "{protocol: ssh, host: a.test}",
            "host is read from a plain HTTP/1.x request, which its protocol excludes",
        ),
        (False, "{protocol: http, alpn: h2}", "alpn is read from a TLS ClientHello, which its protocol excludes"),
        (False, "{sni: a.test, host: a.test}", "host is read from plain HTTP, sni from TLS"),
        (False, '{protocol: silent, prefix: "x"}', "protocol silent means no bytes came, so nothing in them can match"),
        (
            True,
            "{host: a.test}",
            "host is a plain HTTP request's Host, and this listener's HTTP clients speak TLS"
            " (route them by sni; host matches only plain HTTP sent to it)",
        ),
    ],
)
def test_a_route_whose_own_conditions_exclude_each_other_is_warned_about(certs, tls, match, why):
    tls_line = f'tls: {{cert: "{certs / "server.pem"}", key: "{certs / "server.key"}"}}' if tls else "name: plain"
    loaded = load(f"""\
        listeners:
          - listen: 443
            {tls_line}
            routes:
              - {{match: {match}, upstream: 22}}
              - upstream: 9
        """)
    assert loaded.warnings == (f"t.yaml:5:9: warning: this route can never match: {why}",)


@pytest.mark.parametrize(
    ("earlier", "later", "never"),
    [
        ("{protocol: [ssh, tls]}", "{protocol: tls, alpn: h2}", True),
        ("{protocol: tls}", "{protocol: [tls, ssh]}", False),
        ("{alpn: [h2, http/1.1]}", "{alpn: h2, sni: a.test}", True),
        ("{alpn: h2}", "{alpn: [h2, acme-tls/1]}", False),
        ('{host: "*.a.test"}', "{protocol: http, host: www.a.test}", True),
        ('{prefix: "AB"}', '{prefix: "ABC"}', True),
        ('{prefix: "ABC"}', '{prefix: "AB"}', False),
        ("{protocol: ssh}", "{}", False),
    ],
)
def test_a_route_covered_by_an_earlier_one_on_the_first_bytes_is_never_matched(earlier, later, never):
    loaded = load(f"""\
        listeners:
          - listen: 443
            routes:
              - {{match: {earlier}, upstream: 9000}}
              - {{match: {later}, upstream: 9001}}
        """)
    expected = ("t.yaml:5:9: warning: this route can never match: route 0 before it matches all it does",)
    assert loaded.warnings == (expected if never else ())


@pytest.mark.parametrize(
    ("earlier", "later", "warning"),
    [
        ("{alpn: h2}", "{}", None),
        ("{}", "{protocol: ssh}", None),  # the catch-all takes TLS clients only: SSH passes it
        ("{protocol: tls}", "{alpn: h2}", "route 0 before it matches all it does"),  # both TLS routes
        ("{alpn: h2}", "{protocol: http, host: a.test}", None),  # plain HTTP, named: it comes as it is
    ],
)
def test_a_terminating_listener_on_the_first_bytes_is_checked_as_served(certs, earlier, later, warning):
    loaded = load(f"""\
        listeners:
          - listen: 443
            tls: {{cert: "{certs / "server.pem"}", key: "{certs / "server.key"}"}}
            routes:
              - {{match: {earlier}, upstream: 9000}}
              - {{match: {later}, upstream: 9001}}
        """)
    expected = () if warning is None else (f"t.yaml:6:9: warning: this route can never match: {warning}",)
    assert loaded.warnings == expected


def test_a_peek_timeout_on_a_listener_that_reads_no_first_bytes_is_warned_about():
    loaded = load("""\
        listeners:
          - listen: 443
            peek_timeout: 1s
            routes:
              - {match: {sni: a.test}, upstream: 22}
        """)
    assert loaded.warnings == (
        "t.yaml:3:5: warning: peek_timeout: no route matches on the first bytes (protocol, alpn, host, prefix),"
        " so none are waited for",
    )
