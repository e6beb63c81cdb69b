"""The sans-I/O TLS session back to back in memory, and the context and file checks."""

from __future__ import annotations

import base64
import os
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.certificates import (
    CertificatePair,
    certificate_names,
    check_ca_file,
    check_certificate,
    der_names,
    name_matches,
    pem_names,
)
from proxy.protocol.tls import TlsError, TlsSession, TlsState, TlsStateError
from proxy.serve.contexts import client_context, open_keylog, server_context


@pytest.fixture(scope="module")
def files(ca, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    paths = {"ca": folder / "ca.pem"}
    ca.cert_pem.write_to_path(paths["ca"])
    for name, identities in {
        "server": ["server.test"],
        "alt": ["alt.test", "*.alt.test"],
        "client": ["me@x.test"],
    }.items():
        cert = ca.issue_cert(*identities)
        paths[name] = folder / f"{name}.pem"
        paths[f"{name}.key"] = folder / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(paths[name])
        cert.private_key_pem.write_to_path(paths[f"{name}.key"])
    return {key: str(value) for key, value in paths.items()}


def pair_of(files, name: str = "server") -> CertificatePair:
    return CertificatePair(files[name], files[f"{name}.key"])


def pump(a: TlsSession, b: TlsSession) -> None:
    """Move ciphertext both ways until neither side has any to send."""
    while True:
        to_b, to_a = a.pending_ciphertext(), b.pending_ciphertext()
        if not to_b and not to_a:
            return
        if to_b:
            b.receive(to_b)
        if to_a:
            a.receive(to_a)


def read(session: TlsSession, size: int = 64 * 1024) -> bytes | None:
    """What `read_into` gives, as bytes: b"" at the peer's end, None when more is needed."""
    buffer = bytearray(size)
    count = session.read_into(memoryview(buffer), size)
    return None if count is None else bytes(buffer[:count])


def handshake(client: TlsSession, server: TlsSession) -> None:
    for _ in range(10):
        client_done = client.handshake()
        pump(client, server)
        server_done = server.handshake()
        pump(client, server)
        if client_done and server_done:
            return
    raise AssertionError("the handshake did not finish")


def sessions(files, server_name: str = "server.test", **server_kwargs) -> tuple[TlsSession, TlsSession]:
    server = TlsSession(server_context(pair_of(files), **server_kwargs), server_side=True)
    client = TlsSession(client_context(files["ca"]), server_side=False, server_hostname=server_name)
    return client, server


def test_handshake_then_data_both_ways(files):
    client, server = sessions(files)
    assert client.state is TlsState.HANDSHAKING
    handshake(client, server)
    assert client.state is server.state is TlsState.OPEN
    assert server.server_name == "server.test"
    assert client.version == server.version
    client.write(b"ping" * 10000)
    pump(client, server)
    received = b""
    while (chunk := read(server)) not in (None, b""):
        received += chunk
    assert received == b"ping" * 10000
    server.write(b"pong")
    pump(client, server)
    assert read(client) == b"pong"
    assert read(client) is None  # nothing more yet


def test_a_record_larger_than_the_read_comes_in_pieces_with_nothing_left_in_the_socket_buffer(files):
    client, server = sessions(files)
    handshake(client, server)
    client.write(b"0123456789" * 1000)  # one record: all of it is inside OpenSSL after the first read
    pump(client, server)
    pieces = []
    while (piece := read(server, 1000)) is not None:
        pieces.append(piece)
    assert pieces == [b"0123456789" * 100] * 10


def test_a_server_handshake_step_with_nothing_received_waits(files):
    client, server = sessions(files)
    assert server.handshake() is False  # before the ClientHello
    assert server.pending_ciphertext() == b""
    handshake(client, server)
    assert server.state is TlsState.OPEN


def test_close_notify_is_a_half_close(files):
    client, server = sessions(files)
    handshake(client, server)
    client.write(b"last words")
    client.close_write()
    pump(client, server)
    assert read(server) == b"last words"
    assert read(server) == b""
    assert server.eof
    server.write(b"reply after the client's close_notify")
    pump(client, server)
    assert read(client) == b"reply after the client's close_notify"
    server.close_write()
    pump(client, server)
    assert read(client) == b""


def read_all(session: TlsSession) -> bytes:
    """The plaintext a session holds, up to the peer's end or what has arrived so far."""
    received = b""
    while chunk := read(session):
        received += chunk
    return received


def flags(session: TlsSession) -> tuple[TlsState, bool, bool]:
    return session.state, session.eof, session.write_closed


OPEN, CLOSING, CLOSED = TlsState.OPEN, TlsState.CLOSING, TlsState.CLOSED
TLS_VERSIONS = pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"])


def versioned_sessions(files, version: ssl.TLSVersion) -> tuple[TlsSession, TlsSession]:
    context = server_context(pair_of(files))
    context.maximum_version = version
    server = TlsSession(context, server_side=True)
    client = TlsSession(client_context(files["ca"]), server_side=False, server_hostname="server.test")
    handshake(client, server)
    assert client.version == server.version == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    return client, server


@TLS_VERSIONS
def test_we_close_first_then_the_peer(files, version):
    """open -> closing (our close_notify) -> closed (theirs); the peer writes in between."""
    client, server = versioned_sessions(files, version)
    assert flags(client) == flags(server) == (OPEN, False, False)
    client.write(b"bye")
    client.close_write()
    assert flags(client) == (CLOSING, False, True)
    client.close_write()  # a second time: nothing
    assert flags(client) == (CLOSING, False, True)
    pump(client, server)
    assert server.state is OPEN  # nothing read yet: the close_notify is still in the records
    assert read_all(server) == b"bye"
    assert flags(server) == (CLOSING, True, False)
    assert read(server) == b""  # and again, without touching the state
    server.write(b"answer after your close_notify")
    pump(client, server)
    assert read_all(client) == b"answer after your close_notify"
    assert flags(client) == (CLOSING, False, True)
    server.close_write()
    assert flags(server) == (CLOSED, True, True)
    pump(client, server)
    assert read(client) == b""
    assert flags(client) == (CLOSED, True, True)


@TLS_VERSIONS
def test_the_peer_closes_first_then_we(files, version):
    """open -> closing (their close_notify) -> closed (ours); we go on writing in between."""
    client, server = versioned_sessions(files, version)
    server.close_write()
    pump(client, server)
    assert read(client) == b""
    assert flags(client) == (CLOSING, True, False)
    client.write(b"still mine to say")
    pump(client, server)
    assert read_all(server) == b"still mine to say"
    assert flags(server) == (CLOSING, False, True)
    client.close_write()
    assert flags(client) == (CLOSED, True, True)
    pump(client, server)
    assert read(server) == b""
    assert flags(server) == (CLOSED, True, True)


def test_a_bare_tcp_end_is_the_peers_end_and_ours_needs_no_close_notify(files):
    client, server = sessions(files)
    handshake(client, server)
    server.receive(b"")
    assert read(server) == b""
    assert flags(server) == (CLOSING, True, False)
    server.pending_ciphertext()  # TLS 1.3 session tickets, written at the first read
    server.close_write()  # OpenSSL sends nothing after an unclean end; no error either
    assert flags(server) == (CLOSED, True, True)
    assert server.pending_ciphertext() == b""


def test_calls_the_state_does_not_allow_are_refused(files):
    client, server = sessions(files)
    for call in (lambda: read(client), lambda: client.write(b"early")):
        with pytest.raises(TlsStateError, match="before the TLS handshake is complete"):
            call()
    client.close_write()  # no close_notify before the handshake: nothing happens
    assert flags(client) == (TlsState.HANDSHAKING, False, False)
    handshake(client, server)
    client.close_write()
    with pytest.raises(TlsStateError, match="after our close_notify"):
        client.write(b"late")
    assert isinstance(TlsStateError("x"), TlsError)  # callers that end a connection on TlsError do here too


def test_only_the_designed_moves_are_allowed(files):
    client, _ = sessions(files)
    allowed = {
        (TlsState.HANDSHAKING, OPEN),
        (TlsState.HANDSHAKING, CLOSED),
        (OPEN, CLOSING),
        (OPEN, CLOSED),
        (CLOSING, CLOSED),
    }
    for before in TlsState:
        for after in TlsState:
            client.state = before
            if (before, after) in allowed:
                client._move(after)
                assert client.state is after
            else:
                with pytest.raises(TlsStateError, match=f"from {before.value} to {after.value}"):
                    client._move(after)
                assert client.state is before


def test_a_failed_session_is_closed_and_keeps_saying_why(files):
    client, server = sessions(files, server_name="other.test")
    with pytest.raises(TlsError, match="hostname mismatch") as caught:
        handshake(client, server)
    assert client.state is CLOSED
    assert client.error == str(caught.value)
    assert client.pending_ciphertext()  # the alert that tells the server why
    for call in (client.handshake, lambda: read(client), lambda: client.write(b"x")):
        with pytest.raises(TlsError, match="hostname mismatch"):
            call()
    client.close_write()  # nothing to send: the caller's TCP half-close ends it
    assert flags(client) == (CLOSED, False, False)


def test_tcp_end_without_close_notify_reads_as_end_of_stream(files):
    client, server = sessions(files)
    handshake(client, server)
    server.receive(b"")
    assert read(server) == b""


def test_wrong_name_fails_verification(files):
    client, server = sessions(files, server_name="other.test")
    with pytest.raises(TlsError, match="hostname mismatch"):
        handshake(client, server)
    assert client.state is TlsState.CLOSED


def test_unknown_ca_fails_verification(files):
    server = TlsSession(server_context(pair_of(files)), server_side=True)
    client = TlsSession(client_context(None), server_side=False, server_hostname="server.test")
    with pytest.raises(TlsError, match="certificate verify failed"):
        handshake(client, server)


def test_verify_off_accepts_any_certificate(files):
    server = TlsSession(server_context(pair_of(files)), server_side=True)
    client = TlsSession(client_context(None, verify=False), server_side=False, server_hostname="whatever")
    handshake(client, server)
    assert client.state is TlsState.OPEN


def test_client_certificate_required(files):
    client, server = sessions(files, client_ca=files["ca"])
    with pytest.raises(TlsError):
        handshake(client, server)
    server = TlsSession(server_context(pair_of(files), client_ca=files["ca"]), server_side=True)
    client = TlsSession(
        client_context(files["ca"], client_cert=pair_of(files, "client")),
        server_side=False,
        server_hostname="server.test",
    )
    handshake(client, server)
    assert server.peer_certificate_presented


def test_sni_picks_among_several_certificates(files):
    context = server_context(pair_of(files), others=(pair_of(files, "alt"),))
    for name in ("alt.test", "www.alt.test", "server.test"):
        server = TlsSession(context, server_side=True)
        client = TlsSession(client_context(files["ca"]), server_side=False, server_hostname=name)
        handshake(client, server)  # verification passes only with the certificate for `name`
        assert server.server_name == name


def test_an_incomplete_handshake_stays_handshaking(files):
    """What a handshake timeout sees: a client that stopped after its first flight."""
    client, server = sessions(files)
    assert not client.handshake()
    server.receive(client.pending_ciphertext()[:10])
    assert not server.handshake()
    assert server.state is TlsState.HANDSHAKING


def test_garbage_is_a_tls_error(files):
    _, server = sessions(files)
    server.receive(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(TlsError):
        server.handshake()


def test_file_checks(files, tmp_path):
    check_certificate(pair_of(files))
    with pytest.raises(ValueError, match="do not belong together"):
        check_certificate(CertificatePair(files["server"], files["alt.key"]))
    check_ca_file(files["ca"])
    with pytest.raises(ValueError, match="no CA certificate"):
        check_ca_file(files["server"])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError):
        check_ca_file(str(junk))
    assert certificate_names(files["alt"]) == ["alt.test", "*.alt.test"]


def test_name_matching():
    assert name_matches("*.example.com", "a.example.com")
    assert not name_matches("*.example.com", "a.b.example.com")
    assert not name_matches("*.example.com", "example.com")
    assert name_matches("Example.COM.", "example.com")


def test_contexts_refuse_old_protocols(files):
    assert server_context(pair_of(files)).minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client_context(files["ca"]).minimum_version >= ssl.TLSVersion.TLSv1_2


# -- the DNS names a certificate is for, read from its DER ----------------------------------


def tlv(tag: int, *contents: bytes) -> bytes:
    """A DER element: tag, length (short or long form), contents."""
    body = b"".join(contents)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def name(*attributes: tuple[bytes, int, bytes]) -> bytes:
    """An X.509 Name of (OID, string tag, value) attributes, one per RDN."""
    return tlv(0x30, *(tlv(0x31, tlv(0x30, tlv(0x06, oid), tlv(tag, value))) for oid, tag, value in attributes))


COMMON_NAME, ORGANIZATION = bytes.fromhex("550403"), bytes.fromhex("55040a")
SHA256_RSA = tlv(0x30, tlv(0x06, bytes.fromhex("2a864886f70d01010b")), tlv(0x05))


def hand_made_certificate(subject: bytes, extensions: bytes | None = None) -> bytes:
    """A certificate's DER with the fields a reader walks past, unsigned: enough to read names from."""
    tbs = [
        tlv(0xA0, tlv(0x02, b"\x02")),  # version 3
        tlv(0x02, b"\x01"),  # serial number
        SHA256_RSA,
        name((ORGANIZATION, 0x0C, b"Issuer")),
        tlv(0x30, tlv(0x17, b"260101000000Z"), tlv(0x17, b"360101000000Z")),
        subject,
        tlv(0x30, SHA256_RSA, tlv(0x03, b"\x00" + b"k" * 140)),  # a long one: long-form lengths
    ]
    if extensions is not None:
        tbs.append(tlv(0xA3, tlv(0x30, extensions)))
    return tlv(0x30, tlv(0x30, *tbs), SHA256_RSA, tlv(0x03, b"\x00sig"))


def pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


def test_certificate_names_of_several_names_and_a_wildcard(ca, tmp_path):
    cert = ca.issue_cert("a.test", "*.b.test", "10.0.0.1", "me@x.test", "c.test")
    path = tmp_path / "several.pem"
    cert.cert_chain_pems[0].write_to_path(path)
    assert certificate_names(str(path)) == ["a.test", "*.b.test", "c.test"]
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    assert pem_names(ca.cert_pem.bytes() + chain) == []  # the first certificate counts: the CA, with no names


def test_certificate_names_fall_back_to_the_common_name(tmp_path):
    subject = name((ORGANIZATION, 0x13, b"Org"), (COMMON_NAME, 0x0C, b"cn-only.test"))
    path = tmp_path / "cn.pem"
    path.write_bytes(b"some text first\n" + pem(hand_made_certificate(subject)))
    assert certificate_names(str(path)) == ["cn-only.test"]
    basic_constraints = tlv(0x30, tlv(0x06, bytes.fromhex("551d13")), tlv(0x04, tlv(0x30)))
    assert der_names(hand_made_certificate(subject, basic_constraints)) == ["cn-only.test"]
    ip_only = tlv(0x30, tlv(0x06, bytes.fromhex("551d11")), tlv(0x04, tlv(0x30, tlv(0x87, b"\x0a\x00\x00\x01"))))
    assert der_names(hand_made_certificate(subject, ip_only)) == ["cn-only.test"]
    dns = tlv(0x30, tlv(0x06, bytes.fromhex("551d11")), tlv(0x04, tlv(0x30, tlv(0x82, b"dns.test"))))
    assert der_names(hand_made_certificate(subject, dns)) == ["dns.test"]


def test_certificate_names_under_the_other_labels_openssl_reads(ca):
    der = ssl.PEM_cert_to_DER_cert(ca.issue_cert("a.test").cert_chain_pems[0].bytes().decode())
    trust = tlv(0x30, tlv(0x30, tlv(0x06, bytes.fromhex("2b06010505070301"))))  # OpenSSL's trust settings
    for label, body in (("X509 CERTIFICATE", der), ("TRUSTED CERTIFICATE", der + trust)):
        text = pem(body).replace(b" CERTIFICATE-----", f" {label}-----".encode())
        assert pem_names(text) == ["a.test"], label


def test_certificate_names_refuse_what_is_no_certificate(files, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for path in (str(junk), str(tmp_path / "missing.pem"), files["server.key"]):
        with pytest.raises(ValueError):
            certificate_names(path)
    der = hand_made_certificate(name((COMMON_NAME, 0x0C, b"x.test")))
    for broken in (der[:-1], der + b"\x00", b"\x30\x80" + der[2:], pem(der).replace(b"M", b"!", 1)):
        with pytest.raises(ValueError, match="certificate"):
            pem_names(broken) if broken.startswith(b"-----") else der_names(broken)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_certificate_names_of_random_bytes_raise_only_value_error(data):
    for parse in (der_names, pem_names):
        try:
            names = parse(data)
        except ValueError:
            continue
        assert all(isinstance(name, str) for name in names)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0), position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_certificate_names_of_a_damaged_certificate_raise_only_value_error(cut, position, byte):
    der = hand_made_certificate(
        name((COMMON_NAME, 0x0C, b"x.test")),
        tlv(0x30, tlv(0x06, bytes.fromhex("551d11")), tlv(0x04, tlv(0x30, tlv(0x82, b"dns.test")))),
    )
    damaged = bytearray(der[: len(der) - cut % len(der)])
    if damaged:
        damaged[position % len(damaged)] = byte
    for data in (bytes(damaged), pem(bytes(damaged))):
        try:
            names = pem_names(data) if data.startswith(b"-----") else der_names(data)
        except ValueError:
            continue
        assert all(isinstance(name, str) for name in names)


def test_only_the_contexts_given_the_key_log_write_to_it(files, tmp_path):
    # The key log is handed to the contexts a server builds, not set for the whole process: a
    # context built without it (another server's in the same process, a test's) writes nothing.
    path = open_keylog(str(tmp_path / "keys.log"))
    assert os.stat(path).st_mode & 0o777 == 0o600

    def secrets() -> list[str]:
        with open(path) as log:
            return [line for line in log if not line.startswith("#")]

    server = TlsSession(server_context(pair_of(files), keylog=path), server_side=True)
    client = TlsSession(client_context(files["ca"]), server_side=False, server_hostname="server.test")
    handshake(client, server)
    logged = secrets()
    assert logged
    handshake(*sessions(files))
    client = TlsSession(client_context(files["ca"], keylog=path), server_side=False, server_hostname="server.test")
    server = TlsSession(server_context(pair_of(files)), server_side=True)
    handshake(client, server)
    assert len(secrets()) == 2 * len(logged)  # the second handshake wrote nothing, the third as much as the first
