"""End to end TLS: termination, origination with verification, mutual TLS, SNI passthrough.

Every certificate comes from trustme, made fresh for the run.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.support import (
    WAIT,
    client_context,
    connect,
    echo_handler,
    echo_through,
    logfmt,
    pattern,
    recv_all,
    recv_exactly,
    server_context,
    tls_connect,
    tls_upstream,
)

MiB = 1024 * 1024


def test_termination_moves_50_mib_intact(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"]
    )
    data = pattern(50 * MiB, seed=50)
    with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
        client.settimeout(60)
        received = echo_through(client, data)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    access = proxy.wait_access(1)[0]
    assert access["sni"] == "proxy.test"
    assert access["client_tls"] in ("TLSv1.3", "TLSv1.2")
    assert access["client_cert"] == "no"
    assert access["bytes_up"] == str(len(data))


def test_termination_hexdump_shows_plaintext(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--hexdump",
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"],
    )  # fmt: skip
    with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
        client.sendall(b"secret words")
        assert recv_exactly(client, 12) == b"secret words"
    proxy.wait_access(1)
    assert "|secret words|" in proxy.stdout()


def test_termination_refuses_a_client_without_the_required_certificate(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address,
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"], "--tls-client-ca", pki["ca"],
    )  # fmt: skip
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):  # noqa: SIM117
        with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
            client.sendall(b"x")  # TLS 1.3 reports the server's alert only at the next read
            client.recv(1)
    refused = proxy.wait_access(1)[0]
    assert refused["result"] == "tls_error"
    with tls_connect(proxy.address, client_context(pki, cert="client"), "proxy.test") as client:
        client.sendall(b"with cert")
        assert recv_exactly(client, 9) == b"with cert"
    accepted = proxy.wait_access(2)[1]
    assert accepted["client_cert"] == "yes"
    assert upstream.accepted == 1


def _originate(start_proxy, upstream, *flags: str):
    return start_proxy("forward", "127.0.0.1:0", upstream.address, "--upstream-tls", *flags)


def test_origination_verifies_and_sends_the_server_name(pki, start_proxy, start_upstream):
    seen_names = []
    context = server_context(pki, "upstream")
    context.sni_callback = lambda _sock, name, _ctx: seen_names.append(name)
    upstream = start_upstream(tls_upstream(context, b"hello:"))
    proxy = _originate(start_proxy, upstream, "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test")
    with connect(proxy.address) as client:
        assert recv_exactly(client, 6) == b"hello:"
        client.sendall(b"plain in, TLS out")
        assert recv_exactly(client, 17) == b"plain in, TLS out"
    assert seen_names == ["upstream.test"]
    assert proxy.wait_access(1)[0]["upstream_tls"] in ("TLSv1.3", "TLSv1.2")


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (("--upstream-server-name", "wrong.test"), "hostname mismatch"),
        (("--upstream-server-name", "upstream.test", "--upstream-ca", "other-ca"), "unable to get local issuer"),
    ],
    ids=["wrong-name", "unknown-ca"],
)
def test_origination_refuses_a_server_that_fails_verification(pki, start_proxy, start_upstream, flags, reason):
    upstream = start_upstream(tls_upstream(server_context(pki, "upstream"), b"hello:"))
    flags = tuple(pki.get(flag, flag) for flag in flags)
    if "--upstream-ca" not in flags:
        flags += ("--upstream-ca", pki["ca"])
    proxy = _originate(start_proxy, upstream, *flags)
    with connect(proxy.address) as client:
        assert client.recv(1) == b""
    access = proxy.wait_access(1)[0]
    assert access["result"] == "tls_error"
    assert reason in access["reason"]


def test_origination_insecure_accepts_any_certificate_and_warns(pki, start_proxy, start_upstream):
    upstream = start_upstream(tls_upstream(server_context(pki, "upstream"), b"hi"))
    proxy = _originate(start_proxy, upstream, "--upstream-insecure")
    assert "tls_verify_off" in proxy.log_text()
    with connect(proxy.address) as client:
        assert recv_exactly(client, 2) == b"hi"


def test_mutual_tls_on_both_legs(pki, start_proxy, start_upstream):
    upstream = start_upstream(tls_upstream(server_context(pki, "upstream", client_ca=True), b"mtls:"))
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address,
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"], "--tls-client-ca", pki["ca"],
        "--upstream-tls", "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test",
        "--upstream-cert", pki["client.pem"], "--upstream-key", pki["client.key"],
    )  # fmt: skip
    with tls_connect(proxy.address, client_context(pki, cert="client"), "proxy.test") as client:
        assert recv_exactly(client, 5) == b"mtls:"
        client.sendall(b"both ways")
        assert recv_exactly(client, 9) == b"both ways"
    access = proxy.wait_access(1)[0]
    assert (access["client_cert"], access["result"]) == ("yes", "closed")


def test_origination_without_a_client_certificate_is_refused_by_an_mtls_server(pki, start_proxy, start_upstream):
    upstream = start_upstream(tls_upstream(server_context(pki, "upstream", client_ca=True), b"mtls:"))
    proxy = _originate(start_proxy, upstream, "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test")
    with connect(proxy.address) as client:
        try:
            data = recv_all(client)
        except ConnectionResetError:
            data = b""
    assert data == b""
    assert proxy.wait_access(1)[0]["result"] in ("tls_error", "reset", "closed")


def _write(tmp_path, text: str):
    path = tmp_path / "pairproxy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_origination_with_mutual_tls_from_yaml(pki, tmp_path, start_proxy, start_upstream):
    """`run -c`: upstream `tls: {ca, server_name, cert, key}` with paths relative to the file."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca", "client.pem", "client.key"):
        shutil.copy(pki[name], certs / Path(pki[name]).name)
    presented = []

    def mtls_echo(conn: socket.socket) -> None:
        try:
            tls = server_context(pki, "upstream", client_ca=True).wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:
            presented.append(dict(tls.getpeercert()["subjectAltName"]))
            tls.sendall(b"mtls:")
            while data := tls.recv(65536):
                tls.sendall(data)

    upstream = start_upstream(mtls_echo)
    path = _write(
        tmp_path,
        f"""\
        upstreams:
          secure:
            servers: ["{upstream.address}"]
            tls: {{ca: certs/ca.pem, server_name: upstream.test, cert: certs/client.pem, key: certs/client.key}}
          misnamed:
            servers: ["{upstream.address}"]
            tls: {{ca: certs/ca.pem, server_name: wrong.test, cert: certs/client.pem, key: certs/client.key}}
        listeners:
          - {{name: good, listen: "127.0.0.1:0", upstream: secure}}
          - {{name: bad, listen: "127.0.0.1:0", upstream: misnamed}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path), wait_listening=2)
    good, bad = (("127.0.0.1", int(address.rsplit(":", 1)[1])) for address in proxy.addresses)
    data = pattern(MiB, seed=3)
    with connect(good) as client:
        assert recv_exactly(client, 5) == b"mtls:"
        assert echo_through(client, data, step=64 * 1024) == data
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b""
    assert presented == [{"email": "client@example.test"}]  # the upstream saw the proxy's client certificate
    (access,) = proxy.wait_access(1)
    assert access["listener"] == "good"
    assert (access["result"], access["server"], access["bytes_up"]) == ("closed", upstream.address, str(MiB))
    assert access["bytes_down"] == str(MiB + 5)
    assert access["upstream_tls"] in ("TLSv1.3", "TLSv1.2")

    with connect(bad) as client:
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
    access = proxy.wait_access(2)[1]
    assert access["listener"] == "bad"
    assert access["result"] == "tls_error"
    assert access["reason"].startswith("upstream: certificate verify failed: hostname mismatch")
    assert "wrong.test" in access["reason"]
    assert presented == [{"email": "client@example.test"}]  # no second handshake got through


def test_sni_passthrough_routes_to_the_upstream_that_owns_the_name(pki, tmp_path, start_proxy, start_upstream):
    a = start_upstream(tls_upstream(server_context(pki, "a"), b"A"))
    b = start_upstream(tls_upstream(server_context(pki, "b"), b"B"))
    plain = start_upstream(lambda conn: (conn.sendall(b"plain"), recv_all(conn)))
    path = _write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            connect_timeout: 500ms
            routes:
              - {{match: {{sni: a.test}}, upstream: "{a.address}"}}
              - {{match: {{sni: ["b.test", "*.b.test"]}}, upstream: "{b.address}"}}
              - upstream: "{plain.address}"
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    for name, tag in (("a.test", b"A"), ("b.test", b"B")):
        with tls_connect(proxy.address, client_context(pki), name) as client:
            assert recv_exactly(client, 1) == tag  # the handshake verified the upstream's own name
            client.sendall(b"end to end")
            assert recv_exactly(client, 10) == b"end to end"
    lines = proxy.wait_access(2)
    assert [line["sni"] for line in lines] == ["a.test", "b.test"]
    # Garbage is not TLS: the route without sni takes it, at once.
    with connect(proxy.address) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_exactly(client, 5) == b"plain"
    assert proxy.wait_access(3)[2]["reason"] == "not_tls"
    # Silence: after connect_timeout, the same fallback.
    with connect(proxy.address) as client:
        assert recv_exactly(client, 5) == b"plain"
    assert proxy.wait_access(4)[3]["reason"] == "timeout"


def test_sni_listener_without_fallback_closes_unknown_clients(pki, tmp_path, start_proxy, start_upstream):
    a = start_upstream(tls_upstream(server_context(pki, "a"), b"A"))
    path = _write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            routes:
              - {{match: {{sni: a.test}}, upstream: "{a.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        client.sendall(b"\x00garbage")
        assert recv_all(client) == b""
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["reason"]) == ("no_route", "not_tls")
    assert a.accepted == 0


def test_termination_from_yaml_picks_the_certificate_and_route_by_sni(pki, tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(lambda c: c.sendall(b"one")), start_upstream(lambda c: c.sendall(b"two"))
    path = _write(
        tmp_path,
        f"""\
        listeners:
          - listen: "127.0.0.1:0"
            tls:
              cert: {pki["proxy.pem"]}
              key: {pki["proxy.key"]}
              certificates:
                - {{cert: {pki["other.pem"]}, key: {pki["other.key"]}}}
            routes:
              - {{match: {{sni: other.test}}, upstream: "{two.address}"}}
              - upstream: "{one.address}"
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    for name, expected in (("proxy.test", b"one"), ("api.proxy.test", b"one"), ("other.test", b"two")):
        with tls_connect(proxy.address, client_context(pki), name) as client:
            assert recv_all(client) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_through_a_terminating_listener(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"]
    )
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", "proxy.test",
               "-CAfile", pki["ca"], "-verify_return_error", "-quiet"]  # fmt: skip
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        client.stdin.write(b"hello from openssl\n")
        client.stdin.flush()
        deadline = time.monotonic() + WAIT
        echoed = b""
        while b"hello from openssl" not in echoed and time.monotonic() < deadline:
            if select.select([client.stdout], [], [], 0.1)[0]:
                echoed += os.read(client.stdout.fileno(), 4096)
    finally:
        client.kill()
        client.communicate(timeout=WAIT)
    assert b"hello from openssl" in echoed
    assert proxy.wait_access(1)[0]["sni"] == "proxy.test"


def test_a_client_that_never_finishes_the_handshake_times_out(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--connect-timeout", "300ms",
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"],
    )  # fmt: skip
    with connect(proxy.address) as client:
        started = time.monotonic()
        client.sendall(b"\x16\x03\x01")  # the start of a record, and then nothing
        assert client.recv(1) == b""
        assert 0.25 < time.monotonic() - started < 3
    access = proxy.wait_access(1)[0]
    assert access["result"] == "timeout"
    assert "handshake" in access["reason"]
    assert upstream.accepted == 0


def test_tls_half_close_reaches_the_plaintext_upstream(pki, start_proxy, start_upstream):
    """The client's close_notify arrives as a FIN, and the reply still comes back over TLS."""
    from tests.support import sink_handler

    upstream = start_upstream(sink_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"]
    )
    outgoing, incoming = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = client_context(pki).wrap_bio(incoming, outgoing, server_hostname="proxy.test")
    with connect(proxy.address) as raw:

        def exchange():
            if outgoing.pending:
                raw.sendall(outgoing.read())
            data = raw.recv(65536)
            incoming.write(data) if data else incoming.write_eof()
            return data

        while True:
            try:
                session.do_handshake()
                break
            except ssl.SSLWantReadError:
                exchange()
        session.write(b"question")
        try:
            session.unwrap()  # close_notify: our half-close
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outgoing.read())
        reply = b""
        while True:
            try:
                chunk = session.read(4096)
            except ssl.SSLWantReadError:
                if not exchange():
                    break
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            reply += chunk
    assert reply == f"8 {hashlib.sha256(b'question').hexdigest()}\n".encode()


def _two_server_upstream(tmp_path, pki, servers, balance: str, connect_timeout: str = "5s"):
    addresses = ", ".join(f'"{server.address}"' for server in servers)
    return _write(
        tmp_path,
        f"""\
        upstreams:
          pool:
            servers: [{addresses}]
            balance: {balance}
            retries: 1
            connect_timeout: {connect_timeout}
            tls: {{ca: "{pki["ca"]}", server_name: upstream.test}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: pool}}
        """,
    )


@pytest.mark.parametrize("balance", ["first", "round_robin"])
def test_a_server_failing_tls_verification_is_a_failed_connect(pki, tmp_path, start_proxy, start_upstream, balance):
    """Every client gets through the good server; the bad one is reported, and backed off from."""
    bad = start_upstream(tls_upstream(server_context(pki, "other"), b"bad:"))  # a certificate for other.test
    good = start_upstream(tls_upstream(server_context(pki, "upstream"), b"good:"))
    proxy = start_proxy("run", "-c", str(_two_server_upstream(tmp_path, pki, [bad, good], balance)))
    clients = 4  # well within the first passive back-off (1 s)
    for _ in range(clients):
        with connect(proxy.address) as client:
            assert recv_exactly(client, 5) == b"good:"
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
    accesses = proxy.wait_access(clients)
    assert [(a["result"], a["server"]) for a in accesses] == [("closed", good.address)] * clients
    failed = [logfmt(line) for line in proxy.lines if " connect_failed " in line]
    assert failed, proxy.log_text()
    assert {f["server"] for f in failed} == {bad.address}
    assert all("hostname mismatch" in f["reason"] for f in failed)
    assert failed[0]["conn"] == accesses[0]["conn"]
    assert bad.accepted == 1  # after its first failure, the bad server is skipped by every strategy


def test_when_every_server_fails_tls_the_client_gets_the_last_tls_reason(pki, tmp_path, start_proxy, start_upstream):
    servers = [start_upstream(tls_upstream(server_context(pki, "other"))) for _ in range(2)]
    proxy = start_proxy("run", "-c", str(_two_server_upstream(tmp_path, pki, servers, "first")))
    with connect(proxy.address) as client:
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
    access = proxy.wait_access(1)[0]
    assert access["result"] == "tls_error"
    assert access["reason"].startswith("upstream: certificate verify failed: hostname mismatch")
    assert access["server"] == servers[1].address
    assert [server.accepted for server in servers] == [1, 1]
    assert len([line for line in proxy.lines if " connect_failed " in line]) == 2


def test_a_server_that_never_answers_the_handshake_is_a_failed_connect(pki, tmp_path, start_proxy, start_upstream):
    silent = start_upstream(lambda conn: conn.recv(65536) and conn.recv(1))  # takes the ClientHello, says nothing
    good = start_upstream(tls_upstream(server_context(pki, "upstream"), b"good:"))
    path = _two_server_upstream(tmp_path, pki, [silent, good], "first", connect_timeout="300ms")
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        assert recv_exactly(client, 5) == b"good:"
    failed = logfmt(proxy.wait_for("connect_failed"))
    assert (failed["server"], failed["reason"]) == (silent.address, "TLS handshake not complete in time")
    client_access = proxy.wait_access(1)[0]
    assert (client_access["result"], client_access["server"]) == ("closed", good.address)


def _close_without_close_notify(tls: ssl.SSLSocket) -> None:
    """End the TCP connection under a TLS session without its close_notify (a truncation)."""
    with socket.socket(fileno=os.dup(tls.fileno())) as raw:
        raw.shutdown(socket.SHUT_RDWR)  # the kernel's FIN, no TLS record
    tls.close()


def test_a_client_that_closes_without_close_notify_is_logged_as_truncated(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"]
    )
    with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        _close_without_close_notify(client)
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["reason"]) == ("closed", "client: no close_notify")
    assert access["bytes_up"] == access["bytes_down"] == "4"


def test_a_clean_tls_close_is_not_called_truncated(pki, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"]
    )
    with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        raw = client.unwrap()  # close_notify both ways
        raw.close()
    access = proxy.wait_access(1)[0]
    assert access["result"] == "closed"
    assert "reason" not in access or "close_notify" not in access["reason"]


def test_an_upstream_that_closes_without_close_notify_is_logged_as_truncated(pki, start_proxy, start_upstream):
    def truncating(conn: socket.socket) -> None:
        tls = server_context(pki, "upstream").wrap_socket(conn, server_side=True)
        tls.sendall(b"bye")
        _close_without_close_notify(tls)

    upstream = start_upstream(truncating)
    proxy = _originate(start_proxy, upstream, "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test")
    with connect(proxy.address) as client:
        assert recv_exactly(client, 3) == b"bye"
        assert client.recv(1) == b""
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["reason"]) == ("closed", "upstream: no close_notify")
