"""End to end: a connection's timeline (`conn_event` lines at debug level) and the access line's
`close_by` and `connect_ms` (at every level), with the real command and real sockets."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
import trustme

from tests.support import ask, connect, echo_handler, free_port, logfmt, recv_all, recv_exactly, wait_until, write


def timeline(proxy, conn: str = "1", last: str = "closed") -> list[dict[str, str]]:
    """The `conn_event` lines of connection `conn`, once its `last` event is logged."""
    proxy.wait_for(lambda line: " conn_event " in line and f"conn={conn} " in line and f"event={last} " in line)
    events = [logfmt(line) for line in list(proxy.lines) if " conn_event " in line]
    return [event for event in events if event["conn"] == conn]


def names(events: list[dict[str, str]]) -> list[str]:
    return [event["event"] for event in events]


def one(events: list[dict[str, str]], name: str, **match: str) -> dict[str, str]:
    (event,) = [e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())]
    return event


def assert_monotonic(events: list[dict[str, str]]) -> None:
    times = [float(event["t_ms"]) for event in events]
    assert all(len(event["t_ms"].split(".")[1]) == 3 for event in events)  # three decimals
    assert times == sorted(times) and times[0] >= 0, times


def test_a_plain_connection_tells_each_step_in_order(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    config = write(
        tmp_path,
        f"""\
        listeners:
          - name: web
            listen: "127.0.0.1:0"
            routes:
              - {{name: local, match: {{source: [127.0.0.0/8]}}, upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", config, "--log-level", "debug")
    assert ask(proxy.address, b"hello") == b"hello"
    events = timeline(proxy)
    assert names(events)[:3] == ["accepted", "routed", "connected"]
    assert names(events)[-1] == "closed"
    assert set(names(events)) == {"accepted", "routed", "connected", "first_byte", "half_close", "closed"}
    assert_monotonic(events)
    accepted = events[0]
    assert accepted["listener"] == "web" and accepted["client"].startswith("127.0.0.1:")
    routed = one(events, "routed")
    assert (routed["route"], routed["match"]) == ("local", "source 127.0.0.0/8")
    connected = one(events, "connected")
    assert connected["server"] == upstream.address and float(connected["connect_ms"]) >= 0
    up = one(events, "first_byte", direction="client->upstream")
    down = one(events, "first_byte", direction="upstream->client")
    assert names(events).index("connected") < events.index(up) < events.index(down)
    # The client half-closed first; the echo server then ended its side in turn.
    assert [event["by"] for event in events if event["event"] == "half_close"] == ["client", "upstream"]
    closed = events[-1]
    assert (closed["result"], closed["close_by"]) == ("closed", "client")
    (access,) = proxy.wait_access(1)
    assert access["close_by"] == "client"
    assert 0 <= float(access["connect_ms"]) < 5000


def test_a_proxy_header_and_its_addresses_are_told(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    config = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", accept_proxy_protocol: true, upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", config, "--log-level", "debug")
    assert ask(proxy.address, b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 80\r\nping") == b"ping"
    events = timeline(proxy)
    assert names(events)[:4] == ["accepted", "preamble", "routed", "connected"]
    assert_monotonic(events)
    assert events[0]["client"].startswith("127.0.0.1:")  # who connected, before the header said more
    preamble = events[1]
    assert (preamble["kind"], preamble["source"], preamble["destination"]) == ("proxy", "10.1.2.3:5000", "127.0.0.1:80")
    assert one(events, "routed")["match"] == "default"
    (access,) = proxy.wait_access(1)
    assert access["client"] == "10.1.2.3:5000" and access["close_by"] == "client"


def test_tls_termination_tells_what_the_handshake_agreed(tmp_path, start_proxy, start_upstream):
    ca = trustme.CA()
    cert = ca.issue_cert("proxy.test")
    cert_file, key_file = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", str(cert_file), "--tls-key", str(key_file),
        "--log-level", "debug",
    )  # fmt: skip
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(connect(proxy.address), server_hostname="proxy.test") as client:
        client.sendall(b"secret")
        assert recv_exactly(client, 6) == b"secret"
        version = client.version()
    events = timeline(proxy)
    assert names(events)[:4] == ["accepted", "tls_done", "routed", "connected"]
    assert_monotonic(events)
    tls = events[1]
    assert (tls["side"], tls["version"], tls["sni"]) == ("client", version, "proxy.test")
    assert tls["cipher"] and "peer_cert" not in tls  # the client sent no certificate
    assert "alpn" not in tls  # the proxy offers no ALPN, so none was agreed


def test_a_failed_connect_then_a_success(tmp_path, start_proxy, start_upstream):
    good = start_upstream(echo_handler)
    dead = f"127.0.0.1:{free_port()}"
    config = write(
        tmp_path,
        f"""\
        upstreams:
          pool: {{servers: ["{dead}", "{good.address}"], balance: first, retries: 1}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: pool}}
        """,
    )
    proxy = start_proxy("run", "-c", config, "--log-level", "debug")
    assert ask(proxy.address, b"!") == b"!"
    events = timeline(proxy)
    assert names(events)[:4] == ["accepted", "routed", "connect_failed", "connected"]
    assert_monotonic(events)
    failed = events[2]
    assert failed["server"] == dead and "refused" in failed["reason"]
    assert events[3]["server"] == good.address
    (access,) = proxy.wait_access(1)
    assert float(access["connect_ms"]) >= float(events[3]["connect_ms"]) >= 0


def test_a_reset_by_the_client(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--log-level", "debug")
    client = connect(proxy.address)
    client.sendall(b"abc")
    assert recv_exactly(client, 3) == b"abc"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    events = timeline(proxy)
    assert_monotonic(events)
    assert "half_close" not in names(events)
    closed = events[-1]
    assert (closed["result"], closed["close_by"]) == ("reset", "client")
    (access,) = proxy.wait_access(1)
    assert (access["result"], access["close_by"]) == ("reset", "client")


@pytest.mark.parametrize("who", ["upstream", "proxy"])
def test_at_info_level_the_access_line_says_who_ended_it(tmp_path, start_proxy, start_upstream, who):
    """No conn_event at info level, but close_by and connect_ms (absent when never connected)."""

    def greet_and_close(conn: socket.socket) -> None:
        conn.sendall(b"bye")

    upstream = start_upstream(greet_and_close)
    allow = "127.0.0.0/8" if who == "upstream" else "10.0.0.0/8"
    config = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", allow: [{allow}], upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", config)
    with connect(proxy.address) as client:
        received = recv_all(client) if who == "upstream" else b""
        if who == "upstream":
            client.shutdown(socket.SHUT_WR)  # the upstream's end came first; the client's follows
    (access,) = proxy.wait_access(1)
    assert access["close_by"] == who
    if who == "upstream":
        assert received == b"bye" and access["result"] == "closed" and float(access["connect_ms"]) >= 0
    else:
        assert access["result"] == "denied" and "connect_ms" not in access
    assert wait_until(lambda: proxy.access_lines()) and not any(" conn_event " in line for line in proxy.lines)
