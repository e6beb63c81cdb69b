"""End to end: the admin socket and `pairproxy ctl` on a running proxy; the `admin:` section; the snapshot."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from proxy.admin import command_socket, commands
from proxy.admin.later import Later
from proxy.config import schema
from proxy.config.loader import ConfigError, parse_config
from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from proxy.output import Output
from proxy.policy.upstreams import CONNECT_BUCKETS, ConnectTimes
from proxy.serve.server import Server
from tests.support import (
    WAIT,
    connect,
    ctl,
    echo_handler,
    logfmt,
    ok,
    pool,
    ports,
    recv_digest,
    recv_exactly,
    run_cli,
    source_handler,
    tagged,
    wait_until,
    write,
)


def admin_proxy(tmp_path, start_proxy, upstreams: list[str], *, balance: str = "round_robin", extra: str = ""):
    """A proxy with listener `web` over upstream `app` and an admin socket; (proxy, socket path)."""
    servers = ", ".join(f'"{address}"' for address in upstreams)
    path = write(
        tmp_path,
        f"""\
        admin: {{socket: admin.sock}}
        upstreams:
          app: {{balance: {balance}, servers: [{servers}]{extra}}}
        listeners:
          - {{name: web, listen: "127.0.0.1:0", upstream: app}}
        """,
    )
    return start_proxy("run", "-c", str(path)), tmp_path / "admin.sock"


# -- commands on live connections ----------------------------------------------------------


def test_show_info_conns_and_servers_describe_an_open_connection(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    with connect(proxy.address) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
        info = dict(line.split(": ", 1) for line in ok(sock, "show", "info").splitlines())
        assert info["pid"] == str(proxy.pid)
        assert (info["connections"], info["listeners"], info["workers"], info["draining"]) == ("1", "1", "1", "false")
        conns = ok(sock, "show", "conns").splitlines()
        assert len(conns) == 1
        row = logfmt(conns[0])
        assert row["listener"] == "web" and row["route"] == "0" and row["state"] == "relaying"
        assert row["server"] == upstream.address and (row["bytes_up"], row["bytes_down"]) == ("5", "5")
        servers = [logfmt(line) for line in ok(sock, "show", "servers").splitlines()]
        assert [(s["upstream"], s["server"], s["state"], s["active"], s["total"]) for s in servers] == [
            ("app", upstream.address, "up", "1", "1")
        ]
    assert wait_until(lambda: ok(sock, "show", "conns") == "")  # nothing open: an empty answer, nothing printed
    assert "help" in ok(sock, "help") and "kill conn ID" in ok(sock, "help")


def test_kill_conn_closes_the_client_and_logs_it(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    with connect(proxy.address) as client, connect(proxy.address) as other:
        for each in (client, other):
            each.sendall(b"x")
            assert recv_exactly(each, 1) == b"x"
        conn = {logfmt(line)["client"]: logfmt(line)["conn"] for line in ok(sock, "show", "conns").splitlines()}
        victim = conn["{}:{}".format(*client.getsockname())]
        assert ok(sock, "kill", "conn", victim) == "ok\n"
        assert client.recv(1) == b""
        line = proxy.wait_access(1)[0]
        assert (line["conn"], line["result"], line["reason"]) == (victim, "shutdown", "killed by admin")
        other.sendall(b"y")  # the other connection is untouched
        assert recv_exactly(other, 1) == b"y"
    done = ctl(sock, "kill", "conn", victim)
    assert (done.returncode, done.stderr) == (1, f"pairproxy: no open connection {victim}\n")


def test_dump_on_and_off_reach_open_and_new_connections(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, admin = admin_proxy(tmp_path, start_proxy, [upstream.address])

    def echoes(client, text: bytes) -> None:
        client.sendall(text)
        assert recv_exactly(client, len(text)) == text

    with connect(proxy.address) as first:
        echoes(first, b"before the dump")
        assert ok(admin, "dump", "on", "listener=web").strip() == "1 open connection dumped; 1 run-time rules"
        echoes(first, b"dumped when open")
        with connect(proxy.address) as second:
            echoes(second, b"dumped at start")
        proxy.wait_access(1)
        assert (
            ok(admin, "dump", "off", "listener=web").strip() == "1 open connection no longer dumped; 0 run-time rules"
        )
        echoes(first, b"after dump off")
    proxy.wait_access(2)
    with connect(proxy.address) as third:
        echoes(third, b"nor a new one")
    proxy.wait_access(3)
    refused = ctl(admin, "dump", "on", "colour=red")
    assert refused.returncode == 1 and "colour" in refused.stdout + refused.stderr
    assert proxy.stop() == 0
    dump = proxy.stdout_path.read_text()
    assert "|before the dump|" not in dump and "|after dump off|" not in dump and "|nor a new one|" not in dump
    assert "|dumped when open|" in dump and "|dumped at start|" in dump
    events = [line.split()[1:3] for line in dump.splitlines() if line.split()[2:3] in (["open"], ["close"])]
    assert events == [["conn=1", "open"], ["conn=2", "open"], ["conn=2", "close"], ["conn=1", "close"]]


def test_fault_add_list_and_remove_change_new_connections(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, admin = admin_proxy(tmp_path, start_proxy, [upstream.address])

    def round_trip() -> float:
        start = time.monotonic()
        with connect(proxy.address) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
        return time.monotonic() - start

    assert ok(admin, "fault", "list").strip() == "no faults"
    assert "web" in ok(admin, "fault", "add", "web", "latency:latency=400ms")
    assert ok(admin, "fault", "list").strip().startswith("web: latency")
    assert round_trip() >= 0.35, "the toxic delays what the upstream sends back"
    assert "removed 1 latency" in ok(admin, "fault", "remove", "web", "latency")
    assert round_trip() < 0.3
    refused = ctl(admin, "fault", "add", "web", "latncy:latency=1s")
    assert refused.returncode == 1 and "latency" in refused.stdout + refused.stderr, "did you mean"
    refused = ctl(admin, "fault", "add", "nowhere", "latency:latency=1s")
    assert refused.returncode == 1 and "no listener or route named 'nowhere'" in refused.stdout + refused.stderr


def dumping_proxy(tmp_path, start_proxy, upstream, listener: str, top: str = ""):
    """A proxy with an admin socket and listener `web` (with `listener`'s extra keys); (proxy, socket)."""
    path = write(
        tmp_path,
        f"""\
        admin: {{socket: admin.sock}}
        {top}
        upstreams:
          app: {{servers: ["{upstream.address}"]}}
        listeners:
          - {{name: web, listen: "127.0.0.1:0", upstream: app{listener}}}
        """,
    )
    return start_proxy("run", "-c", str(path)), tmp_path / "admin.sock"


def echoes(client, text: bytes) -> None:
    client.sendall(text)
    assert recv_exactly(client, len(text)) == text


def test_dump_on_dumps_new_connections_of_a_capturing_listener_too(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    listener = f', pcap: "{tmp_path}/c.pcapng"'
    proxy, admin = dumping_proxy(tmp_path, start_proxy, upstream, listener, top=f'dump_file: "{tmp_path}/d.txt"')
    ok(admin, "dump", "on", "listener=web")
    with connect(proxy.address) as client:
        echoes(client, b"new after on")
    proxy.wait_access(1)
    assert proxy.stop() == 0
    assert "|new after on|" in (tmp_path / "d.txt").read_text()


def test_dump_on_is_refused_where_a_capture_has_standard_output(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    _proxy, admin = dumping_proxy(tmp_path, start_proxy, upstream, ', pcap: "-"')
    refused = ctl(admin, "dump", "on", "listener=web")
    assert refused.returncode == 1
    assert refused.stderr == "pairproxy: a capture goes to standard output: the hex dump needs a dump_file\n"


def test_dump_off_stops_the_dump_of_a_faulted_connection(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    listener = ", hexdump: true, faults: [{type: latency, latency: 1ms}]"
    proxy, admin = dumping_proxy(tmp_path, start_proxy, upstream, listener)
    with connect(proxy.address) as client:
        echoes(client, b"dumped first")
        ok(admin, "dump", "off", "listener=web")
        echoes(client, b"not after off")
    proxy.wait_access(1)
    assert proxy.stop() == 0
    dump = proxy.stdout_path.read_text()
    assert "|dumped first|" in dump and "|not after off|" not in dump


@pytest.mark.parametrize("on", [True, False])
def test_dump_on_and_off_reach_a_connection_still_being_admitted(on, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    # a header may take its time: several `ctl` runs come before it, slow on a busy machine
    listener = ", accept_proxy_protocol: true, connect_timeout: 60s"
    proxy, admin = dumping_proxy(tmp_path, start_proxy, upstream, listener)
    if not on:
        ok(admin, "dump", "on", "listener=web")
    with connect(proxy.address) as client:
        assert wait_until(lambda: "admitting" in ok(admin, "show", "conns")), "accepted, waiting for its header"
        ok(admin, "dump", "on" if on else "off", "listener=web")
        client.sendall(b"PROXY TCP4 10.0.0.1 10.0.0.2 1111 2222\r\n")
        echoes(client, b"after the rule")
    proxy.wait_access(1)
    assert proxy.stop() == 0
    assert ("|after the rule|" in proxy.stdout_path.read_text()) is on


def test_dump_on_cuts_an_open_connection_at_the_snap_length(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, admin = dumping_proxy(tmp_path, start_proxy, upstream, ", snaplen: 8")
    with connect(proxy.address) as client:
        echoes(client, b"x")
        ok(admin, "dump", "on", "listener=web")
        echoes(client, b"12345678-and-the-rest")
    proxy.wait_access(1)
    assert proxy.stop() == 0
    dump = proxy.stdout_path.read_text()
    assert "|1234567|" in dump and "-and-the-rest" not in dump, "the snap length counts from the stream's start"
    assert "conn=1 client->upstream truncated offset=8" in dump


def test_a_disabled_server_gets_no_new_connections_until_enabled(tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock = admin_proxy(tmp_path, start_proxy, [one.address, two.address])

    def tags(count: int) -> list[bytes]:
        found = []
        for _ in range(count):
            with connect(proxy.address) as client:
                found.append(recv_exactly(client, 4))
        return found

    with connect(proxy.address) as held:  # open on `one` while it is disabled: it goes on
        assert recv_exactly(held, 4) == b"one:"
        assert ok(sock, "disable", "server", "app", one.address) == "ok\n"
        assert tags(4) == [b"two:"] * 4
        held.sendall(b"still")
        assert recv_exactly(held, 5) == b"still"
    states = {logfmt(line)["server"]: logfmt(line)["state"] for line in ok(sock, "show", "servers").splitlines()}
    assert states == {one.address: "maint", two.address: "up"}
    proxy.send_signal(signal.SIGHUP)  # maintenance stays with a server a reload keeps
    proxy.wait_for(" reloaded ")
    assert tags(2) == [b"two:"] * 2
    assert ok(sock, "enable", "server", "app", one.address) == "ok\n"
    assert b"one:" in tags(2)
    assert "server_disabled" in proxy.log_text() and "server_enabled" in proxy.log_text()
    done = ctl(sock, "disable", "server", "app", "127.0.0.1:1")
    assert (done.returncode, done.stderr) == (1, "pairproxy: no server 127.0.0.1:1 in upstream app\n")


def test_a_server_in_maintenance_stays_there_when_health_checks_pass(tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    checks = ", health_check: {interval: 50ms, rise: 1, fall: 1}"
    proxy, sock = admin_proxy(tmp_path, start_proxy, [one.address, two.address], balance="first", extra=checks)
    ok(sock, "disable", "server", "app", one.address)
    time.sleep(0.3)  # several rounds of checks, all passing
    with connect(proxy.address) as client:
        assert recv_exactly(client, 4) == b"two:"


def test_servers_changed_at_run_time_are_made_again_by_a_reload_that_keeps_them(tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(echo_handler), start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [one.address])
    assert ok(sock, "add", "server", "app", two.address, "weight", "2") == "ok\n"
    assert ok(sock, "set", "server", "app", one.address, "weight", "5") == "ok\n"
    refused = ctl(sock, "add", "server", "app", two.address)
    assert refused.returncode == 1 and refused.stderr == f"pairproxy: upstream app has server {two.address} already\n"
    assert ok(sock, "reload", "--keep-runtime") == "ok\n"
    servers = [logfmt(line)["server"] for line in ok(sock, "show", "servers").splitlines()]
    assert servers == [one.address, two.address]
    answer = ok(sock, "reload")
    assert (
        answer
        == f"ok\ndropped: add server app {two.address} weight 2\ndropped: set server app {one.address} weight 5\n"
    )
    assert [logfmt(line)["server"] for line in ok(sock, "show", "servers").splitlines()] == [one.address]
    assert len([line for line in proxy.lines if " runtime_dropped " in line]) == 2


def test_reload_answers_ok_or_the_errors(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    _proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    assert ok(sock, "reload") == "ok\n"
    assert "reloads: 1" in ok(sock, "show", "info")
    config = tmp_path / "pairproxy.yaml"
    config.write_text(config.read_text() + "bogus: 1\n")
    done = run_cli(["ctl", "reload"], cwd=tmp_path)  # the socket is still found in the broken file
    assert done.returncode == 1
    assert done.stderr.startswith("pairproxy: ") and "unknown key 'bogus'" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "reloads: 1" in ok(sock, "show", "info")


def test_unknown_commands_and_wrong_arguments_are_errors(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    _proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    done = ctl(sock, "shwo", "conns")
    assert (done.returncode, done.stderr) == (
        1,
        "pairproxy: unknown command 'shwo conns' (did you mean 'show conns'?)\n",
    )
    done = ctl(sock, "kill", "conn")
    assert (done.returncode, done.stderr) == (1, "pairproxy: usage: kill conn ID\n")


def test_a_connection_id_is_ascii_digits_or_a_one_line_error(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    for conn in ("\u00b2", "\u0663", "0", "-1", "1e3"):  # str.isdigit() passes the first two
        done = ctl(sock, "kill", "conn", conn)
        assert (done.returncode, done.stderr) == (
            1,
            f"pairproxy: kill conn: {conn!r} is not a connection id (a whole number of at least 1)\n",
        ), conn
    assert "pid: " in ok(sock, "show", "info")
    assert "admin_failed" not in proxy.log_text()


def test_several_commands_on_one_connection_each_answer_ends_with_an_empty_line(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    _proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(str(sock))
        client.sendall(b"show conns\nkill conn 999\nshow servers\n")
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while data := client.recv(65536):
            answer += data
    text = answer.decode()
    # No connections: the empty answer, its empty line alone.
    assert text.startswith("\nerror: no open connection 999\n\nupstream=app ")
    assert text.endswith("\n\n") and text.count("\n\n") == 2


# -- the socket file ------------------------------------------------------------------------


def test_the_socket_is_private_and_removed_at_a_clean_exit(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert proxy.stop() == 0
    assert not sock.exists()


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "admin.sock"))  # bound, never listening, closed: what a killed process leaves
    stale.close()
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    assert "pid: " in ok(sock, "show", "info")
    done = run_cli(["run", "-c", str(tmp_path / "pairproxy.yaml")], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == f"pairproxy: admin socket {sock}: another process is serving on it\n"
    assert f"pid: {proxy.pid}" in ok(sock, "show", "info")  # the first one still owns it


# -- hostile clients ------------------------------------------------------------------------


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the proxy gave up on this client, as it should


def test_hostile_admin_clients_stall_no_traffic(tmp_path, start_proxy, start_upstream):
    size = 32 * 1024 * 1024
    upstream = start_upstream(source_handler(size))
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    long_line, deaf = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    senders = []
    try:
        for client, data in ((long_line, b"x" * 10_000_000), (deaf, b"help\n" * 200_000)):
            client.settimeout(WAIT)
            client.connect(str(sock))
            sender = threading.Thread(target=_send_quietly, args=(client, data), daemon=True)
            sender.start()
            senders.append(sender)
        with connect(proxy.address) as transfer:
            started = time.monotonic()
            assert recv_digest(transfer)[0] == size
            assert time.monotonic() - started < WAIT
        try:
            assert long_line.recv(100).startswith(b"error: line longer than 4096 bytes\n\n")
        except ConnectionResetError:
            pytest.fail("the long line got no error line")
        proxy.wait_for("admin_client_dropped")  # the client that never reads
        for sender in senders:
            sender.join(WAIT)
            assert not sender.is_alive()
    finally:
        long_line.close()
        deaf.close()
    assert "connections: 0" in ok(sock, "show", "info")
    assert proxy.access_lines()[0]["result"] == "closed"


# -- pairproxy ctl ----------------------------------------------------------------------------


def test_ctl_finds_the_socket_in_the_config_file(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, _sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    done = run_cli(["ctl", "show", "info"], cwd=tmp_path)  # -c pairproxy.yaml by default
    assert done.returncode == 0 and f"pid: {proxy.pid}" in done.stdout


@pytest.mark.parametrize(
    ("words", "error"),
    [
        ([" "], "no command given ('pairproxy ctl help' lists them)"),
        (["show info\nreload"], "a command is one line: the words hold a line break"),
        (["show", "caf\udce9"], "the command is not UTF-8 text"),  # a Latin-1 byte in argv, as Python gets it
        (["x" * 5000], "the command is longer than 4096 bytes"),
    ],
)
def test_ctl_refuses_what_cannot_be_one_command(words, error, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, sock = admin_proxy(tmp_path, start_proxy, [upstream.address])
    args = [os.fsencode(word) for word in ["ctl", "-s", str(sock), *words]]
    done = run_cli(args)  # within WAIT: the proxy never answers a blank line, and ctl must not wait for one
    assert (done.returncode, done.stderr) == (2, f"pairproxy: {error}\n")
    assert "reloads: 0" in ok(sock, "show", "info")  # nothing after a line break was done either
    assert "admin_failed" not in proxy.log_text()


def test_ctl_exit_codes_without_a_socket(tmp_path):
    missing = tmp_path / "nothing.sock"
    done = ctl(missing, "show", "info")
    assert (done.returncode, done.stderr) == (1, f"pairproxy: admin socket {missing}: no such file or directory\n")
    refusing = socket.socket(socket.AF_UNIX)
    refusing.bind(str(tmp_path / "dead.sock"))  # nobody listens: refused
    try:
        done = ctl(tmp_path / "dead.sock", "show", "info")
    finally:
        refusing.close()
    assert (done.returncode, done.stderr) == (
        1,
        f"pairproxy: admin socket {tmp_path / 'dead.sock'}: connection refused\n",
    )
    done = run_cli(["ctl", "show", "info"], cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "pairproxy: no admin socket given (-s PATH) and no pairproxy.yaml to find it in\n",
    )
    write(tmp_path, "listeners: [{listen: 8080, upstream: '127.0.0.1:9000'}]\n")
    done = run_cli(["ctl", "show", "info"], cwd=tmp_path)
    assert done.returncode == 2 and "has no admin socket" in done.stderr


# -- the configuration --------------------------------------------------------------------------

LISTENERS = "listeners: [{listen: 8080, upstream: '127.0.0.1:9000'}]\n"


def test_the_admin_section_is_read_relative_to_the_config_file(tmp_path):
    text = "admin: {socket: run/admin.sock, http: '127.0.0.1:0'}\n" + LISTENERS
    admin = parse_config(text, "t.yaml", tmp_path).config.admin
    assert admin.socket == str(tmp_path / "run" / "admin.sock")
    assert admin.http == Address("127.0.0.1", 0)
    assert parse_config(LISTENERS).config.admin is None


@pytest.mark.parametrize(
    ("admin", "error"),
    [
        ("{sockett: a.sock}", "t.yaml:1:9: unknown key 'sockett' in admin (did you mean 'socket'?)"),
        ("{http: nope}", "t.yaml:1:15: http: bad address 'nope': port 'nope' is not a number"),
        ("{socket: ''}", "t.yaml:1:17: socket: must be a non-empty string, got ''"),
        ('{socket: "a\\ud800"}', "t.yaml:1:17: socket: 'a\\ud800' holds a lone surrogate, which no file name can"),
        ("{socket: " + "a" * 120 + "}", "is too long for a UNIX socket (at most 107 bytes)"),
        ("[a]", "t.yaml:1:8: admin must be a mapping of keys, got a list"),
    ],
)
def test_admin_section_errors_are_located(admin, error):
    text = f"admin: {admin}\n" + LISTENERS
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "t.yaml")
    assert error in str(raised.value)


# -- the snapshot -------------------------------------------------------------------------------


def test_server_state_and_its_last_change():
    servers = pool(1, 2)
    one, two = servers.servers
    one.changed_at = two.changed_at = 5.0
    servers.connect_failed(one, 10.0)  # a passive back-off of 1 s
    assert (one.state(10.5), one.last_change(10.5), one.failures) == ("down", 0.5, 1)
    assert (one.state(12.0), one.last_change(12.0)) == ("up", 1.0)  # up again since the back-off ended at 11
    servers.connect_succeeded(one, 12.0, 0.002)
    assert (one.state(13.0), one.last_change(13.0), one.connect_times.count) == ("up", 2.0, 1)
    one.set_maintenance(True, 20.0)
    assert (one.state(25.0), one.last_change(25.0)) == ("maint", 5.0)
    assert servers.check_result(one, True) is False and one.state(25.0) == "maint"  # checks do not bring it back
    assert ports(servers.candidates("10.0.0.1", 25.0)) == [2]
    two.checked_up = False  # every server down or in maintenance: the down ones are tried, never the other
    assert ports(servers.candidates("10.0.0.1", 25.0)) == [2]
    one.set_maintenance(False, 30.0)
    assert ports(servers.candidates("10.0.0.1", 31.0)) == [1]


def test_commands_take_the_arguments_their_usage_names():
    assert commands.Command("kill conn ID", "", commands.kill_conn).takes(["7"])
    assert not commands.Command("kill conn ID", "", commands.kill_conn).takes(["7", "8"])
    rest = commands.Command("dump on FILTER...", "", commands.kill_conn)  # a room left for such commands
    assert rest.takes(["route=api"]) and rest.takes(["route=api", "client=10.0.0.0/8"]) and not rest.takes([])


def test_connect_times_are_a_cumulative_histogram():
    times = ConnectTimes()
    for seconds in (0.0001, 0.0005, 0.003, 0.2, 60.0):
        times.observe(seconds)
    data = times.to_json()
    buckets = dict((bound, count) for bound, count in data["buckets"])
    assert [bound for bound, _ in data["buckets"]] == list(CONNECT_BUCKETS)
    assert (buckets[0.0005], buckets[0.001], buckets[0.005], buckets[0.25], buckets[10.0]) == (2, 2, 3, 4, 4)
    assert buckets[float("inf")] == data["count"] == 5
    assert data["sum"] == pytest.approx(60.2036)


@contextmanager
def serving(config: schema.Config, config_path=None) -> Iterator[Server]:
    """A Server in this process, its loop on a thread; stopped (not closed) when the block ends,
    so that what it holds can be looked at from the test's thread afterwards."""
    server = Server(config, EventLog("error"), config_path=config_path)
    server.bind(signals=False)
    loop = threading.Thread(target=server.reactor.loop, daemon=True)
    loop.start()
    try:
        yield server
    finally:
        server.reactor.call_soon_threadsafe(server.reactor.stop)
        loop.join(WAIT)


def test_an_idle_admin_client_is_closed(tmp_path, start_upstream, monkeypatch):
    monkeypatch.setattr(command_socket, "IDLE_TIMEOUT", 0.5)
    text = f"admin: {{socket: {tmp_path / 'admin.sock'}}}\n" + LISTENERS.replace("8080", "'127.0.0.1:0'")
    with serving(parse_config(text, "t.yaml").config) as server, socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(str(tmp_path / "admin.sock"))
        started = time.monotonic()
        client.sendall(b"help\n")
        assert client.recv(65536).startswith(b"help ")
        assert client.recv(1) == b""
        assert 0.5 <= time.monotonic() - started < WAIT
    server.close()
    assert not (tmp_path / "admin.sock").exists()


def test_one_long_answer_is_sent_whole_past_the_output_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(command_socket, "MAX_OUTPUT", 100)  # less than the answer to `help`
    text = f"admin: {{socket: {tmp_path / 'admin.sock'}}}\n" + LISTENERS.replace("8080", "'127.0.0.1:0'")
    with serving(parse_config(text, "t.yaml").config) as server:
        answers = [command_socket.ask(str(tmp_path / "admin.sock"), "help") for _ in range(2)]
    server.close()
    assert (
        answers[0] == answers[1] and len(answers[0]) > 100 and answers[0].endswith("the toxics in force, one per line")
    )


def test_listener_counters_survive_a_reload_that_keeps_the_listener(tmp_path, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(tmp_path, f'listeners: [{{name: web, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}]\n')
    with serving(parse_config(path.read_text(), str(path)).config, path) as server:
        (frontend,) = server.listeners.values()
        address = frontend.dispatcher.socket.getsockname()
        for count in (1, 2):
            with connect(address) as client:
                client.sendall(b"ab")
                assert recv_exactly(client, 2) == b"ab"
            if count == 1:
                server.reactor.call_soon_threadsafe(server.reload)
                assert wait_until(lambda: server.reloads == 1)
        assert wait_until(lambda: sum(frontend.stats.closed.values()) == 2)
    try:
        (listener,) = server.snapshot()["listeners"]
        assert (listener["connections_total"], listener["bytes_up_total"], listener["bytes_down_total"]) == (2, 4, 4)
    finally:
        server.close()


def test_the_snapshot_counts_what_went_through(tmp_path, start_upstream):
    upstream = start_upstream(echo_handler)
    text = f"""\
        upstreams:
          app: {{servers: ["{upstream.address}", "127.0.0.1:1"]}}
        listeners:
          - {{name: web, listen: "127.0.0.1:0", routes: [{{name: main, upstream: app}}]}}
        """
    with serving(parse_config(textwrap.dedent(text), "t.yaml").config) as server:
        address = server.listeners[next(iter(server.listeners))].dispatcher.socket.getsockname()
        for payload in (b"abc", b"defgh"):
            with connect(address) as client:
                client.sendall(payload)
                assert recv_exactly(client, len(payload)) == payload
        held = connect(address)
        held.sendall(b"1234")
        assert recv_exactly(held, 4) == b"1234"
        assert wait_until(lambda: server.listeners[next(iter(server.listeners))].stats.closed["main", "closed"] == 2)
    try:
        snapshot = json.loads(json.dumps(server.snapshot()))  # plain data all through
        assert set(snapshot) == {"info", "listeners", "servers", "conns", "process", "dns", "dns_queries"}
        assert (snapshot["dns"], snapshot["dns_queries"]) == ([], {})  # no pool follows DNS
        (listener,) = snapshot["listeners"]
        assert (listener["name"], listener["active"], listener["connections_total"]) == ("web", 1, 3)
        assert (listener["bytes_up_total"], listener["bytes_down_total"]) == (12, 12)
        assert listener["closed"] == [{"route": "main", "result": "closed", "count": 2}]
        good, bad = snapshot["servers"]
        assert (good["server"], good["state"], good["total"], good["active"], good["failures"]) == (
            upstream.address,
            "up",
            3,
            1,
            0,
        )
        # round robin: the dead server was tried by one of the three, which then went to the good one
        assert bad["failures"] == 1 and bad["state"] == "down" and bad["total"] == 0
        assert good["connect_seconds"]["count"] == 3 and good["connect_seconds"]["buckets"][-1][1] == 3
        (conn,) = snapshot["conns"]
        assert (conn["route"], conn["state"], conn["bytes_up"], conn["bytes_down"]) == ("main", "relaying", 4, 4)
        info, process = snapshot["info"], snapshot["process"]
        assert (info["connections"], info["listeners"], info["workers"], info["log_dropped"]) == (1, 1, 1, 0)
        assert process["open_fds"] > 0 and process["resident_memory_bytes"] > 0 and process["max_fds"] > 0
        assert 0 < time.time() - process["start_time_seconds"] < 3600 and process["cpu_seconds_total"] > 0
    finally:
        held.close()
        server.close()


def test_dropped_log_lines_stay_counted_after_the_recovery_report():
    read_fd, write_fd = os.pipe()
    output = Output(write_fd, limit=100)
    output.on_recovered = lambda lines, _size: b"lost\n"
    try:
        for _ in range(2000):  # 100 KB of lines: more than the pipe and the queue together hold
            output.write(b"x" * 49 + b"\n")
        dropped = output.dropped_total
        assert dropped == output.dropped_lines > 0
        os.set_blocking(read_fd, False)
        while True:
            try:
                os.read(read_fd, 1 << 20)
            except BlockingIOError:
                break
        output.drain()
        assert (output.dropped_lines, output.dropped_total) == (0, dropped)
    finally:
        output.close()
        os.close(read_fd)
        os.close(write_fd)


@contextmanager
def admin_socket_of(target, path) -> Iterator[io.StringIO]:
    """An admin socket at `path` over `target`, its loop on a thread; what it logged, read after."""
    logged = io.StringIO()
    log = EventLog(stream=logged)
    reactor = Reactor(log)
    served = command_socket.CommandSocket(reactor, str(path), target, log)
    loop = threading.Thread(target=reactor.loop, daemon=True)
    loop.start()
    try:
        yield logged
    finally:
        reactor.call_soon_threadsafe(reactor.stop)
        loop.join(WAIT)
        served.close()
        reactor.close()


def test_a_bug_behind_a_command_is_logged_and_answered_as_an_internal_error(tmp_path):
    """A ValueError from a bug (a merge's int(), a renderer's encoding) is no refusal for the
    operator to read: it is logged as admin_failed and answered as an internal error, whether the
    answer was to come later or at once; the client stays served."""

    def merged_wrongly():
        return Later.of({"info": {}}).then(lambda _snapshot: int("not a count"))

    def listed_wrongly():
        raise ValueError("a bug, not a refusal")

    target = SimpleNamespace(snapshot=merged_wrongly, list_faults=listed_wrongly)
    path = tmp_path / "admin.sock"
    with admin_socket_of(target, path) as logged, socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        client.sendall(b"show info\nfault list\nhelp\n")
        answers = recv_until(client, b"the toxics in force, one per line\n\n")
    assert answers.startswith(b"error: internal error\n\nerror: internal error\n\nhelp ")
    failed = [line for line in logged.getvalue().splitlines() if " admin_failed " in line]
    assert len(failed) == 2 and "not a count" in failed[0] and "a bug, not a refusal" in failed[1]


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    received = b""
    while not received.endswith(end):
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


def _unix_client(path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(WAIT)
    client.connect(str(path))
    return client


def test_a_line_past_the_bound_is_refused_even_whole_in_one_read(tmp_path):
    path = tmp_path / "admin.sock"
    with admin_socket_of(SimpleNamespace(), path), _unix_client(path) as client:
        client.sendall(b"help" + b" " * commands.MAX_LINE + b"\n")
        assert recv_until(client, b"\n\n") == f"error: line longer than {commands.MAX_LINE} bytes\n\n".encode()
        assert client.recv(1) == b""


def test_a_full_admin_socket_refuses_a_newcomer_then_sheds_its_longest_idle_client(tmp_path):
    """MAX_CLIENTS clients that say nothing: a new one is told there is no room, until they have
    been idle for SHED_AFTER; then the one idle longest is closed to make room."""
    path = tmp_path / "admin.sock"
    with admin_socket_of(SimpleNamespace(), path) as logged:
        idle = [_unix_client(path) for _ in range(command_socket.MAX_CLIENTS)]
        try:
            with _unix_client(path) as refused:
                no_room = f"error: more than {command_socket.MAX_CLIENTS} admin clients\n\n"
                assert recv_until(refused, b"\n\n") == no_room.encode()
            time.sleep(command_socket.SHED_AFTER + 0.2)
            with _unix_client(path) as served:
                served.sendall(b"help\n")
                assert recv_until(served, b"one per line\n\n").startswith(b"help ")
            assert idle[0].recv(1) == b""
        finally:
            for client in idle:
                client.close()
    assert " admin_client_dropped " in logged.getvalue()
