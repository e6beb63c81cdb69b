"""One port, many protocols, end to end: real clients (OpenSSH against a real sshd, curl over
HTTP/1.1 and HTTP/2 with prior knowledge, openssl s_client with SNI and ALPN, a SOCKS5
handshake) through one listener, each reaching its own upstream; every protocol's first bytes
whole and a byte at a time; the silent client after peek_timeout; a TLS-terminating listener
answering the ALPN of the route it picked; the access line, the dump's open line, the capture's
comment and /conns saying what was seen; and the same first bytes sent to sslh, which must pick
the same protocol."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from tests.support import (
    FIRST_BYTES,
    WAIT,
    admin_address,
    connect,
    free_port,
    http,
    recv_all,
    recv_exactly,
    required_tool,
    tagged,
    wait_until,
    write,
)
from tests.support.tls import client_context, tls_upstream

PEEK = 0.3  # peek_timeout where waiting for it is the behaviour


def upstreams_for(start_upstream, names) -> dict:
    """A tagged upstream per name: it answers `<name>\\n`, then echoes."""
    return {name: start_upstream(tagged(f"{name}\n".encode())) for name in names}


def mux_listener(upstreams: dict, protocols, *, name: str = "mux", default: bool = True, extra: str = "") -> str:
    routes = "".join(
        f'      - {{name: {p}, match: {{protocol: {p}}}, upstream: "{upstreams[p].address}"}}\n' for p in protocols
    )
    if default:
        routes += f'      - {{name: fallback, upstream: "{upstreams["fallback"].address}"}}\n'
    return f"  - name: {name}\n    listen: 127.0.0.1:0\n{extra}    routes:\n{routes}"


def send(sock: socket.socket, data: bytes, byte_at_a_time: bool) -> None:
    if not byte_at_a_time:
        sock.sendall(data)
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index in range(len(data)):
        sock.sendall(data[index : index + 1])
        time.sleep(0.001)  # one segment each


PROTOCOLS = ("tls", "ssh", "http", "http2", "socks5", "openvpn", "xmpp", "proxy")


@pytest.fixture
def tagged_mux(tmp_path, start_proxy, start_upstream):
    """A listener with a route per protocol (and a default), each to an upstream tagged with it."""
    upstreams = upstreams_for(start_upstream, (*PROTOCOLS, "fallback"))
    path = write(tmp_path, "listeners:\n" + mux_listener(upstreams, PROTOCOLS, extra="    peek_timeout: 5s\n"))
    return start_proxy("run", "-c", str(path)), upstreams


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_protocol_reaches_its_upstream_with_its_bytes_unchanged(tagged_mux, protocol, byte_at_a_time):
    proxy, _ = tagged_mux
    data = FIRST_BYTES[protocol]
    with connect(proxy.address) as client:
        send(client, data, byte_at_a_time)
        tag = f"{protocol}\n".encode()
        assert recv_exactly(client, len(tag) + len(data)) == tag + data
    (line,) = proxy.wait_access()
    assert (line["route"], line["protocol"], line["bytes_up"]) == (protocol, protocol, str(len(data)))
    if protocol == "tls":  # a ClientHello split into 1-byte segments still gives its SNI and ALPN
        assert (line["sni"], line["alpn"]) == ("mux.test", "h2,http/1.1")
    if protocol == "http":  # decided at `HTTP/1.`: the Host is seen only if it came with it
        assert line.get("host") == (None if byte_at_a_time else "www.example.com")


def test_bytes_no_route_recognises_take_the_default_route_at_once(tagged_mux):
    proxy, _ = tagged_mux
    started = time.monotonic()
    with connect(proxy.address) as client:
        client.sendall(b"\xffjunk")
        assert recv_exactly(client, len(b"fallback\n\xffjunk")) == b"fallback\n\xffjunk"
    assert time.monotonic() - started < 3  # decided at the first byte, not after peek_timeout (5 s)
    (line,) = proxy.wait_access()
    assert line["route"] == "fallback" and "protocol" not in line


def test_without_a_default_route_unrecognised_bytes_are_no_route(tmp_path, start_proxy, start_upstream):
    upstreams = upstreams_for(start_upstream, ("ssh",))
    proxy = start_proxy(
        "run", "-c", str(write(tmp_path, "listeners:\n" + mux_listener(upstreams, ["ssh"], default=False)))
    )
    with connect(proxy.address) as client:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert recv_all(client) == b""
    (line,) = proxy.wait_access()
    assert (line["result"], line["protocol"]) == ("no_route", "http")
    assert upstreams["ssh"].accepted == 0


def test_a_silent_client_takes_the_silent_route_after_peek_timeout_and_gets_the_banner(
    tmp_path, start_proxy, start_upstream
):
    upstreams = upstreams_for(start_upstream, ("ssh", "silent", "fallback"))
    listener = mux_listener(upstreams, ["ssh", "silent"], extra=f"    peek_timeout: {PEEK}s\n")
    proxy = start_proxy("run", "-c", str(write(tmp_path, "listeners:\n" + listener)))
    with connect(proxy.address) as client:
        started = time.monotonic()
        assert recv_exactly(client, len(b"silent\n")) == b"silent\n"  # the server spoke first
        waited = time.monotonic() - started
        client.sendall(b"after")
        assert recv_exactly(client, 5) == b"after"
    assert PEEK * 0.8 < waited < PEEK + 3
    (line,) = proxy.wait_access()
    assert (line["route"], line["protocol"], line["result"]) == ("silent", "silent", "closed")


def test_a_client_that_sends_nothing_and_closes_is_closed_silent_without_an_upstream(tagged_mux):
    proxy, upstreams = tagged_mux
    with connect(proxy.address) as client:
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b""
    (line,) = proxy.wait_access()
    assert (line["result"], line["reason"], line["close_by"]) == ("closed", "silent", "client")
    assert sum(upstream.accepted for upstream in upstreams.values()) == 0


def test_a_listener_whose_routes_need_no_bytes_does_not_wait_for_any(tmp_path, start_proxy, start_upstream):
    banner = start_upstream(tagged(b"banner\n"))
    text = f"""\
        listeners:
          - listen: 127.0.0.1:0
            peek_timeout: 10s
            routes:
              - {{match: {{source: 127.0.0.0/8}}, upstream: "{banner.address}"}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, text)))
    with connect(proxy.address) as client:
        started = time.monotonic()
        assert recv_exactly(client, 7) == b"banner\n"
        assert time.monotonic() - started < 3  # at once: nothing peeked, peek_timeout never waited
    proxy.wait_access()


# -- a TLS-terminating listener: ALPN and SNI read before the handshake ----------------------


def test_a_terminating_listener_answers_the_alpn_of_the_route_it_picked(tmp_path, pki, start_proxy, start_upstream):
    upstreams = upstreams_for(start_upstream, ("acme", "web", "ssh", "fallback"))
    text = f"""\
        listeners:
          - name: tls
            listen: 127.0.0.1:0
            tls:
              cert: "{pki["proxy.pem"]}"
              key: "{pki["proxy.key"]}"
              certificates: [{{cert: "{pki["a.pem"]}", key: "{pki["a.key"]}"}}]
            routes:
              - {{name: acme, match: {{alpn: acme-tls/1}}, upstream: "{upstreams["acme"].address}"}}
              - {{name: web, match: {{alpn: [h2, http/1.1]}}, upstream: "{upstreams["web"].address}"}}
              - {{name: ssh, match: {{protocol: ssh}}, upstream: "{upstreams["ssh"].address}"}}
              - {{name: fallback, upstream: "{upstreams["fallback"].address}"}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, text)))
    cases = [(("acme-tls/1",), "a.test", "acme"), (("spdy/3", "h2"), "proxy.test", "web"), ((), "a.test", "fallback")]
    for offered, server_name, route in cases:
        context = ssl.create_default_context(cafile=pki["ca"])
        if offered:
            context.set_alpn_protocols(list(offered))
        with context.wrap_socket(connect(proxy.address), server_hostname=server_name) as tls:
            assert tls.selected_alpn_protocol() == (offered[-1] if offered else None)
            names = [value for field in tls.getpeercert()["subjectAltName"] for value in field[1:]]
            assert server_name in names  # the certificate SNI chose, whatever the route
            assert recv_exactly(tls, len(route) + 1) == f"{route}\n".encode()
    with connect(proxy.address) as client:  # not TLS at all: forwarded as it came
        client.sendall(FIRST_BYTES["ssh"])
        assert recv_exactly(client, 4 + len(FIRST_BYTES["ssh"])) == b"ssh\n" + FIRST_BYTES["ssh"]
    lines = proxy.wait_access(4)
    assert [(line["route"], line.get("alpn")) for line in lines] == [
        ("acme", "acme-tls/1"),
        ("web", "spdy/3,h2"),
        ("fallback", None),
        ("ssh", None),
    ]


def first_reply(sock: socket.socket) -> bytes:
    """What the proxy sends first (a TLS alert, an upstream's tag), or b"" once it has closed."""
    with contextlib.suppress(ConnectionResetError):
        return sock.recv(1024)
    return b""


def test_a_terminating_listener_never_forwards_a_client_that_skips_the_handshake(
    tmp_path, pki, start_proxy, start_upstream
):
    """Mutual TLS holds for every client a catch-all route takes: one that does not speak TLS
    reaches only a route naming its protocol, and otherwise fails the handshake as it always did."""
    upstreams = upstreams_for(start_upstream, ("h2", "http1", "ssh"))
    text = f"""\
        listeners:
          - name: https
            listen: 127.0.0.1:0
            peek_timeout: {PEEK}s
            connect_timeout: 1s
            tls: {{cert: "{pki["proxy.pem"]}", key: "{pki["proxy.key"]}", client_ca: "{pki["ca"]}"}}
            routes:
              - {{name: h2, match: {{alpn: h2}}, upstream: "{upstreams["h2"].address}"}}
              - {{name: http1, upstream: "{upstreams["http1"].address}"}}
              - {{name: ssh, match: {{protocol: ssh}}, upstream: "{upstreams["ssh"].address}"}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, text)))
    with connect(proxy.address) as client:  # plain HTTP, as if the port were not TLS
        client.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert not first_reply(client).startswith(b"http1")
    with connect(proxy.address) as client:  # silent: the handshake waits for it, then gives up
        assert first_reply(client) == b""
    plain, silent = proxy.wait_access(2)
    assert (plain["result"], plain.get("route"), plain["protocol"]) == ("tls_error", None, "http")
    assert (silent["result"], silent.get("route")) == ("timeout", None)
    assert sum(upstream.accepted for upstream in upstreams.values()) == 0
    with connect(proxy.address) as client:  # a route that names ssh takes it, after the catch-all
        client.sendall(FIRST_BYTES["ssh"])
        assert recv_exactly(client, 4 + len(FIRST_BYTES["ssh"])) == b"ssh\n" + FIRST_BYTES["ssh"]
    context = client_context(pki, cert="client")
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(connect(proxy.address), server_hostname="proxy.test") as tls:
        assert recv_exactly(tls, 6) == b"http1\n"
    context.set_alpn_protocols(["h2"])
    with connect(proxy.address) as raw:  # a ClientHello after peek_timeout: terminated all the same
        time.sleep(PEEK * 2)
        with context.wrap_socket(raw, server_hostname="proxy.test") as tls:
            assert tls.selected_alpn_protocol() is None  # its ALPN came too late to pick a route
            assert recv_exactly(tls, 6) == b"http1\n"
    ssh, http1, late = proxy.wait_access(5)[2:]
    assert (ssh["route"], ssh["protocol"]) == ("ssh", "ssh")
    assert (http1["route"], http1["client_cert"], late["route"], late["client_cert"]) == ("http1", "yes") * 2
    assert (late["protocol"], late.get("alpn")) == ("tls", None)
    assert (upstreams["h2"].accepted, upstreams["http1"].accepted, upstreams["ssh"].accepted) == (0, 2, 1)


# -- what the connection was, in every output --------------------------------------------------


def test_the_dump_the_capture_and_conns_say_what_was_detected(tmp_path, start_proxy, start_upstream):
    upstreams = upstreams_for(start_upstream, ("http", "fallback"))
    capture = tmp_path / "mux.pcapng"
    admin = free_port()
    listener = mux_listener(upstreams, ["http"], extra=f'    hexdump: true\n    pcap: "{capture}"\n')
    text = f"admin: {{http: 127.0.0.1:{admin}}}\nlisteners:\n{listener}"
    proxy = start_proxy("run", "-c", str(write(tmp_path, text)))
    request = b"GET / HTTP/1.1\r\nHost: API.test:8080\r\n\r\n"
    with connect(proxy.address) as client:
        client.sendall(request)
        assert recv_exactly(client, 5 + len(request)) == b"http\n" + request
        _, _, body = http(admin_address(proxy), "/conns")
        (row,) = json.loads(body)["conns"]
        assert (row["protocol"], row["alpn"], row["host"]) == ("http", None, "api.test")
    (line,) = proxy.wait_access()
    assert (line["protocol"], line["host"]) == ("http", "api.test")
    assert wait_until(lambda: " close result=closed" in proxy.stdout())
    (opened,) = [row for row in proxy.stdout().splitlines() if " open " in row]
    assert opened.endswith(f" conn=1 open {line['client']} -> {line['server']} protocol=http host=api.test")
    proxy.stop()
    assert b"conn=1 listener=mux route=http protocol=http host=api.test" in capture.read_bytes()


# -- real clients ------------------------------------------------------------------------------


def http1_handler(tag: bytes):
    def handler(conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
            head += data
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(tag), tag))

    return handler


def h2c_handler(tag: bytes):
    """Just enough HTTP/2 for one GET with prior knowledge: SETTINGS both ways, then a 200 with `tag`."""

    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def handler(conn: socket.socket) -> None:
        assert recv_exactly(conn, 24) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        conn.sendall(frame(4, 0, 0))  # our SETTINGS
        while True:
            header = recv_exactly(conn, 9)
            if len(header) < 9:
                return
            length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
            recv_exactly(conn, length)
            if kind == 4 and not flags & 1:
                conn.sendall(frame(4, 1, 0))  # SETTINGS ACK
            if kind == 1:  # the request's HEADERS: ':status 200' is the static table's entry 8
                conn.sendall(frame(1, 4, 1, b"\x88") + frame(0, 1, 1, tag))

    return handler


def socks5_handler(conn: socket.socket) -> None:
    greeting = recv_exactly(conn, 2)
    recv_exactly(conn, greeting[1])
    conn.sendall(b"\x05\x00")  # no authentication
    request = recv_exactly(conn, 10)  # CONNECT to an IPv4 address
    assert request[:4] == b"\x05\x01\x00\x01"
    conn.sendall(b"\x05\x00\x00\x01" + request[4:])


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on a loopback port, with a throwaway host key and a user key whose
    public half it authorises for root: (port, the user's private key)."""
    sshd_path, keygen = required_tool("sshd"), required_tool("ssh-keygen")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation folder
    for key in ("host_key", "user_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True, timeout=WAIT)
    (tmp_path / "authorized_keys").write_bytes((tmp_path / "user_key.pub").read_bytes())
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPidFile none\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    with server_group([sshd_path, "-D", "-e", "-f", str(config)], ("127.0.0.1", port)):
        yield port, tmp_path / "user_key"


@contextlib.contextmanager
def server_group(command: list[str], address: tuple[str, int]):
    """A forking server (sshd, sslh) in a process group of its own, listening on `address` until
    the block ends; then the group is killed, the children it forked per connection with it, and
    every one of them reaped."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: _accepts(address))
        yield
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(WAIT)
        with contextlib.suppress(ChildProcessError):
            while True:  # the forked children are ours now (the test run is their subreaper)
                os.waitpid(-server.pid, 0)


def _accepts(address) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def real_mux(tmp_path, pki, start_proxy, start_upstream, sshd):
    """One listener in front of sshd, an HTTP/1.1 and an h2c server, two TLS servers and a SOCKS5 one."""
    ssh_port, user_key = sshd
    tls_web, acme = (
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
    )
    for context, offered in ((tls_web, ["h2", "http/1.1"]), (acme, ["acme-tls/1"])):
        context.load_cert_chain(pki["a.pem"], pki["a.key"])
        context.set_alpn_protocols(offered)
    servers = {
        "api": start_upstream(http1_handler(b"api")),
        "h2c": start_upstream(h2c_handler(b"h2c")),
        "web": start_upstream(tls_upstream(tls_web, b"web\n")),
        "acme": start_upstream(tls_upstream(acme, b"acme\n")),
        "socks": start_upstream(socks5_handler),
        "fallback": start_upstream(http1_handler(b"fallback")),
    }
    text = f"""\
        listeners:
          - name: port443
            listen: 127.0.0.1:0
            routes:
              - {{name: ssh, match: {{protocol: ssh}}, upstream: "127.0.0.1:{ssh_port}"}}
              - {{name: acme, match: {{protocol: tls, alpn: acme-tls/1}}, upstream: "{servers["acme"].address}"}}
              - name: web
                match: {{protocol: tls, sni: a.test, alpn: [h2, http/1.1]}}
                upstream: "{servers["web"].address}"
              - {{name: api, match: {{protocol: http, host: api.test}}, upstream: "{servers["api"].address}"}}
              - {{name: h2c, match: {{protocol: http2}}, upstream: "{servers["h2c"].address}"}}
              - {{name: socks, match: {{protocol: socks5}}, upstream: "{servers["socks"].address}"}}
              - {{name: fallback, upstream: "{servers["fallback"].address}"}}
        """
    proxy = start_proxy("run", "-c", str(write(tmp_path, text)))
    return proxy, servers, user_key


def run(*command: str, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(command, input=input, capture_output=True, timeout=WAIT * 2)


def test_real_clients_of_six_protocols_through_one_port(real_mux, pki):
    proxy, servers, user_key = real_mux
    host, port = proxy.address
    ssh = run(
        required_tool("ssh"), "-p", str(port), "-i", str(user_key), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        f"root@{host}", "echo", "hi",
    )  # fmt: skip
    assert (ssh.returncode, ssh.stdout) == (0, b"hi\n"), ssh.stderr
    curl = required_tool("curl")
    api = run(curl, "-sS", "--max-time", "10", "--resolve", f"api.test:{port}:{host}", f"http://api.test:{port}/")
    assert api.stdout == b"api", api.stderr
    other = run(curl, "-sS", "--max-time", "10", "-H", "Host: www.test", f"http://{host}:{port}/")
    assert other.stdout == b"fallback", other.stderr
    h2c = run(curl, "-sS", "--max-time", "10", "--http2-prior-knowledge", f"http://{host}:{port}/")
    assert h2c.stdout == b"h2c", h2c.stderr
    openssl = required_tool("openssl")
    for alpn, route in (("h2", "web"), ("acme-tls/1", "acme")):
        hello = run(
            openssl, "s_client", "-connect", f"{host}:{port}", "-servername", "a.test", "-alpn", alpn,
            "-CAfile", pki["ca"], "-verify_return_error",
        )  # fmt: skip
        assert f"ALPN protocol: {alpn}".encode() in hello.stdout, hello.stdout + hello.stderr
        assert b"Verify return code: 0 (ok)" in hello.stdout
        assert wait_until(lambda route=route: servers[route].accepted == 1)
    with connect(proxy.address) as client:
        client.sendall(b"\x05\x01\x00")
        assert recv_exactly(client, 2) == b"\x05\x00"
        client.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        assert recv_exactly(client, 10) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50"
    lines = proxy.wait_access(7)
    routes = {(line["route"], line.get("protocol")) for line in lines}
    assert routes == {
        ("ssh", "ssh"),
        ("api", "http"),
        ("fallback", "http"),
        ("h2c", "http2"),
        ("web", "tls"),
        ("acme", "tls"),
        ("socks", "socks5"),
    }
    assert {line.get("alpn") for line in lines if line["route"] in ("web", "acme")} == {"h2", "acme-tls/1"}


# -- the same first bytes to sslh ----------------------------------------------------------------

SSLH_PROTOCOLS = ("ssh", "tls", "openvpn", "socks5", "http", "xmpp")  # sslh waits for 50 bytes to say xmpp: last


def test_sslh_and_pairproxy_pick_the_same_protocol_for_the_same_first_bytes(tmp_path, start_proxy, start_upstream):
    sslh = required_tool("sslh")
    upstreams = upstreams_for(start_upstream, (*SSLH_PROTOCOLS, "fallback"))
    proxy = start_proxy("run", "-c", str(write(tmp_path, "listeners:\n" + mux_listener(upstreams, SSLH_PROTOCOLS))))
    sslh_port = free_port()
    probes = ",\n".join(f'  {{ name: "{p}"; host: "127.0.0.1"; port: "{upstreams[p].port}"; }}' for p in SSLH_PROTOCOLS)
    config = tmp_path / "sslh.cfg"
    config.write_text(
        f'foreground: true;\nnumeric: true;\ntimeout: 5;\nlisten: ( {{ host: "127.0.0.1"; port: "{sslh_port}"; }} );\n'
        f"protocols: (\n{probes}\n);\n"
    )
    with server_group([sslh, f"-F{config}"], ("127.0.0.1", sslh_port)):
        for protocol in SSLH_PROTOCOLS:
            picked = []
            for address in (("127.0.0.1", sslh_port), proxy.address):
                with connect(address) as client:
                    client.sendall(FIRST_BYTES[protocol])
                    picked.append(recv_exactly(client, len(protocol) + 1).decode().strip())
            assert picked == [protocol, protocol]
