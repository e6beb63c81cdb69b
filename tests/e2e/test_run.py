"""End to end: `pairproxy run` and `check` on route table files, with real upstreams."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from proxy.protocol import proxyproto
from tests.support import (
    WAIT,
    ask,
    connect,
    echo_handler,
    free_port,
    recv_exactly,
    run_cli,
    tagged,
    wait_until,
    write,
)


def test_run_serves_several_listeners(tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    path = write(
        tmp_path,
        f"""\
        upstreams:
          first: {{servers: ["{one.address}"]}}
        listeners:
          - {{name: a, listen: "127.0.0.1:0", upstream: first}}
          - {{name: b, listen: "127.0.0.1:0", upstream: "{two.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path), wait_listening=2)
    a, b = (("127.0.0.1", int(address.rsplit(":", 1)[1])) for address in proxy.addresses)
    assert ask(a, b"x") == b"one:x"
    assert ask(b, b"y") == b"two:y"
    lines = proxy.wait_access(2)
    assert {line["listener"] for line in lines} == {"a", "b"}
    assert proxy.stop() == 0


def test_retries_reach_the_second_server_when_the_first_refuses(tmp_path, start_proxy, start_upstream):
    good = start_upstream(tagged(b"good:"))
    path = write(
        tmp_path,
        f"""\
        upstreams:
          pool:
            servers: ["127.0.0.1:{free_port()}", "{good.address}"]
            balance: first
            retries: 1
        listeners:
          - listen: "127.0.0.1:0"
            upstream: pool
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    assert ask(proxy.address, b"!") == b"good:!"
    access = proxy.wait_access(1)[0]
    assert access["server"] == good.address
    assert access["result"] == "closed"
    assert "connection refused" in proxy.wait_for("connect_failed")


def test_round_robin_spreads_thirty_connections_ten_each(tmp_path, start_proxy, start_upstream):
    servers = [start_upstream(tagged(b"%d" % i)) for i in range(3)]
    addresses = ", ".join(f'"{server.address}"' for server in servers)
    path = write(
        tmp_path,
        f"""\
        upstreams:
          pool: {{servers: [{addresses}], balance: round_robin}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: pool}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    answers = [ask(proxy.address)[:1] for _ in range(30)]
    assert sorted(answers.count(tag) for tag in (b"0", b"1", b"2")) == [10, 10, 10]
    assert [server.accepted for server in servers] == [10, 10, 10]


def test_max_connections_closes_the_extra_client_at_once(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", upstream: "{upstream.address}", max_connections: 2}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    held = [connect(proxy.address) for _ in range(2)]
    try:
        for client in held:
            client.sendall(b"hi")
            assert recv_exactly(client, 2) == b"hi"
        with connect(proxy.address) as extra:
            assert extra.recv(1) == b""
        limited = proxy.wait_for("result=limit")
        assert "max_connections 2 reached" in limited
    finally:
        for client in held:
            client.close()
    proxy.wait_access(3)
    with connect(proxy.address) as again:  # the count went down as the held ones closed
        again.sendall(b"ok")
        assert recv_exactly(again, 2) == b"ok"


def _from(source_ip: str, address) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(WAIT)
    sock.bind((source_ip, 0))
    sock.connect(address)
    return sock


def test_allow_and_deny_by_source_address(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            upstream: "{upstream.address}"
            allow: [127.0.0.0/8]
            deny: [127.0.0.2]
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    with _from("127.0.0.2", proxy.address) as denied:
        assert denied.recv(1) == b""
    with _from("127.0.0.3", proxy.address) as allowed:
        allowed.sendall(b"in")
        assert recv_exactly(allowed, 2) == b"in"
    lines = proxy.wait_access(2)
    by_client = {line["client"].rsplit(":", 1)[0]: line for line in lines}
    assert by_client["127.0.0.2"]["result"] == "denied"
    assert by_client["127.0.0.3"]["result"] == "closed"
    assert upstream.accepted == 1


def test_routes_by_source_and_no_route(tmp_path, start_proxy, start_upstream):
    inner, outer = start_upstream(tagged(b"inner")), start_upstream(tagged(b"outer"))
    path = write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            routes:
              - name: special
                match: {{source: [127.0.0.2]}}
                upstream: "{inner.address}"
              - match: {{source: [127.0.0.0/30]}}
                upstream: "{outer.address}"
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    with _from("127.0.0.2", proxy.address) as client:
        assert recv_exactly(client, 5) == b"inner"
    with _from("127.0.0.3", proxy.address) as client:
        assert recv_exactly(client, 5) == b"outer"
    with _from("127.0.0.9", proxy.address) as client:
        assert client.recv(1) == b""
    lines = proxy.wait_access(3)
    routes = {line["client"].rsplit(":", 1)[0]: (line.get("route"), line["result"]) for line in lines}
    assert routes["127.0.0.2"][0] == "special"
    assert routes["127.0.0.3"][0] == "1"
    assert routes["127.0.0.9"] == (None, "no_route")


def _header_recorder(seen: list):
    def handler(conn: socket.socket) -> None:
        data = b""
        while True:
            result = proxyproto.parse(data)
            if result is not proxyproto.NEED_MORE:
                break
            chunk = conn.recv(4096)
            assert chunk
            data += chunk
        info, length = result
        seen.append(info)
        conn.sendall(b"ok" + data[length:])
        echo_handler(conn)

    return handler


@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_header_reaches_the_upstream(tmp_path, start_proxy, start_upstream, version, listen):
    seen = []
    upstream = start_upstream(_header_recorder(seen))
    path = write(
        tmp_path,
        f"""\
        upstreams:
          app: {{servers: ["{upstream.address}"], proxy_protocol: {version}}}
        listeners:
          - {{listen: "{listen}:0", upstream: app}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    reached = ("127.0.0.1", proxy.address[1])  # on 0.0.0.0 the header names the address the client reached
    with _from("127.0.0.5", reached) as client:
        client.sendall(b"payload")
        assert recv_exactly(client, 2 + 7) == b"okpayload"
        client_port = client.getsockname()[1]
    (info,) = seen
    assert info.source == ("127.0.0.5", client_port)
    assert info.destination == reached
    assert proxy.wait_access(1)[0]["bytes_up"] == "7"


@pytest.mark.parametrize(
    "header",
    [
        proxyproto.encode_v1(("10.1.2.3", 5555), ("192.0.2.1", 443)),
        proxyproto.encode_v2(("10.1.2.3", 5555), ("192.0.2.1", 443)),
    ],
    ids=["v1", "v2"],
)
def test_accepted_proxy_header_decides_routing_and_logging(tmp_path, start_proxy, start_upstream, header):
    inner, outer = start_upstream(tagged(b"inner:")), start_upstream(tagged(b"outer:"))
    path = write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            accept_proxy_protocol: true
            deny: [10.9.0.0/16]
            routes:
              - match: {{source: [10.1.0.0/16]}}
                upstream: "{inner.address}"
              - upstream: "{outer.address}"
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    assert ask(proxy.address, header + b"data") == b"inner:data"
    access = proxy.wait_access(1)[0]
    assert access["client"] == "10.1.2.3:5555"
    assert access["bytes_up"] == "4"
    denied = proxyproto.encode_v1(("10.9.0.1", 1), ("192.0.2.1", 443))
    assert ask(proxy.address, denied + b"data") == b""
    assert proxy.wait_access(2)[1]["result"] == "denied"


def test_malformed_proxy_header_closes_the_client(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", accept_proxy_protocol: true, upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    assert ask(proxy.address, b"GET / HTTP/1.1\r\n\r\n") == b""
    access = proxy.wait_access(1)[0]
    assert access["result"] == "protocol_error"
    assert access["reason"].startswith("PROXY header: ")
    assert upstream.accepted == 0


def test_active_health_check_marks_a_dead_server_down(tmp_path, start_proxy, start_upstream):
    good = start_upstream(tagged(b"good"))
    dead = f"127.0.0.1:{free_port()}"
    path = write(
        tmp_path,
        f"""\
        upstreams:
          pool:
            servers: ["{dead}", "{good.address}"]
            balance: first
            retries: 0
            health_check: {{interval: 100ms, timeout: 200ms, rise: 1, fall: 1}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: pool}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    down = proxy.wait_for("server_down")
    assert f"server={dead}" in down
    # With retries 0, only a pool that skips the dead server can answer.
    assert ask(proxy.address)[:4] == b"good"


def test_check_accepts_a_valid_file_with_a_summary(tmp_path):
    path = write(
        tmp_path,
        """\
        upstreams:
          api: {servers: [9001, 9002]}
        listeners:
          - {listen: 8080, upstream: api}
          - listen: 8081
            routes:
              - {match: {source: [10.0.0.0/8]}, upstream: api}
              - upstream: 9003
        """,
    )
    result = run_cli(["check", "-c", str(path)])
    assert result.returncode == 0
    assert result.stdout == f"{path}: OK: 2 listeners, 3 routes, 2 upstreams\n"
    assert result.stderr == ""


def test_check_reports_every_error_with_its_place_and_exits_2(tmp_path):
    write(
        tmp_path,
        """\
        upstreams:
          api: {servers: [9001]}
        listeners:
          - listen: 8080
            upstream: ap
            idle_timeout: soon
        """,
        name="routes.yaml",
    )
    result = run_cli(["check", "-c", "routes.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "routes.yaml:5:15: upstream 'ap' is not defined (did you mean 'api'?)",
        "routes.yaml:6:19: idle_timeout: bad duration 'soon': use seconds or a unit, e.g. 250ms, 5s, 2m, 1h",
    ]
    assert result.stdout == ""


def test_check_defaults_to_pairproxy_yaml_and_says_when_it_is_missing(tmp_path):
    result = run_cli(["check"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "pairproxy.yaml: cannot read: no such file or directory\n"


def test_check_warns_but_passes(tmp_path):
    path = write(
        tmp_path,
        """\
        upstreams:
          spare: {servers: [9001]}
        listeners:
          - {listen: 8080, upstream: 9000}
        """,
    )
    result = run_cli(["check", "-c", str(path)])
    assert result.returncode == 0
    assert "warning: upstream 'spare' is not used by any route" in result.stderr


def test_sighup_switches_new_connections_and_keeps_the_old_one(tmp_path, start_proxy, start_upstream):
    old, new = start_upstream(tagged(b"old:")), start_upstream(tagged(b"new:"))
    port = free_port()
    template = """\
        listeners:
          - {{listen: "127.0.0.1:{port}", upstream: "{upstream}"}}
        """
    path = write(tmp_path, template.format(port=port, upstream=old.address))
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as kept:
        assert recv_exactly(kept, 4) == b"old:"
        write(tmp_path, template.format(port=port, upstream=new.address))
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for("reloaded")
        assert ask(proxy.address, b"n")[:4] == b"new:"
        kept.sendall(b"still")
        assert recv_exactly(kept, 5) == b"still"
    assert proxy.wait_for("reloaded").count("kept=1")


def test_sighup_with_a_broken_file_keeps_the_old_table(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(tagged(b"old:"))
    path = write(tmp_path, f'listeners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    proxy = start_proxy("run", "-c", str(path))
    path.write_text("listeners:\n  - listen: 8080\n    upstrem: 9000\n")
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for("reload_rejected")
    assert "pairproxy.yaml:3:5: unknown key 'upstrem' in listener" in proxy.log_text()
    assert ask(proxy.address, b"x") == b"old:x"
    assert proxy.proc.poll() is None


def test_sighup_stops_removed_listeners_and_starts_new_ones(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    kept_port, removed_port, added_port = free_port(), free_port(), free_port()
    listener = '  - {{name: {name}, listen: "127.0.0.1:{port}", upstream: "{upstream}"}}\n'
    path = write(
        tmp_path,
        "listeners:\n"
        + listener.format(name="kept", port=kept_port, upstream=upstream.address)
        + listener.format(name="removed", port=removed_port, upstream=upstream.address),
    )
    proxy = start_proxy("run", "-c", str(path), wait_listening=2)
    with connect(("127.0.0.1", kept_port)) as open_before:
        path.write_text(
            "listeners:\n"
            + listener.format(name="kept", port=kept_port, upstream=upstream.address)
            + listener.format(name="added", port=added_port, upstream=upstream.address)
        )
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for("reloaded")
        assert ask(("127.0.0.1", added_port), b"a") == b"a"
        assert ask(("127.0.0.1", kept_port), b"k") == b"k"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", removed_port), timeout=WAIT).close()
        open_before.sendall(b"open")
        assert recv_exactly(open_before, 4) == b"open"


def _listening_inode(pid: int, port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:`port`, checked to be one of `pid`'s fds."""
    wanted = f"0100007F:{port:04X}"
    inodes = [
        int(fields[9])
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1] == wanted and fields[3] == "0A"  # 0A: LISTEN
    ]
    assert len(inodes) == 1, f"listening sockets on {wanted}: {inodes}"
    fds = Path(f"/proc/{pid}/fd")
    held = {fd.readlink().as_posix() for fd in fds.iterdir()}
    assert f"socket:[{inodes[0]}]" in held, "the listening socket is not the proxy's"
    return inodes[0]


def test_sighup_keeps_an_unchanged_listeners_socket_while_clients_keep_connecting(
    tmp_path, start_proxy, start_upstream
):
    """Reloads under a stream of connections: none is refused, and the listening socket is the same one."""
    upstream = start_upstream(echo_handler)
    kept_port, other_port = free_port(), free_port()
    kept = f'  - {{name: kept, listen: "127.0.0.1:{kept_port}", upstream: "{upstream.address}"}}\n'
    other = '  - {{name: other, listen: "127.0.0.1:{port}", upstream: "{upstream}"}}\n'
    path = write(tmp_path, "listeners:\n" + kept)
    proxy = start_proxy("run", "-c", str(path))
    before = _listening_inode(proxy.pid, kept_port)
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        deadline = time.monotonic() + 4 * WAIT
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                outcomes.append("ok" if ask(("127.0.0.1", kept_port), b"ping") == b"ping" else "bad")
            except ConnectionRefusedError:
                outcomes.append("refused")
            except OSError as exc:
                outcomes.append(f"error: {exc}")

    def twenty_more() -> bool:
        target = len(outcomes) + 20
        return wait_until(lambda: len(outcomes) >= target)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for round_ in range(6):
            assert twenty_more()
            # Another listener comes and goes with each reload; the kept one stays as it was.
            text = "listeners:\n" + kept
            if round_ % 2 == 0:
                text += other.format(port=other_port, upstream=upstream.address)
            path.write_text(text)
            proxy.send_signal(signal.SIGHUP)
            assert wait_until(lambda round_=round_: proxy.log_text().count(" reloaded ") > round_)
        assert twenty_more()
    finally:
        stop.set()
        thread.join(5 * WAIT)
    assert not thread.is_alive()
    assert proxy.log_text().count("kept=1") == 6
    assert outcomes.count("ok") == len(outcomes), [outcome for outcome in outcomes if outcome != "ok"][:5]
    assert len(outcomes) >= 140
    assert _listening_inode(proxy.pid, kept_port) == before


def test_sigterm_drains_run_with_an_open_connection(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        defaults: {{shutdown_grace: 500ms}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        started = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(WAIT) == 0
        assert 0.4 < time.monotonic() - started < 5
        assert client.recv(1) == b""
    assert wait_until(lambda: proxy.access_lines() and proxy.access_lines()[0]["result"] == "shutdown")
