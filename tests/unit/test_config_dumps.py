"""The route table's dump and capture keys (pcap, snaplen, dump_only, hexdump, dump_file), and the flags over them."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from proxy.config.dumping import parse_dump_condition
from proxy.config.loader import ConfigError, load_config, parse_config
from proxy.config.schema import DumpOverrides, PcapConfig, forward_config, with_overrides
from proxy.config.units import Address
from tests.support import run_cli

BASE = Path("/srv/pairproxy")


def load(text: str):
    return parse_config(textwrap.dedent(text), "t.yaml", BASE)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.messages


def test_every_key_on_listeners_routes_and_defaults():
    config = load("""\
        dump_file: dumps/hex.txt
        defaults:
          snaplen: 4KiB
          pcap: all.pcapng
          dump_only: [client=10.0.0.0/8]
        listeners:
          - listen: 8080
            upstream: 127.0.0.1:9000
          - name: edge
            listen: 8081
            pcap: {file: /var/capture/edge.pcapng, max_size: 10MiB, keep: 3}
            snaplen: 100
            dump_only: [listener=edge, "server=DB.example:5432"]
            routes:
              - name: api
                upstream: 127.0.0.1:9001
                hexdump: true
                pcap: "-"
                snaplen: 1MiB
                dump_only: conn=7
              - upstream: 127.0.0.1:9002
        """).config
    assert config.dump_file == "/srv/pairproxy/dumps/hex.txt"
    inherits, edge = config.listeners
    assert inherits.pcap == PcapConfig("/srv/pairproxy/all.pcapng")
    assert (inherits.snaplen, inherits.hexdump) == (4096, False)
    assert [c.value for c in inherits.dump_only] == [ipaddress.ip_network("10.0.0.0/8")]
    assert edge.pcap == PcapConfig("/var/capture/edge.pcapng", max_size=10 * 1024**2, keep=3)
    assert edge.snaplen == 100
    assert [c.text for c in edge.dump_only] == ["listener=edge", "server=DB.example:5432"]
    assert edge.dump_only[1].value == Address("db.example", 5432)
    api, default = edge.routes
    assert (api.hexdump, api.pcap, api.snaplen) == (True, PcapConfig("-"), 1024**2)
    assert api.dump_only == (parse_dump_condition("conn=7"),)
    assert (default.hexdump, default.pcap, default.snaplen, default.dump_only) == (None, None, None, ())


def test_without_the_keys_nothing_is_dumped_or_captured():
    config = load("""\
        listeners:
          - {listen: 8080, upstream: 127.0.0.1:9000}
        """).config
    (listener,) = config.listeners
    assert (listener.pcap, listener.snaplen, listener.dump_only, listener.hexdump) == (None, None, (), False)
    assert config.dump_file is None
    assert listener.routes[0].hexdump is None


def test_paths_are_relative_to_the_file_and_dash_is_standard_output(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "dump_file: '-'\nlisteners: [{listen: 8080, upstream: 9000, pcap: cap/x.pcapng}]\n"
    )
    config = load_config(tmp_path / "t.yaml").config
    assert config.dump_file == "-"
    assert config.listeners[0].pcap == PcapConfig(str(tmp_path / "cap" / "x.pcapng"))
    assert not (tmp_path / "cap").exists()  # check creates nothing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: "-", max_size: 1MiB}}
            """,
            "t.yaml:2:54: max_size: rotation needs a file, not '-' (standard output)",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: x.pcapng, keep: 3}}
            """,
            "t.yaml:2:59: keep: needs max_size (files are only rotated by size)",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: x.pcapng, max_size: 60KiB}}
            """,
            "t.yaml:2:69: max_size: size must be at least 65536, got 61440",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: x.pcapng, max_size: 1MiB, keep: 0}}
            """,
            "t.yaml:2:81: keep: value must be at least 1, got 0",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: x.pcapng, max_size: 1MiB, keep: 3000000}}
            """,
            "t.yaml:2:81: keep: value must be at most 1000, got 3000000",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {max_size: 1MiB}}
            """,
            "t.yaml:2:42: pcap needs 'file:', the capture's path",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {path: x.pcapng}}
            """,
            "t.yaml:2:43: unknown key 'path' in pcap",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: {file: x, max_sise: 1MiB}}
            """,
            "t.yaml:2:52: unknown key 'max_sise' in pcap (did you mean 'max_size'?)",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, pcap: [x.pcapng]}
            """,
            "t.yaml:2:42: pcap must be a single value, got a list",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, snaplen: 0}
            """,
            "t.yaml:2:45: snaplen: size must be at least 1, got 0",
        ),
        (
            """\
            listeners:
              - {listen: 8080, upstream: 9000, snaplen: 1 bushel}
            """,
            "t.yaml:2:45: snaplen: bad size '1 bushel': unknown unit 'bushel' (use KiB, MiB, GiB, KB, MB, GB)",
        ),
        (
            """\
            listeners:
              - listen: 8080
                upstream: 9000
                dump_only:
                  - client=10.0.0.0/8
                  - clinet=10.0.0.1
            """,
            "t.yaml:6:9: dump_only: unknown dump filter key 'clinet' (did you mean 'client'?);"
            " keys: conn, listener, route, client, server",
        ),
        (
            """\
            listeners:
              - listen: 8080
                routes:
                  - upstream: 9000
                    dump_only: [conn=0]
            """,
            "t.yaml:5:21: dump_only: conn=0: a connection id is a whole number of at least 1",
        ),
        (
            """\
            defaults:
              dump_only: [server=db]
            listeners: [{listen: 8080, upstream: 9000}]
            """,
            "t.yaml:2:15: dump_only: server=db: expected HOST:PORT or [IPv6]:PORT",
        ),
        (
            """\
            listeners: [{listen: 8080, upstream: 9000, dump_only: [{conn: 1}]}]
            """,
            "t.yaml:1:56: dump_only must be a single value, got a mapping",
        ),
        (
            """\
            listeners: [{listen: 8080, upstream: 9000, dump_only: [7]}]
            """,
            "t.yaml:1:56: dump_only: expected a filter such as 'client=10.0.0.0/8', got 7",
        ),
        (
            """\
            listeners:
              - listen: 8080
                routes: [{upstream: 9000, hexdump: yes please}]
            """,
            "t.yaml:3:40: hexdump: must be true or false, got 'yes please'",
        ),
        (
            """\
            dump_file: ""
            listeners: [{listen: 8080, upstream: 9000}]
            """,
            "t.yaml:1:12: dump_file: must be a non-empty string, got ''",
        ),
        (
            """\
            dump_fil: x
            listeners: [{listen: 8080, upstream: 9000}]
            """,
            "t.yaml:1:1: unknown key 'dump_fil' in the file (did you mean 'dump_file'?)",
        ),
        (
            """\
            defaults: {hexdump: true}
            listeners:
              - {listen: 8080, upstream: 9000}
              - {listen: 8081, routes: [{upstream: 9000, pcap: {file: "-"}}]}
            """,
            "t.yaml:4:59: the capture (pcap -) and the hex dump would both go to standard output;"
            " give the hex dump a file (dump_file, --dump-file)",
        ),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_each_mistake_is_located(text, expected):
    assert expected in errors_of(text)


# -- the flags over the file ----------------------------------------------------------------

FILE = """\
    dump_file: /var/dumps/hex.txt
    listeners:
      - name: edge
        listen: 8080
        hexdump: false
        pcap: edge.pcapng
        dump_only: [client=10.0.0.0/8]
        routes:
          - {name: api, upstream: 9001, hexdump: false, snaplen: 10, pcap: api.pcapng, dump_only: [conn=3]}
          - {upstream: 9002}
      - {listen: 8081, upstream: 9003}
    """


def test_no_flags_leave_the_table_as_it_is():
    config = load(FILE).config
    assert with_overrides(config, DumpOverrides()) is config


def test_hexdump_pcap_and_snaplen_flags_hold_for_every_listener_and_route():
    pcap = PcapConfig("/tmp/all.pcapng", max_size=1024**2, keep=2)
    config = with_overrides(load(FILE).config, DumpOverrides(hexdump=True, pcap=pcap, snaplen=64))
    for listener in config.listeners:
        assert (listener.hexdump, listener.pcap, listener.snaplen) == (True, pcap, 64)
        for route in listener.routes:  # None: the listener's value, so the route's own is gone
            assert (route.hexdump, route.pcap, route.snaplen) == (None, None, None)
    assert config.listeners[0].routes[0].dump_only == (parse_dump_condition("conn=3"),)  # kept: only added to
    assert config.dump_file == "/var/dumps/hex.txt"


def test_a_flag_not_given_leaves_the_file_s_value():
    original = load(FILE).config
    config = with_overrides(original, DumpOverrides(snaplen=64))
    edge = config.listeners[0]
    assert (edge.hexdump, edge.pcap) == (False, PcapConfig("/srv/pairproxy/edge.pcapng"))
    assert edge.routes[0].pcap == PcapConfig("/srv/pairproxy/api.pcapng")
    assert edge.routes[0].hexdump is False
    assert edge.routes[0].snaplen is None


def test_dump_only_flags_are_added_to_every_listener_s_and_dump_file_replaced():
    flags = DumpOverrides(dump_only=(parse_dump_condition("route=api"),), dump_file="-")
    config = with_overrides(load(FILE).config, flags)
    edge, other = config.listeners
    assert [c.text for c in edge.dump_only] == ["client=10.0.0.0/8", "route=api"]
    assert [c.text for c in other.dump_only] == ["route=api"]
    assert config.dump_file == "-"
    assert with_overrides(config, flags) == config  # given twice, the same conditions once


def test_forward_mode_is_the_same_table_with_the_flags():
    pcap = PcapConfig("-")
    config = with_overrides(
        forward_config(Address("127.0.0.1", 0), Address("127.0.0.1", 9000)), DumpOverrides(hexdump=True, pcap=pcap)
    )
    (listener,) = config.listeners
    assert (listener.hexdump, listener.pcap, listener.routes[0].pcap) == (True, pcap, None)


def warnings_of(text: str) -> tuple[str, ...]:
    return load(text).warnings


def test_a_filter_that_can_never_hold_is_a_located_warning():
    warnings = warnings_of("""\
        listeners:
          - name: edge
            listen: 8080
            dump_only: [listener=egde, route=ap]
            routes:
              - {name: api, upstream: 9001, match: {source: 10.0.0.0/8}, dump_only: [route=web, listener=edge]}
              - {upstream: 9002, dump_only: route=1}
          - listen: "[::0:1]:8081"
            upstream: 9003
            dump_only: [listener=127.0.0.1:8081]
        """)
    assert warnings == (
        "t.yaml:4:16: warning: dump_only: 'listener=egde' never holds on listener 'edge'",
        "t.yaml:4:16: warning: dump_only: 'route=ap' never holds on this listener (its routes: api, 1)",
        "t.yaml:6:9: warning: dump_only: 'route=web' never holds on route 'api'",
        "t.yaml:10:16: warning: dump_only: 'listener=127.0.0.1:8081' never holds on listener '[::1]:8081'",
    )


def test_filters_that_can_hold_or_come_from_defaults_are_not_warned_about():
    assert (
        warnings_of("""\
        defaults:
          dump_only: [listener=edge, route=api]
        listeners:
          - {name: edge, listen: 8080, routes: [{name: api, upstream: 9001}]}
          - {listen: 8081, upstream: 9002}
          - listen: 8082
            upstream: 9003
            dump_only: [listener=127.0.0.1:8082, route=0]
          - {listen: "localhost:8083", upstream: 9004, dump_only: [listener=127.0.0.1:8083]}
          - {listen: "127.0.0.1:0", upstream: 9005, dump_only: [listener=127.0.0.1:40000]}
        """)
        == ()
    )


@pytest.mark.parametrize(
    "text",
    [
        'dump_file: hex.txt\nlisteners: [{listen: 8080, upstream: 9000, hexdump: true, pcap: "-"}]',
        'listeners: [{listen: 8080, upstream: 9000, pcap: "-"}]',
        'listeners: [{listen: 8080, hexdump: true, pcap: "-", routes: [{upstream: 9000, pcap: x.pcapng}]}]',
        'listeners: [{listen: 8080, pcap: "-", routes: [{upstream: 9000, hexdump: false}]}, {listen: 81, upstream: 1}]',
    ],
)
def test_standard_output_for_one_stream_is_fine(text):
    assert load(text).config.listeners


# -- outputs on one file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dump_file: out\nlisteners: [{listen: 8080, upstream: 9000, pcap: out}]",
            "t.yaml:2:50: the capture /srv/pairproxy/out is also the hex dump's file (t.yaml:1:12);"
            " give each output its own file",
        ),
        (
            "dump_file: out\nadmin: {socket: ./out}\nlisteners: [{listen: 8080, upstream: 9000}]",
            "t.yaml:2:17: the admin socket /srv/pairproxy/out is also the hex dump's file (t.yaml:1:12);"
            " give each output its own file",
        ),
        (  # a route's capture on the rotated copies of a listener's
            "listeners:\n"
            "  - listen: 8080\n"
            "    pcap: {file: cap, max_size: 1MiB, keep: 2}\n"
            "    routes: [{upstream: 9000, pcap: cap.2}]",
            "t.yaml:4:37: the capture /srv/pairproxy/cap.2 is also the capture's file (t.yaml:3:18);"
            " give each output its own file",
        ),
    ],
)
def test_two_outputs_on_one_file_are_a_located_error(text, expected):
    assert expected in errors_of(text)


@pytest.mark.parametrize("key", ["dump_file", "defaults: {pcap"])
def test_a_path_no_file_can_have_is_a_located_error(key):
    text = f'{key}: "a\\ud800"' + ("}" if "{" in key else "") + "\nlisteners: [{listen: 8080, upstream: 9000}]"
    (error,) = errors_of(text)
    assert error.endswith(": cannot write 'a\\ud800': the path holds a lone surrogate, which no file name can")


def test_listeners_share_a_capture_and_a_link_is_the_file_it_names(tmp_path):
    text = 'listeners: [{listen: 8080, upstream: 9000, pcap: cap}, {listen: 8081, upstream: 9001, pcap: "./cap"}]'
    assert parse_config(text, "t.yaml", tmp_path).config.listeners  # one capture, shared
    (tmp_path / "hex.txt").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "hex.txt")
    (tmp_path / "hard").hardlink_to(tmp_path / "hex.txt")
    for other in ("link", "hard"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"dump_file: hex.txt\n{text.replace('cap}', other + '}', 1)}", "t.yaml", tmp_path)
        assert f"the capture {tmp_path / other} is also the hex dump's file (t.yaml:1:12)" in str(caught.value)


def test_check_reports_outputs_on_one_file_with_the_place(tmp_path):
    path = tmp_path / "pairproxy.yaml"
    path.write_text("dump_file: out\nlisteners: [{listen: 8080, upstream: 9000, pcap: out}]\n")
    done = run_cli(["check", "-c", str(path)])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"{path}:2:50: the capture {tmp_path / 'out'} is also the hex dump's file ({path}:1:12);"
        " give each output its own file\n"
    )
