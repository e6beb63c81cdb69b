"""The frontend's admission (serve/frontend.py) end to end: trusted PROXY peers, IPv4-mapped
rules on a dual-stack listener, and an unexpected exception in an admission step ending only
its own connection."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from proxy.config.loader import load_config
from proxy.config.schema import Config
from proxy.policy.routes import RouteTable
from tests.support import (
    ask,
    connect,
    echo_handler,
    free_port,
    listener_address,
    recv_exactly,
    serving,
    tagged,
    wait_until,
    write,
)


def proxy_config(tmp_path, upstream: str, trusted: tuple[str, ...] | None, allow: str = "10.0.0.0/8") -> Config:
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", accept_proxy_protocol: true, allow: [{allow}], upstream: "{upstream}"}}
        """,
    )
    config = load_config(path).config
    networks = None if trusted is None else tuple(ipaddress.ip_network(text) for text in trusted)
    (listener,) = config.listeners
    return replace(config, listeners=(replace(listener, proxy_trusted=networks),))


HEADER = b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 80\r\n"


def answer(address: tuple[str, int], payload: bytes) -> bytes:
    """What comes back; b"" when the proxy closes or resets the connection (with the client's
    bytes unread, the kernel answers with a reset, before or after they are all sent)."""
    try:
        reply = ask(address, payload)
    except OSError:
        return b""
    return b"" if reply == b"<reset>" else reply


def test_a_proxy_header_from_an_untrusted_peer_is_refused(tmp_path, start_upstream):
    upstream = start_upstream(tagged(b"up:"))
    with serving(proxy_config(tmp_path, upstream.address, ("10.0.0.0/8",))) as (server, lines):
        assert answer(listener_address(server), HEADER + b"x") == b""
        assert wait_until(lambda: lines.events("access"))
        (access,) = lines.events("access")
        assert (access["result"], access["reason"]) == ("denied", "untrusted proxy")
        assert access["client"].startswith("127.0.0.1:")  # the header was never read
    assert upstream.accepted == 0


@pytest.mark.parametrize("trusted", ["127.0.0.0/8", "::ffff:127.0.0.0/104"])
def test_a_trusted_peers_header_decides_who_the_client_is(tmp_path, start_upstream, trusted):
    upstream = start_upstream(tagged(b"up:"))
    with serving(proxy_config(tmp_path, upstream.address, (trusted,))) as (server, lines):
        assert answer(listener_address(server), HEADER + b"x") == b"up:x"
        # allow: [10.0.0.0/8] looks at the header's address, not at the peer (127.0.0.1).
        assert answer(listener_address(server), HEADER.replace(b"10.1.2.3", b"192.0.2.1") + b"x") == b""
        assert wait_until(lambda: len(lines.events("access")) == 2)
        allowed, denied = sorted(lines.events("access"), key=lambda access: access["conn"])
        assert (allowed["result"], allowed["client"]) == ("closed", "10.1.2.3:5000")
        assert (denied["result"], denied["reason"]) == ("denied", "source 192.0.2.1 is not allowed")


def test_trusted_proxy_peers_from_the_file(tmp_path, start_proxy, start_upstream):
    """Needs the `accept_proxy_protocol: {trusted: [...]}` syntax of the configuration file."""
    upstream = start_upstream(tagged(b"up:"))
    outside, inside = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{name: outside, listen: "127.0.0.1:{outside[1]}", accept_proxy_protocol: {{trusted: [10.0.0.0/8]}},
              upstream: "{upstream.address}"}}
          - {{name: inside, listen: "127.0.0.1:{inside[1]}", accept_proxy_protocol: {{trusted: ["::ffff:127.0.0.1"]}},
              upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path), wait_listening=0)  # the fixture stops it even if it never listens
    wait_until(lambda: proxy.log_text().count(" listening ") == 2 or proxy.proc.poll() is not None)
    assert proxy.log_text().count(" listening ") == 2, proxy.log_text()
    assert answer(outside, HEADER + b"x") == b""
    assert answer(inside, HEADER + b"x") == b"up:x"
    denied, allowed = sorted(proxy.wait_access(2), key=lambda access: access["listener"] != "outside")
    assert (denied["result"], denied["reason"]) == ("denied", "untrusted proxy")
    assert (allowed["result"], allowed["client"]) == ("closed", "10.1.2.3:5000")


@pytest.mark.parametrize(
    ("rule", "served"),
    [
        ("allow: [127.0.0.1]", True),
        ('allow: ["::ffff:127.0.0.1"]', True),
        ('deny: ["::ffff:127.0.0.0/104"]', False),
        ("deny: [127.0.0.0/8]", False),
    ],
)
def test_a_dual_stack_listener_applies_ipv4_rules_to_ipv4_clients(tmp_path, start_proxy, start_upstream, rule, served):
    upstream = start_upstream(tagged(b"up:"))
    port = free_port()
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "[::]:{port}", {rule}, upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    assert answer(("127.0.0.1", port), b"x") == (b"up:x" if served else b"")
    (access,) = proxy.wait_access(1)
    assert access["client"].startswith("[::ffff:127.0.0.1]:")
    assert access["result"] == ("closed" if served else "denied")


@pytest.mark.parametrize("proxy_header", [False, True])
def test_an_exception_in_admission_ends_only_that_connection(tmp_path, start_upstream, monkeypatch, proxy_header):
    upstream = start_upstream(echo_handler)
    if proxy_header:
        config = proxy_config(tmp_path, upstream.address, None, allow="0.0.0.0/0")
    else:
        config = load_config(
            write(tmp_path, f'listeners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
        ).config
    select = RouteTable.select
    calls = []

    def fails_once(table, *args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("routing broke")
        return select(table, *args)

    monkeypatch.setattr(RouteTable, "select", fails_once)
    preface = HEADER if proxy_header else b""
    with serving(config) as (server, lines):
        registered = len(server.listeners)  # what stays registered in the reactor: the listener alone
        address = listener_address(server)
        assert answer(address, preface + b"x") == b""
        assert wait_until(lambda: lines.events("access"))
        assert wait_until(lambda: len(server.reactor.map) == registered), server.reactor.map
        assert not server.runtime.pairs
        with connect(address) as client:  # the listener still serves
            client.sendall(preface + b"next")
            assert recv_exactly(client, 4) == b"next"
    (error,) = lines.events("connection_error")
    assert error["error"] == "RuntimeError: routing broke"
    first = lines.events("access")[0]
    assert (first["result"], first["reason"]) == ("error", "RuntimeError: routing broke")
    assert "accept_failed" not in lines.text()
    assert "Traceback" not in lines.text()
