"""End to end: pools that follow DNS, against a real dnsmasq (and a tiny nameserver of the
test's own for silence and garbage): records that change while traffic flows, SRV priorities
and weights, truncated answers, nameservers that fail, a registry of 10,000 records, TTL 0."""

from __future__ import annotations

import functools
import ipaddress
import json
import threading
import time
from collections import Counter

import pytest

from tests.support import (
    admin_address,
    ask,
    connect,
    ctl,
    free_port,
    http,
    logfmt,
    metrics,
    ok,
    peer_reporter,
    recv_exactly,
    reload,
    run_cli,
    server_context,
    stopped_at_teardown,
    tagged,
    tls_upstream,
    wait_until,
    write,
)
from tests.support.dns import Dnsmasq, TinyNameserver, upstreams_on_one_port


@pytest.fixture
def start_dnsmasq(tmp_path):
    yield from stopped_at_teardown(functools.partial(Dnsmasq, tmp_path))


@pytest.fixture
def on_one_port():
    started = []

    def start(handlers):
        upstreams = upstreams_on_one_port(handlers)
        started.extend(upstreams)
        return upstreams

    yield start
    for upstream in started:
        upstream.close()


def _table(
    nameservers: list[str], upstream: str, *, timeout: str = "0.5s", hold: str = "1s", obsolete="30s", more=""
) -> str:
    return f"""\
        admin: {{http: "127.0.0.1:0"}}
        {more}
        resolvers:
          nameservers: [{", ".join(nameservers)}]
          timeout: {timeout}
          hold_valid: {hold}
          hold_obsolete: {obsolete}
          attempts: 1
        upstreams:
          app:
            {upstream}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: app}}
        """


def _events(proxy, event: str) -> list[dict[str, str]]:
    return [logfmt(line) for line in proxy.lines if f" {event} " in line]


def test_the_servers_follow_the_records_and_a_server_that_leaves_finishes_its_connections(
    tmp_path, start_proxy, start_dnsmasq, on_one_port
):
    first, _second = on_one_port({"127.0.0.2": tagged(b"first:"), "127.0.0.3": tagged(b"second:")})
    port = first.port
    nameserver = start_dnsmasq({"app.test": ["127.0.0.2"]}, ttl=1)
    table = _table([nameserver.address], f"servers: [{{address: 'app.test:{port}', resolve: all}}]")
    proxy = start_proxy("run", "-c", str(write(tmp_path, table)))
    proxy.wait_for(lambda line: " dns_changed " in line and "127.0.0.2" in line)
    assert ask(proxy.address, b"x")[:6] == b"first:"

    failures: list[BaseException] = []
    stop = threading.Event()

    def clients() -> None:  # connections made all through the change: none may fail
        while not stop.is_set():
            try:
                reply = ask(proxy.address, b"x")
                assert reply.startswith((b"first:", b"second:")), reply
            except (OSError, AssertionError) as exc:
                failures.append(exc)

    with connect(proxy.address) as staying:
        staying.sendall(b"1")
        assert recv_exactly(staying, 7) == b"first:1"
        traffic = threading.Thread(target=clients)
        traffic.start()
        try:
            nameserver.set_hosts({"app.test": ["127.0.0.3"]})
            changed = proxy.wait_for(lambda line: " dns_changed " in line and "127.0.0.3" in line, timeout=5)
            assert f"added=[127.0.0.3:{port}]" in changed and f"removed=[127.0.0.2:{port}]" in changed, changed
            assert ask(proxy.address, b"x")[:7] == b"second:"
            # The connection opened on the server that left goes on, untouched.
            staying.sendall(b"2")
            assert recv_exactly(staying, 1) == b"2"
        finally:
            stop.set()
            traffic.join(10)
    assert not failures, failures[:3]
    results = Counter(line["result"] for line in proxy.access_lines())
    assert set(results) == {"closed"}, results


def _count_tags(proxy, count: int) -> Counter:
    return Counter(ask(proxy.address, b"x").split(b":")[0].decode() for _ in range(count))


def test_srv_priorities_are_tiers_and_weights_share_the_connections(
    tmp_path, start_proxy, start_dnsmasq, start_upstream
):
    heavy, light, backup = (start_upstream(tagged(tag)) for tag in (b"heavy:", b"light:", b"backup:"))
    nameserver = start_dnsmasq(
        {},
        srv=(
            f"_app._tcp.test,heavy.test,{heavy.port},10,30",
            f"_app._tcp.test,light.test,{light.port},10,10",
            f"_app._tcp.test,backup.test,{backup.port},20,100",
        ),
        records=("heavy.test,127.0.0.1", "light.test,127.0.0.1", "backup.test,127.0.0.1"),
    )
    table = _table([nameserver.address], "discover: {srv: _app._tcp.test}")
    proxy = start_proxy("run", "-c", str(write(tmp_path, table)))
    proxy.wait_for(" dns_changed ")
    assert _count_tags(proxy, 40) == {"heavy": 30, "light": 10}  # weights 30:10, the backup tier unused
    heavy.close()
    light.close()
    # Both servers of the first tier refuse: the next tier serves (passive health skips the dead).
    assert _count_tags(proxy, 5) == {"backup": 5}


def test_a_truncated_answer_is_asked_again_over_tcp_and_route_shows_every_server(
    tmp_path, start_proxy, start_dnsmasq, on_one_port
):
    (upstream,) = on_one_port({"127.0.0.2": tagged(b"one:")})
    many = ["127.0.0.2", *(f"127.0.1.{n}" for n in range(1, 100))]  # too many for a datagram
    nameserver = start_dnsmasq({"app.test": many})
    assert nameserver.ask("app.test").flags & 0x0200 == 0  # TCP holds them all
    table = _table([nameserver.address], f"servers: [{{address: 'app.test:{upstream.port}', resolve: all}}]")
    path = write(tmp_path, table)
    proxy = start_proxy("run", "-c", str(path))
    changed = logfmt(proxy.wait_for(" dns_changed "))
    assert len(changed["added"].strip("[]").split(",")) == 100
    found = metrics(admin_address(proxy))
    assert found[("pairproxy_dns_queries_total", (("result", "truncated"),))] >= 1
    assert found[("pairproxy_dns_queries_total", (("result", "ok"),))] >= 2  # over TCP, and AAAA's
    assert not _events(proxy, "dns_failed")
    routed = run_cli(["route", "-c", str(path), "--listener", "127.0.0.1:0", "--client", "10.0.0.1", "--json"])
    assert routed.returncode == 0, routed.stderr
    plan = json.loads(routed.stdout)["upstream"]
    assert len(plan["servers"]) == 100 and plan["dns"] == ["app.test (A/AAAA): 100 servers"]


def _server_count(proxy) -> int:
    found = metrics(admin_address(proxy))
    return sum(1 for name, _labels in found if name == "pairproxy_server_up")


def test_a_silent_nameserver_is_passed_over_and_the_last_good_answer_outlives_a_dead_one_for_hold_obsolete(
    tmp_path, start_proxy, start_dnsmasq, on_one_port
):
    (upstream,) = on_one_port({"127.0.0.2": tagged(b"one:")})
    silent = TinyNameserver(lambda _query, _tcp: None)
    try:
        nameserver = start_dnsmasq({"app.test": ["127.0.0.2"]})
        upstream_text = f"servers: [{{address: 'app.test:{upstream.port}', resolve: all}}]"
        table = _table([silent.address, nameserver.address], upstream_text, timeout="0.2s", obsolete="1.5s")
        proxy = start_proxy("run", "-c", str(write(tmp_path, table)))
        proxy.wait_for(" dns_changed ")
        assert metrics(admin_address(proxy))[("pairproxy_dns_queries_total", (("result", "timeout"),))] >= 1
        nameserver.close()
        failed = logfmt(proxy.wait_for(" dns_failed "))
        assert failed["kept"] == "1" and failed["pool"] == "app", failed
        assert f"{silent.address}: no answer in 0.2s" in failed["reason"], failed
        assert ask(proxy.address, b"x") == b"one:x"  # the last good answer still serves
        dropped = logfmt(proxy.wait_for(lambda line: " dns_failed " in line and "dropped=" in line))
        assert dropped["kept"] == "0" and float(dropped["age"]) > 1.5, dropped
        back = logfmt(proxy.wait_for(lambda line: " dns_changed " in line and "removed=[127.0.0.2" in line))
        assert back["added"] == f"[app.test:{upstream.port}]"  # the name stands for itself again
    finally:
        silent.close()


def test_garbage_from_one_nameserver_is_passed_over_and_nxdomain_is_said(tmp_path, start_proxy, start_dnsmasq):
    garbling = TinyNameserver(lambda _query, _tcp: b"\x00\x00garbage")
    try:
        nameserver = start_dnsmasq({"app.test": ["127.0.0.2"]})
        servers = "servers: [{address: 'app.test:9', resolve: all}, {address: 'gone.test:9', resolve: all}]"
        proxy = start_proxy("run", "-c", str(write(tmp_path, _table([garbling.address, nameserver.address], servers))))
        changed = logfmt(proxy.wait_for(" dns_changed "))
        assert changed["added"] == "[127.0.0.2:9]", changed
        failed = logfmt(proxy.wait_for(" dns_failed "))
        assert failed["name"] == "gone.test" and failed["reason"] == "gone.test: no such name (NXDOMAIN)", failed
        assert metrics(admin_address(proxy))[("pairproxy_dns_queries_total", (("result", "error"),))] >= 2
    finally:
        garbling.close()


def test_a_registry_of_ten_thousand_records_is_bounded_by_max_servers(tmp_path, start_proxy, start_dnsmasq):
    hosts = {f"n{n}.test": [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"] for n in range(10_000)}
    srv = tuple(f"_big._tcp.test,n{n}.test,9,{n % 3},1" for n in range(10_000))
    nameserver = start_dnsmasq(hosts, srv=srv)  # the most one answer holds: about 2,000 of them, over TCP
    discover = "discover: {srv: _big._tcp.test}\n            max_servers: 50"
    proxy = start_proxy("run", "-c", str(write(tmp_path, _table([nameserver.address], discover, timeout="2s"))))
    bounded = logfmt(proxy.wait_for(" dns_bounded ", timeout=15))
    assert int(bounded["unasked"]) > 1000 and bounded["kept"] == "50" and bounded["max_servers"] == "50", bounded
    assert _server_count(proxy) == 50
    added = logfmt(proxy.wait_for(" dns_changed "))["added"].strip("[]").split(",")
    assert len(added) == 50
    # The first tier (priority 0: n0, n3, n6, ...) fills the bound, and only its targets were looked up.
    numbers = [int(ipaddress.ip_address(each[:-2])) - int(ipaddress.ip_address("10.0.0.0")) for each in added]
    assert all(n % 3 == 0 for n in numbers), added
    found = metrics(admin_address(proxy))
    asked = sum(count for (name, _labels), count in found.items() if name == "pairproxy_dns_queries_total")
    assert asked <= 1 + 1 + 2 * 50, asked  # the SRV name (truncated, then TCP), A and AAAA of 50 targets


def test_a_ttl_of_zero_is_asked_again_each_second_not_in_a_loop(tmp_path, start_proxy, start_dnsmasq, on_one_port):
    first, _second = on_one_port({"127.0.0.2": tagged(b"first:"), "127.0.0.3": tagged(b"second:")})
    nameserver = start_dnsmasq({"app.test": ["127.0.0.2"]}, ttl=0)
    servers = f"servers: [{{address: 'app.test:{first.port}', resolve: all}}]"
    started = time.monotonic()
    proxy = start_proxy("run", "-c", str(write(tmp_path, _table([nameserver.address], servers, hold="10s"))))
    proxy.wait_for(" dns_changed ")
    nameserver.set_hosts({"app.test": ["127.0.0.3"]})
    proxy.wait_for(lambda line: " dns_changed " in line and "127.0.0.3" in line, timeout=4)
    assert ask(proxy.address, b"x") == b"second:x"
    found = metrics(admin_address(proxy))
    asked = sum(count for (name, _labels), count in found.items() if name == "pairproxy_dns_queries_total")
    assert asked <= 2 * (time.monotonic() - started + 2), found  # A and AAAA once a second, not thousands


def test_a_reload_keeps_the_servers_dns_gave_and_status_shows_the_answers_age(
    tmp_path, start_proxy, start_dnsmasq, on_one_port
):
    (upstream,) = on_one_port({"127.0.0.2": tagged(b"one:")})
    nameserver = start_dnsmasq({"app.test": ["127.0.0.2"]})
    servers = f"servers: [{{address: 'app.test:{upstream.port}', resolve: all}}]"
    proxy = start_proxy("run", "-c", str(write(tmp_path, _table([nameserver.address], servers))))
    proxy.wait_for(" dns_changed ")
    reload(proxy, 1)
    assert ask(proxy.address, b"x") == b"one:x"
    time.sleep(0.5)  # the reload's watch has asked again, and found the same server
    assert len(_events(proxy, "dns_changed")) == 1, proxy.log_text()
    status, _headers, page = http(admin_address(proxy), "/status")
    assert status == 200 and b"app.test" in page and b" ago" in page
    age = metrics(admin_address(proxy))[
        ("pairproxy_dns_answer_age_seconds", (("name", "app.test"), ("upstream", "app")))
    ]
    assert 0 <= age < 5


def test_an_srv_target_without_an_address_is_no_server_and_no_bound(tmp_path, start_proxy, start_dnsmasq):
    nameserver = start_dnsmasq(
        {"one.test": ["127.0.0.2"]},
        srv=("_app._tcp.test,one.test,9,1,1", "_app._tcp.test,gone.test,9,1,1"),  # gone.test: NXDOMAIN
    )
    proxy = start_proxy(
        "run", "-c", str(write(tmp_path, _table([nameserver.address], "discover: {srv: _app._tcp.test}")))
    )
    assert logfmt(proxy.wait_for(" dns_changed "))["added"] == "[127.0.0.2:9]"
    time.sleep(0.3)
    assert not _events(proxy, "dns_bounded"), proxy.log_text()


# -- the servers DNS gives and the features of their upstream ---------------------------------


def _source_of(address) -> str:
    """The address the upstream saw the proxy's connection come from."""
    with connect(address) as client:
        return client.recv(64).decode().split()[0]


def test_servers_from_dns_or_added_at_run_time_connect_from_their_source_and_so_do_their_checks(
    tmp_path, start_proxy, start_dnsmasq, start_upstream
):
    checked: list[str] = []

    def recording(conn) -> None:
        checked.append(conn.getpeername()[0])
        peer_reporter(conn)

    named, found, added = start_upstream(peer_reporter), start_upstream(recording), start_upstream(peer_reporter)
    nameserver = start_dnsmasq(
        {"app.test": ["127.0.0.1"], "node.test": ["127.0.0.1"]}, srv=(f"_app._tcp.test,node.test,{found.port},1,1",)
    )
    placeholder = f"127.0.0.1:{free_port()}"
    table = f"""\
        admin: {{socket: admin.sock}}
        resolvers: {{nameservers: [{nameserver.address}], timeout: 0.5s, attempts: 1, hold_valid: 1s}}
        upstreams:
          named:
            servers: [{{address: "app.test:{named.port}", resolve: all, source: 127.0.0.3}}]
            source: 127.0.0.2
          found:
            discover: {{srv: _app._tcp.test}}
            source: 127.0.0.4
            health_check: {{interval: 0.2s, timeout: 1s}}
          added:
            servers: ["{placeholder}"]
            source: 127.0.0.5
        listeners:
          - {{name: named, listen: "127.0.0.1:0", upstream: named}}
          - {{name: found, listen: "127.0.0.1:0", upstream: found}}
          - {{name: added, listen: "127.0.0.1:0", upstream: added}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, table)), wait_listening=3)
    proxy.wait_for(lambda line: " dns_changed " in line and "name=app.test" in line)
    proxy.wait_for(lambda line: " dns_changed " in line and "name=_app._tcp.test" in line)
    sock_path = tmp_path / "admin.sock"
    ok(sock_path, "add", "server", "added", added.address)
    ok(sock_path, "del", "server", "added", placeholder)
    # The listed server's own source, inherited by the addresses its name gives; the upstream's
    # for the SRV targets and for a server an operator added.
    assert _source_of(proxy.listener_address("named")) == "127.0.0.3"
    assert _source_of(proxy.listener_address("found")) == "127.0.0.4"
    assert _source_of(proxy.listener_address("added")) == "127.0.0.5"
    assert wait_until(lambda: len(checked) >= 3)
    assert set(checked) == {"127.0.0.4"}, checked


def test_an_address_of_the_other_family_than_the_source_is_no_server_and_is_said(
    tmp_path, start_proxy, start_dnsmasq, start_upstream
):
    upstream = start_upstream(peer_reporter)
    nameserver = start_dnsmasq({"app.test": ["127.0.0.1", "::1"]})
    table = f"""\
        admin: {{socket: admin.sock}}
        resolvers: {{nameservers: [{nameserver.address}], timeout: 0.5s, attempts: 1, hold_valid: 1s}}
        upstreams:
          app:
            servers: [{{address: "app.test:{upstream.port}", resolve: all}}]
            source: 127.0.0.2
            retries: 0
        listeners:
          - {{listen: "127.0.0.1:0", upstream: app}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, table)))
    changed = logfmt(proxy.wait_for(" dns_changed "))
    assert changed["added"] == f"[127.0.0.1:{upstream.port}]", changed
    assert changed["other_family"] == f"[[::1]:{upstream.port}]", changed
    assert changed["source"] == "127.0.0.2", changed
    for _ in range(4):  # every connection reaches the server, none fails to bind
        assert _source_of(proxy.address) == "127.0.0.2"
    time.sleep(1.2)  # asked again, the same answer: nothing more is said
    assert len(_events(proxy, "dns_changed")) == 1, proxy.log_text()
    refused = ctl(tmp_path / "admin.sock", "add", "server", "app", f"[::1]:{upstream.port}")
    assert refused.returncode != 0
    assert f"source 127.0.0.2 is IPv4 and server [::1]:{upstream.port} is not" in refused.stdout + refused.stderr
    assert {line["result"] for line in proxy.wait_access(4)} == {"closed"}


def test_tls_to_servers_from_dns_checks_and_sends_the_name_they_were_found_by(
    tmp_path, pki, start_proxy, start_dnsmasq, start_upstream
):
    names: list[str | None] = []
    context = server_context(pki, "upstream")
    context.sni_callback = lambda _sock, name, _context: names.append(name)
    upstream = start_upstream(tls_upstream(context, b"tls:"))
    nameserver = start_dnsmasq(
        {"upstream.test": ["127.0.0.1"]}, srv=(f"_app._tcp.test,upstream.test,{upstream.port},1,1",)
    )
    table = f"""\
        resolvers: {{nameservers: [{nameserver.address}], timeout: 0.5s, attempts: 1}}
        upstreams:
          named:
            servers: [{{address: "upstream.test:{upstream.port}", resolve: all}}]
            tls: {{verify: true, ca: "{pki["ca"]}"}}
          found:
            discover: {{srv: _app._tcp.test}}
            tls: {{verify: true, ca: "{pki["ca"]}"}}
        listeners:
          - {{name: named, listen: "127.0.0.1:0", upstream: named}}
          - {{name: found, listen: "127.0.0.1:0", upstream: found}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, table)), wait_listening=2)
    proxy.wait_for(lambda line: " dns_changed " in line and "name=upstream.test" in line)
    proxy.wait_for(lambda line: " dns_changed " in line and "name=_app._tcp.test" in line)
    for listener in ("named", "found"):
        with connect(proxy.listener_address(listener)) as client:
            assert recv_exactly(client, 4) == b"tls:"
    assert names == ["upstream.test", "upstream.test"]
    assert {line["result"] for line in proxy.wait_access(2)} == {"closed"}
